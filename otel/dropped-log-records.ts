import { createNoopMeter, diag, type Attributes, type Counter, type Meter, type MeterProvider } from '@opentelemetry/api';

/** The `error.type` under which sdk-logs' batch processor counts a record it dropped because its queue was full. */
const QUEUE_FULL = 'queue_full';

/**
 * For a BatchLogRecordProcessor's `selfObsMeterProvider`: says how many log records it dropped on a full queue.
 * sdk-logs 3.0 drops them without a word (only this meter hears of them), where the span processor warns "Dropped N
 * spans because maxQueueSize reached": with a slow collector most access records could go, and stderr said nothing.
 * Counted, and said at most once per `intervalMs` through `warn` (diag.warn, which the telemetry diagnostics rate-limit
 * again on stderr). Every other instrument of the processor is a no-op, as without a meter provider.
 */
export function droppedLogRecordsReporter(warn: (message: string) => void = (message) => diag.warn(message), intervalMs = 1_000): MeterProvider {
  let dropped = 0;
  let timer: NodeJS.Timeout | undefined;
  const report = () => {
    timer = undefined;
    warn(`Dropped ${dropped} log records because maxQueueSize reached`);
    dropped = 0;
  };
  const noop = createNoopMeter();
  const counter = noop.createCounter('otel.sdk.processor.log.processed');
  const processed: Counter = Object.assign(Object.create(counter) as Counter, {
    add(value: number, attributes?: Attributes) {
      if (attributes?.['error.type'] !== QUEUE_FULL) return;
      dropped += value;
      timer ??= setTimeout(report, intervalMs).unref();
    },
  });
  const meter: Meter = Object.assign(Object.create(noop) as Meter, { createCounter: () => processed });
  return { getMeter: () => meter };
}
