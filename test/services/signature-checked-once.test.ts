import Router from '@koa/router';
import { HEADER } from '../../otel/wire-names';
import { createServiceApp, signedByGateway, signedIdentityHeaders } from '../../services/shared/service-app';
import { createGatewaySigner, verifyGatewaySignature, type SignedValues } from '../../src/gateway-signature';
import { listen, memoryLogger, type TestServer } from '../helpers/servers';
import { TEST_SIGNING_KEY } from '../helpers/test-config';
import { waitFor } from '../helpers/wait';

// The real check, counted.
jest.mock('../../src/gateway-signature', () => {
  const actual = jest.requireActual<typeof import('../../src/gateway-signature')>('../../src/gateway-signature');
  return { ...actual, verifyGatewaySignature: jest.fn(actual.verifyGatewaySignature) };
});
const verify = jest.mocked(verifyGatewaySignature);

/**
 * With telemetry on, the http instrumentation asks whether to continue a request's trace context
 * (signedByGateway, otel/telemetry.ts continueTraceContextOnlyWhen) before the app runs, and the app asks again
 * before it logs: the signature's HMAC was computed twice per request.
 */
describe('the gateway signature in a service with telemetry on', () => {
  let server: TestServer;
  const { logger, lines } = memoryLogger('test-service');
  const continued: boolean[] = [];

  beforeAll(async () => {
    const router = new Router();
    router.get('/things/:id', (ctx) => void (ctx.body = { id: ctx.params.id }));
    const app = createServiceApp({ serviceName: 'test-service', logger, router, signingKey: TEST_SIGNING_KEY, signatureAudience: 'test' });
    // As the http instrumentation does: the trace context check first, then the app.
    const continuesTraceContext = signedByGateway(TEST_SIGNING_KEY, undefined, 'test');
    const handle = app.callback();
    server = await listen((request, response) => {
      continued.push(continuesTraceContext(request));
      void handle(request, response);
    });
  });
  afterAll(() => server.close());

  it.each([
    { desc: 'a signed request: answered, under the id it sent, its trace continued', signed: true, status: 200 },
    { desc: 'an unsigned one: 401 under a fresh id, its trace not continued', signed: false, status: 401 },
  ])('checks it once: $desc', async ({ signed, status }) => {
    verify.mockClear();
    const sent = `svc-signed-${signed}`;
    const identity = ['7', 'user', 'seven@example.com', ''] as unknown as SignedValues;
    const headers = { [HEADER.requestId]: sent, ...signedIdentityHeaders(identity, { audience: 'test', method: 'GET', target: '/things/1', requestId: sent }, signed ? createGatewaySigner(TEST_SIGNING_KEY) : undefined) };
    const response = await fetch(`${server.url}/things/1`, { headers });
    await response.arrayBuffer();
    expect(response.status).toBe(status);
    const requestId = response.headers.get(HEADER.requestId);
    expect(requestId === sent).toBe(signed);
    expect(continued.at(-1)).toBe(signed);
    await waitFor(() => lines.some((line) => line.message === 'request handled' && line.request_id === requestId), 'the log line');
    expect(verify).toHaveBeenCalledTimes(1);
  });
});
