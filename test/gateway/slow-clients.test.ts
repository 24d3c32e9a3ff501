import net from 'node:net';
import { runServer, type RunningServer } from '../../otel/lifecycle';
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
