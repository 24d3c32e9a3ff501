import net from 'node:net';
import { HEADER } from '../../otel/wire-names';
import { login, startStack, type TestStack } from '../helpers/stack';
import { waitFor } from '../helpers/wait';

/**
 * A service whose body breaks HTTP's framing after its head was forwarded (a bad chunk, a Content-Length among its
 * trailers): the client's response can only be cut, but the operator is told what the service sent, and the
 * instance is not blamed as for a lost connection. Read as a reset, the log said the service "closed the connection
 * mid-response" with no cause, and three such answers from one endpoint ejected the whole service for `ejectMs`.
 */
describe('a service answer whose body breaks its framing', () => {
  let stack: TestStack;
  let token: string;
  let service: net.Server;

  /** The answer to each request, by its target: two malformed bodies, and a good answer for anything else. */
  const ANSWERS: Record<string, string> = {
    '/notifications/trailer-content-length': 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nContent-Length: 99\r\n\r\n',
    '/notifications/bad-chunk': 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX\r\n0\r\n\r\n',
  };
  /**
   * Answers the service starts and never ends, closing the connection (a worker killed mid-answer): a response that
   * was to close it anyway, whose cut undici reports as its parser's (a length mismatch, "Invalid EOF state").
   */
  const CUT: Record<string, string> = {
    '/notifications/short-then-closed': 'HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nhalf',
    '/notifications/chunks-then-closed': 'HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\n',
  };
  const GOOD = 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]';

  beforeAll(async () => {
    service = net.createServer((socket) => {
      socket.on('error', () => undefined);
      socket.on('data', (data) => {
        const target = /^[A-Z]+ (\S+) HTTP\/1\.1\r\n/.exec(data.toString('latin1'))?.[1] ?? '';
        if (CUT[target]) return void socket.end(CUT[target]);
        socket.write(ANSWERS[target] ?? GOOD);
      });
    });
    await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve));
    stack = await startStack({
      overrides: {
        services: {
          users: { url: 'http://placeholder' },
          orders: { url: 'http://placeholder' },
          notifications: { url: 'http://placeholder', ejectAfterFailures: 2, ejectMs: 60_000 },
        },
      },
      serviceUrls: { notifications: `http://127.0.0.1:${(service.address() as net.AddressInfo).port}` },
    });
    token = await login(stack.gateway.url);
  });
  afterAll(async () => {
    await stack.close();
    await new Promise((resolve) => service.close(resolve));
  });

  const failedLine = (requestId: string | null) => stack.gatewayLogs.find((line) => line.message === 'request failed' && line.request_id === requestId);

  /** A GET whose response is read to its end or its cut: the status, the request id, and whether the body was cut. */
  async function get(path: string): Promise<{ status: number; requestId: string | null; cut: boolean }> {
    const response = await fetch(`${stack.gateway.url}${path}`, { headers: { authorization: `Bearer ${token}` } });
    const cut = await response.arrayBuffer().then(
      () => false,
      () => true,
    );
    return { status: response.status, requestId: response.headers.get(HEADER.requestId), cut };
  }

  it.each([
    { desc: 'a Content-Length among its trailers', path: '/api/notifications/trailer-content-length', words: /HTTPParserError: .*Content-Length/i },
    { desc: 'a chunk longer than its size', path: '/api/notifications/bad-chunk', words: /HTTPParserError/ },
  ])('cuts the client’s response to $desc, and logs it as a bad response with the parser’s words', async ({ path, words }) => {
    const answer = await get(path);
    expect(answer).toMatchObject({ status: 200, cut: true });
    await waitFor(() => failedLine(answer.requestId) !== undefined, 'the request failed line');
    const line = failedLine(answer.requestId)!;
    expect(line.code).toBe('upstream_bad_response');
    expect(line.error).toMatch(words);
    expect(line.error).not.toMatch(/closed the connection/);
  });

  it('does not eject the service for it: its other answers are still served', async () => {
    for (let i = 0; i < 3; i++) expect((await get('/api/notifications/trailer-content-length')).cut).toBe(true);
    expect(await get('/api/notifications')).toMatchObject({ status: 200, cut: false });
  });

  // Last: it ejects the service. An answer cut by its connection's end is a lost connection, whatever undici calls it.
  it('still counts an answer its connection cut (Content-Length unmet, chunks unended, Connection: close) as a reset, and ejects for it', async () => {
    for (const path of ['/api/notifications/short-then-closed', '/api/notifications/chunks-then-closed']) {
      const answer = await get(path);
      expect(answer).toMatchObject({ status: 200, cut: true });
      await waitFor(() => failedLine(answer.requestId) !== undefined, 'the request failed line');
      expect(failedLine(answer.requestId)!.code).toBe('upstream_reset');
    }
    expect((await get('/api/notifications')).status).toBe(503);
  });
});
