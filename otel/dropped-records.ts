import { createNoopMeter, diag, type Attributes, type Counter, type Meter, type MeterProvider } from '@opentelemetry/api';

/** The `error.type` under which the SDK's batch processors count a span or log record dropped because their queue was full. */
const QUEUE_FULL = 'queue_full';

/** What the batch processors drop, as the message names it. */
export type DroppedRecords = 'spans' | 'log records';

/** The message of a drop: "Dropped N ..." (telemetry-diagnostics.ts sums the counts of the reports it holds back). */
export const droppedMessage = (what: DroppedRecords, count: number) =>
  what === 'spans' ? `Dropped ${count} spans because the span queue was full (OTEL_BSP_MAX_QUEUE_SIZE)` : `Dropped ${count} log records because maxQueueSize reached`;

export interface DroppedRecordsReporter {
  /** For a batch processor's `selfObsMeterProvider`: counts what it drops on a full queue. */
  meterProvider: MeterProvider;
  /** Says what was dropped and not said yet, now (at shutdown: the timer that would have said it does not hold the process). */
  flush(): void;
}

/**
 * Says how many spans or log records a batch processor dropped on a full queue. sdk-logs 3.0 drops log records
 * without a word (only this meter hears of them); sdk-trace warns "Dropped N spans" only when a later span is taken
 * into the queue, so the drops of a burst at the end, or of a queue that stays full, went unsaid (an outside review
 * saw no line at all for 3,000 spans dropped, then a shutdown). Counted, and said at most once per `intervalMs`
 * through `warn` (diag.warn, which the telemetry diagnostics rate-limit again on stderr), and by `flush`. Every other
 * instrument of the processor is a no-op, as without a meter provider.
 */
export function droppedRecordsReporter(what: DroppedRecords, warn: (message: string) => void = (message) => diag.warn(message), intervalMs = 1_000): DroppedRecordsReporter {
  let dropped = 0;
  let timer: NodeJS.Timeout | undefined;
  const report = () => {
    clearTimeout(timer);
    timer = undefined;
    if (dropped === 0) return;
    warn(droppedMessage(what, dropped));
    dropped = 0;
  };
  const noop = createNoopMeter();
  const counter = noop.createCounter('otel.sdk.processor.processed');
  const processed: Counter = Object.assign(Object.create(counter) as Counter, {
    add(value: number, attributes?: Attributes) {
      if (attributes?.['error.type'] !== QUEUE_FULL) return;
      dropped += value;
      timer ??= setTimeout(report, intervalMs).unref();
    },
  });
  const meter: Meter = Object.assign(Object.create(noop) as Meter, { createCounter: () => processed });
  return { meterProvider: { getMeter: () => meter }, flush: report };
}
