import { SpanKind, SpanStatusCode, type Context } from '@opentelemetry/api';
import type { ReadableSpan, Span, SpanProcessor } from '@opentelemetry/sdk-trace';

/** `rpc.grpc.status_code`, as @opentelemetry/instrumentation-grpc writes it. */
const ATTR_RPC_GRPC_STATUS_CODE = 'rpc.grpc.status_code';

/**
 * The gRPC status codes that make a SERVER span an error (semconv, gRPC "Span status"): UNKNOWN, DEADLINE_EXCEEDED,
 * UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS. The others (NOT_FOUND, INVALID_ARGUMENT, UNAUTHENTICATED...)
 * describe the caller's request, as a 4xx does for HTTP, and leave the status unset.
 */
export const GRPC_SERVER_ERROR_CODES: ReadonlySet<number> = new Set([2, 4, 12, 13, 14, 15]);

/**
 * Undoes what instrumentation-grpc (0.300) gets wrong at a SERVER span's end: it makes every status but OK an
 * error, with the handler's message as its description, where the conventions make only the server's failures
 * one (CLIENT spans it gets right: every non-OK status is an error there). Runs in onEnding, while the span can
 * still be changed; the API's setStatus ignores UNSET, so the status is replaced as the SDK's span holds it.
 * Registered only in processes that load the gRPC instrumentation (otel/sdk.ts): the gateway's own spans never
 * reach it.
 */
export class GrpcServerSpanStatusProcessor implements SpanProcessor {
  onStart(_span: Span, _parentContext: Context): void {}

  onEnding(span: Span): void {
    if (span.kind !== SpanKind.SERVER || span.status.code !== SpanStatusCode.ERROR) return;
    const code = span.attributes[ATTR_RPC_GRPC_STATUS_CODE];
    if (typeof code === 'number' && !GRPC_SERVER_ERROR_CODES.has(code)) (span as { status: ReadableSpan['status'] }).status = { code: SpanStatusCode.UNSET };
  }

  onEnd(): void {}

  forceFlush(): Promise<void> {
    return Promise.resolve();
  }

  shutdown(): Promise<void> {
    return Promise.resolve();
  }
}
