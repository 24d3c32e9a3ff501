import { ATTR_HTTP_REQUEST_METHOD, ATTR_HTTP_REQUEST_METHOD_ORIGINAL } from '@opentelemetry/semantic-conventions';
import { HEADER, SERVICE_NAME } from '../../otel/wire-names';
import { startOtlpReceiver, type OtlpReceiver } from '../helpers/otlp-receiver';
import { startProcessStack, type ProcessStack } from '../helpers/process-stack';
import { sendRaw } from '../helpers/servers';

const FAST_EXPORT = { OTEL_BSP_SCHEDULE_DELAY: '100', OTEL_BLRP_SCHEDULE_DELAY: '100', OTEL_TRACES_SAMPLER: 'always_on' };

/**
 * A method outside the HTTP semantic conventions' list, as exported by the real processes: the gateway's SERVER
 * and CLIENT spans and the service's SERVER span (the http instrumentation's, which recorded `_OTHER` but kept
 * the method as its span name) all say `_OTHER`, keep the method as `http.request.method_original`, and are
 * named `HTTP` (audit 19, finding 3).
 */
describe('a PROPFIND through the gateway to a service', () => {
  let receiver: OtlpReceiver;
  let stack: ProcessStack;

  beforeAll(async () => {
    receiver = await startOtlpReceiver();
    stack = await startProcessStack({ ...FAST_EXPORT, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url });
  });
  afterAll(async () => {
    await stack?.stop('SIGKILL');
    await receiver?.close();
  });

  it('is _OTHER named HTTP, with the method as method_original, on every HTTP span of its trace', async () => {
    const login = await fetch(`${stack.gatewayUrl}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'alice@example.com', password: 'wonderland' }) });
    const { token } = (await login.json()) as { token: string };
    const reply = await sendRaw(stack.gatewayUrl, '/api/orders/1', { authorization: `Bearer ${token}` }, 'PROPFIND');
    const traceId = String(reply.headers[HEADER.requestId]);
    const expected = [
      [SERVICE_NAME.gateway, 'SERVER'],
      [SERVICE_NAME.gateway, 'CLIENT'],
      [SERVICE_NAME.orders, 'SERVER'],
    ];
    const { spans } = await receiver.waitFor(({ spans }) => expected.every(([service, kind]) => spans.some((span) => span.traceId === traceId && span.serviceName === service && span.kind === kind)), 15_000);
    const httpSpans = spans.filter((span) => span.traceId === traceId && span.attributes[ATTR_HTTP_REQUEST_METHOD] !== undefined);
    expect(httpSpans.map((span) => [span.serviceName, span.kind]).sort()).toEqual(expected.sort());
    for (const span of httpSpans) {
      expect([span.serviceName, span.kind, span.name.split(' ')[0], span.attributes[ATTR_HTTP_REQUEST_METHOD], span.attributes[ATTR_HTTP_REQUEST_METHOD_ORIGINAL]]).toEqual([span.serviceName, span.kind, 'HTTP', '_OTHER', 'PROPFIND']);
    }
  });
});
