import { HEADER } from '../../otel/wire-names';
import { refusedOrigin } from '../helpers/servers';
import { login, startStack, type TestStack } from '../helpers/stack';
import { waitFor } from '../helpers/wait';

/**
 * What a failed exchange with a service tells the client and what it tells the operator. Upstream details are shown
 * to every caller (they are the gateway's words about its upstream), so they say what happened in the client's
 * terms; how many instances are ejected and the errno stay in the `request failed` line, as /ready and /health keep
 * them on the internal listener.
 */
describe('details of failed exchanges with a service', () => {
  let stack: TestStack;
  let token: string;

  beforeAll(async () => {
    const refused = await refusedOrigin();
    stack = await startStack({
      overrides: {
        services: {
          users: { url: 'http://placeholder' },
          orders: { url: 'http://placeholder', ejectAfterFailures: 1, ejectMs: 60_000 },
          notifications: { url: 'http://placeholder' },
        },
      },
      serviceUrls: { orders: refused },
    });
    token = await login(stack.gateway.url);
  });
  afterAll(async () => {
    await stack.close();
  });

  const failedLine = (requestId: string | null) => stack.gatewayLogs.find((line) => line.message === 'request failed' && line.request_id === requestId);

  it('says no instance is healthy without saying how many were ejected, which the log line says', async () => {
    const first = await fetch(`${stack.gateway.url}/api/orders`, { headers: { authorization: `Bearer ${token}` } });
    expect(first.status).toBe(502);
    const second = await fetch(`${stack.gateway.url}/api/orders`, { headers: { authorization: `Bearer ${token}` } });
    expect(second.status).toBe(503);
    const body = (await second.json()) as { code: string; detail: string };
    expect(body).toMatchObject({ code: 'upstream_unavailable', detail: 'No healthy instance of the orders service.' });
    const requestId = second.headers.get(HEADER.requestId);
    await waitFor(() => failedLine(requestId) !== undefined, 'the request failed line');
    expect(failedLine(requestId)!.error).toContain('1 instance(s) ejected after failing');
  });

});
