import http from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import { runServer, serverAnswerCode, type RunningServer } from '../../otel/lifecycle';
import { ACCESS_LINE_MESSAGE } from '../../otel/wire-names';
import { createGateway } from '../../src/gateway';
import { createTlsServer } from '../../src/tls';
import { makeCertificate, type TestCertificate } from '../helpers/certificates';
import { listen, memoryLogger, type TestServer } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';
import { signToken } from '../helpers/tokens';
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

/**
 * HTTP/1's slow-read bound (otel/lifecycle.ts watchStalledSends): a client that asks for a large answer and stops
 * reading it held the connection, its slot and the answer's tail for ever (no timer of Node's applies once the
 * request is whole). Past `sendTimeoutMs` with less than 240 bytes/s taken, the gateway closes it and says why.
 */
describe.each([{ transport: 'plain' }, { transport: 'TLS' }])('a client that stops reading its answer ($transport)', ({ transport }) => {
  const ANSWER_BYTES = 48 * 1024 * 1024;
  let upstream: TestServer;
  let gateway: RunningServer;
  let gatewayLog: Record<string, unknown>[];
  let token: string;
  let certificate: TestCertificate | undefined;
  const TIMEOUTS = { headersMs: 10_000, requestMs: 60_000, keepAliveMs: 5_000 };
  beforeAll(async () => {
    // More than the kernel buffers on both ends of both hops hold, so the gateway's own queue fills.
    const chunk = Buffer.alloc(64 * 1024, 'x');
    upstream = await listen((_request, response) => {
      response.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(ANSWER_BYTES) });
      let sent = 0;
      const pump = () => {
        while (sent < ANSWER_BYTES) {
          sent += chunk.length;
          if (!response.write(chunk)) return void response.once('drain', pump);
        }
        response.end();
      };
      pump();
    });
    const config = testConfig({ users: upstream.url, orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' });
    const { logger, lines } = memoryLogger('gateway');
    gatewayLog = lines;
    // Over TLS the kernel's progress is read from the TCP socket under the TLS one (otel/lifecycle.ts bytesTakenByKernel).
    certificate = transport === 'TLS' ? makeCertificate() : undefined;
    const createServer = certificate && createTlsServer({ tls: { certFile: certificate.certFile, keyFile: certificate.keyFile, minVersion: 'TLSv1.2' }, timeouts: TIMEOUTS, logger }).create;
    gateway = await runServer({ app: createGateway(config, { logger }), name: 'gateway', port: 0, host: '127.0.0.1', logger, timeouts: TIMEOUTS, sendTimeoutMs: 1500, createServer });
    token = await signToken();
  });
  afterAll(async () => {
    await gateway.close();
    await upstream.close();
  });

  /**
   * Asks for the large answer on a connection of its own and reads up to `readBytesPerTick` every 10 ms (0: never);
   * a paused socket holds 64 KiB, so at most about 6 MB/s.
   */
  function askAndRead(requestId: string, readBytesPerTick: number, stopAfterBytes = Infinity) {
    const { port } = new URL(gateway.url);
    const socket = certificate ? tls.connect({ port: Number(port), host: '127.0.0.1', ca: certificate.cert, servername: 'localhost' }) : net.connect(Number(port), '127.0.0.1');
    socket.on('error', () => undefined);
    socket.pause();
    socket.write(`GET /api/users/large HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${token}\r\nX-Request-Id: ${requestId}\r\n\r\n`);
    let received = 0;
    const reader =
      readBytesPerTick > 0
        ? setInterval(() => {
            let taken = 0;
            for (let chunk: Buffer | null; taken < readBytesPerTick && received + taken < stopAfterBytes && (chunk = socket.read() as Buffer | null) !== null; ) taken += chunk.length;
            received += taken;
          }, 10)
        : undefined;
    const ended = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    return {
      received: () => received,
      ended,
      stop: () => {
        clearInterval(reader);
        socket.destroy();
      },
    };
  }

  const accessLine = (requestId: string) => gatewayLog.find((line) => line.message === ACCESS_LINE_MESSAGE && line.request_id === requestId);

  it('closes the connection of a client that takes nothing, and records client_read_timeout', async () => {
    const client = askAndRead('slow-read-none', 0);
    try {
      await waitFor(() => accessLine('slow-read-none') !== undefined, 'the access line', 20_000);
      // The client's doing, logged as other client-caused answers are (it was error: any client could write those).
      expect(accessLine('slow-read-none')).toMatchObject({ status: 200, error_code: 'client_read_timeout', level: 'warn' });
    } finally {
      client.stop();
    }
  });

  it('closes the connection of a client that read fast, then stopped: a fast start buys no long stall', async () => {
    // 8 MB at full speed, then nothing: averaged since the bytes began to wait, that was 8 MB / 240 B/s, nine hours.
    const client = askAndRead('slow-read-stopped', 1024 * 1024, 8 * 1024 * 1024);
    try {
      await waitFor(() => accessLine('slow-read-stopped') !== undefined, 'the access line', 20_000);
      expect(accessLine('slow-read-stopped')).toMatchObject({ status: 200, error_code: 'client_read_timeout' });
      expect(client.received()).toBeGreaterThanOrEqual(8 * 1024 * 1024);
    } finally {
      client.stop();
    }
  });

  it('lets a client that reads slowly but steadily take the whole answer', async () => {
    // Far below loopback speed (the gateway's queue stays full), far above the bound.
    const client = askAndRead('slow-read-steady', 1024 * 1024);
    try {
      await waitFor(() => accessLine('slow-read-steady') !== undefined, 'the access line', 30_000);
      expect(accessLine('slow-read-steady')).toMatchObject({ status: 200, error_code: null });
      expect(client.received()).toBeGreaterThan(ANSWER_BYTES - 16 * 1024 * 1024);
    } finally {
      client.stop();
    }
  }, 45_000);
});
