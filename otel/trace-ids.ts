import { RandomIdGenerator, type IdGenerator } from '@opentelemetry/sdk-trace';

/**
 * Lets the gateway choose the trace id of the root span it is about to start, so the id a client sees in
 * `X-Request-Id` is the trace id it pastes into Jaeger. The choice is handed over synchronously
 * (`withTraceId` around `tracer.startSpan`), so concurrent requests cannot see each other's id.
 */
let requestedTraceId: string | undefined;

const TRACE_ID = /^[0-9a-f]{32}$/;
const INVALID_TRACE_ID = '0'.repeat(32);

/** The SDK's id generator for every process; random ids unless the gateway asked for one. */
export class RequestedTraceIdGenerator implements IdGenerator {
  private readonly random = new RandomIdGenerator();

  generateTraceId(): string {
    const requested = requestedTraceId;
    requestedTraceId = undefined;
    return requested ?? this.random.generateTraceId();
  }

  generateSpanId(): string {
    return this.random.generateSpanId();
  }
}

/** Runs `start` (which must start a root span synchronously) so that span gets `traceId`. */
export function withTraceId<T>(traceId: string | undefined, start: () => T): T {
  requestedTraceId = traceId;
  try {
    return start();
  } finally {
    requestedTraceId = undefined;
  }
}

/**
 * The trace id a request id stands for: a 32-hex id is one already, a UUID is one without its dashes.
 * Anything else (or the invalid all-zero id) stands for none.
 */
export function traceIdFromRequestId(requestId: string): string | undefined {
  const candidate = (requestId.length === 36 && /^[0-9a-fA-F-]+$/.test(requestId) ? requestId.replaceAll('-', '') : requestId).toLowerCase();
  return TRACE_ID.test(candidate) && candidate !== INVALID_TRACE_ID ? candidate : undefined;
}
