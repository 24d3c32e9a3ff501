import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import { GrpcServerSpanStatusProcessor } from '../../otel/grpc-server-span-status';

/** A span ended as instrumentation-grpc ends one: the status code attribute, then ERROR with the handler's message. */
function endedSpan(kind: SpanKind, code: number) {
  const exporter = new InMemorySpanExporter();
  const provider = new TracerProvider({ spanProcessors: [new GrpcServerSpanStatusProcessor(), new SimpleSpanProcessor({ exporter })] });
  const span = provider.getTracer('@opentelemetry/instrumentation-grpc').startSpan('grpc.pkg.Service/Method', { kind, attributes: { 'rpc.system': 'grpc' } });
  span.setAttribute('rpc.grpc.status_code', code).setStatus({ code: SpanStatusCode.ERROR, message: 'from the handler' });
  span.end();
  return exporter.getFinishedSpans()[0]!;
}

describe('gRPC SERVER span status (semconv: only the server\'s failures are errors)', () => {
  it.each([
    { name: 'UNKNOWN', code: 2 },
    { name: 'DEADLINE_EXCEEDED', code: 4 },
    { name: 'UNIMPLEMENTED', code: 12 },
    { name: 'INTERNAL', code: 13 },
    { name: 'UNAVAILABLE', code: 14 },
    { name: 'DATA_LOSS', code: 15 },
  ])('keeps $name an error', ({ code }) => {
    expect(endedSpan(SpanKind.SERVER, code).status).toEqual({ code: SpanStatusCode.ERROR, message: 'from the handler' });
  });

  it.each([
    { name: 'CANCELLED', code: 1 },
    { name: 'INVALID_ARGUMENT', code: 3 },
    { name: 'NOT_FOUND', code: 5 },
    { name: 'PERMISSION_DENIED', code: 7 },
    { name: 'RESOURCE_EXHAUSTED', code: 8 },
    { name: 'UNAUTHENTICATED', code: 16 },
  ])('leaves $name unset, without a description', ({ code }) => {
    expect(endedSpan(SpanKind.SERVER, code).status).toEqual({ code: SpanStatusCode.UNSET });
  });

  it('leaves CLIENT spans alone: every status but OK is an error there', () => {
    expect(endedSpan(SpanKind.CLIENT, 5).status).toEqual({ code: SpanStatusCode.ERROR, message: 'from the handler' });
  });
});
