import http from 'node:http';
import net from 'node:net';
import { runServer, serverAnswerCode, type RunningServer } from '../../otel/lifecycle';
import { createGateway } from '../../src/gateway';
import { memoryLogger } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';
import { waitFor } from '../helpers/wait';

/**
 * Sends `sentAtOnce`, then `head` a few bytes at a time, slower than the server allows, and returns what the
 * server answered.
 */
function trickle(url: string, head: string, everyMs: number, sentAtOnce = ''): Promise<{ answer: string; closedAfterMs: number }> {
  const { port } = new URL(url);
  const started = Date.now();
  return new Promise((resolve) => {
    const socket = net.connect(Number(port), '127.0.0.1', () => socket.write(sentAtOnce));
    let answer = '';
    let offset = 0;
    const timer = setInterval(() => {
      if (offset < head.length && socket.writable) socket.write(head.slice(offset, (offset += 2)));
    }, everyMs);
    socket.on('data', (chunk) => (answer += chunk.toString()));
    socket.on('close', () => {
      clearInterval(timer);
      resolve({ answer, closedAfterMs: Date.now() - started });
    });
    socket.on('error', () => undefined);
  });
}

describe('slow clients', () => {
  let gateway: RunningServer;
  let gatewayLog: Record<string, unknown>[];
  beforeAll(async () => {
    const config = testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' });
    const { logger, lines } = memoryLogger('gateway');
    gatewayLog = lines;
    gateway = await runServer({
      app: createGateway(config, { logger }),
      name: 'gateway',
      port: 0,
      host: '127.0.0.1',
      logger: memoryLogger('gateway').logger,
      timeouts: { headersMs: 500, requestMs: 1000, keepAliveMs: 5000 },
    });
  });
  afterAll(() => gateway.close());

  it('answers 408 problem+json and closes a connection whose headers trickle in (slowloris)', async () => {
    const { answer, closedAfterMs } = await trickle(gateway.url, `GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ${'a'.repeat(200)}\r\n\r\n`, 50);
    expect(answer).toMatch(/^HTTP\/1\.1 408 /);
    expect(answer).toContain('"code":"request_timeout"');
    expect(answer).toMatch(/X-Request-Id: [0-9a-f]{32}/);
    // Generous: cut near the 500 ms bound, long before the head could have finished (~5 s).
    expect(closedAfterMs).toBeLessThan(4000);
  });

  it('answers 408 problem+json with the request id, and logs the 408, when a body trickles in past requestTimeoutMs', async () => {
    // The head is whole, so login's body reader is already waiting when the request timeout fires.
    const { answer, closedAfterMs } = await trickle(gateway.url, '{'.repeat(400), 50, 'POST /api/auth/login HTTP/1.1\r\nHost: x\r\nX-Request-Id: slow-body-1\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 408 /);
    expect(answer).toContain('"code":"request_timeout"');
    expect(answer).toContain('"requestId":"slow-body-1"');
    expect(closedAfterMs).toBeLessThan(4000);
    await waitFor(() => gatewayLog.some((line) => line.request_id === 'slow-body-1'), 'the access-log line');
    // The server answered it (otel/lifecycle.ts), not the pipeline: the line still says why, as the body does.
    expect(gatewayLog.find((line) => line.request_id === 'slow-body-1')).toMatchObject({ status: 408, error_code: 'request_timeout' });
  });

  it('still serves a normal client', async () => {
    expect((await fetch(`${gateway.url}/health`)).status).toBe(200);
  });
});

/** Cuts the server makes to a response already started are recorded as its own (serverAnswerCode), not as a client that left. */
describe('a request body that breaks after its answer started', () => {
  let server: RunningServer;
  const responses: http.ServerResponse[] = [];
  beforeAll(async () => {
    // Answers at once, before reading the body: the head and a first chunk are sent while the upload goes on.
    const app = {
      callback: () => (request: http.IncomingMessage, response: http.ServerResponse) => {
        responses.push(response);
        response.writeHead(200, { 'content-type': 'text/plain' });
        response.write('started');
        // A GET's answer streams on and ends; an upload's waits for a body that never comes whole.
        if (request.method === 'GET') setTimeout(() => response.end(' and finished'), 300);
      },
    };
    server = await runServer({ app, name: 'gateway', port: 0, host: '127.0.0.1', logger: memoryLogger('gateway').logger, timeouts: { headersMs: 300, requestMs: 600, keepAliveMs: 5000 } });
  });
  afterAll(() => server.close());

  it.each([
    { desc: 'arrives too slowly (request timeout)', body: '{', code: 'request_timeout' },
    { desc: 'has a malformed chunk', body: 'zz\r\nabcd\r\n', code: 'bad_request', chunked: true },
  ])('is cut, and the cut is the server’s ($desc)', async ({ body, code, chunked }) => {
    const before = responses.length;
    const framing = chunked ? 'Transfer-Encoding: chunked' : 'Content-Length: 100';
    // The head at once (answered at once), the body two bytes every 50 ms.
    const { answer } = await trickle(server.url, body, 50, `POST /upload HTTP/1.1\r\nHost: x\r\n${framing}\r\n\r\n`);
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    await waitFor(() => responses.length > before && responses[before]!.destroyed, 'the response to be cut');
    expect(serverAnswerCode(responses[before]!)).toBe(code);
  });

  it('lets a streaming answer to a complete request finish when garbage follows it, then closes the connection', async () => {
    const { answer } = await trickle(server.url, 'GARBAGE\r\n\r\n', 50, 'GET /stream HTTP/1.1\r\nHost: x\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(answer).toContain('and finished');
  });
});
