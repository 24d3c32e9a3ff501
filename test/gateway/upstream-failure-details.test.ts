import net from 'node:net';
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
  let malformed: net.Server;

  beforeAll(async () => {
    const refused = await refusedOrigin();
    // Answers every request with a head whose field value holds a control character (llhttp refuses it).
    malformed = net.createServer((socket) => {
      socket.on('error', () => undefined);
      socket.once('data', () => socket.end('HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 2\r\n\r\n{}'));
    });
    await new Promise<void>((resolve) => malformed.listen(0, '127.0.0.1', resolve));
    stack = await startStack({
      overrides: {
        services: {
          users: { url: 'http://placeholder' },
          orders: { url: 'http://placeholder', ejectAfterFailures: 1, ejectMs: 60_000 },
          notifications: { url: 'http://placeholder' },
        },
      },
      serviceUrls: { orders: refused, notifications: `http://127.0.0.1:${(malformed.address() as net.AddressInfo).port}` },
    });
    token = await login(stack.gateway.url);
  });
  afterAll(async () => {
    await stack.close();
    await new Promise((resolve) => malformed.close(resolve));
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


  it("says the service's answer could not be forwarded without the parser's words, which the log line has", async () => {
    const response = await fetch(`${stack.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${token}` } });
    expect(response.status).toBe(502);
    const body = (await response.json()) as { code: string; detail: string };
    expect(body).toMatchObject({ code: 'upstream_bad_response', detail: 'The notifications service answered with header fields the gateway cannot forward.' });
    const requestId = response.headers.get(HEADER.requestId);
    await waitFor(() => failedLine(requestId) !== undefined, 'the request failed line');
    // llhttp's code and words, as undici reported them.
    expect(failedLine(requestId)!.error).toMatch(/HTTPParserError: .*Invalid header value char/);
  });
});
