import { context, propagation, SpanKind, type Tracer } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider, type ReadableSpan } from '@opentelemetry/sdk-trace';
import { createTextMapPropagator } from '../../otel/trace-context-propagator';
import { RequestedTraceIdGenerator } from '../../otel/trace-ids';
import { ATTR } from '../../otel/wire-names';
import { waitFor } from './wait';

export interface InMemoryTracing {
  tracer: Tracer;
  spans(): ReadableSpan[];
  reset(): void;
  shutdown(): Promise<void>;
}

/**
 * A tracer whose spans stay in memory, with the context manager the SDK would install, for tests of the
 * gateway's own span logic in-process. (End-to-end export is tested through the OTLP receiver.)
 */
export function startInMemoryTracing(): InMemoryTracing {
  const contextManager = new AsyncLocalStorageContextManager().enable();
  context.setGlobalContextManager(contextManager);
  // The propagators the telemetry bootstrap registers (otel/sdk.ts).
  propagation.setGlobalPropagator(createTextMapPropagator());
  const exporter = new InMemorySpanExporter();
  const provider = new TracerProvider({ idGenerator: new RequestedTraceIdGenerator(), spanProcessors: [new SimpleSpanProcessor({ exporter })] });
  return {
    tracer: provider.getTracer('test'),
    spans: () => exporter.getFinishedSpans(),
    reset: () => exporter.reset(),
    async shutdown() {
      await provider.shutdown();
      context.disable();
      propagation.disable();
    },
  };
}

/** The SERVER span of the request answered with `requestId` (its `gateway.request_id`), once ended, and the CLIENT spans under it. */
export async function requestSpans(tracing: InMemoryTracing, requestId: string): Promise<{ server: ReadableSpan; clients: ReadableSpan[] }> {
  const server = () => tracing.spans().find((span) => span.kind === SpanKind.SERVER && span.attributes[ATTR.requestId] === requestId);
  await waitFor(() => server() !== undefined, `the SERVER span of ${requestId}`);
  const { spanId } = server()!.spanContext();
  return { server: server()!, clients: tracing.spans().filter((span) => span.kind === SpanKind.CLIENT && span.parentSpanContext?.spanId === spanId) };
}
