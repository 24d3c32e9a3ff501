import { createHash } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import fc from 'fast-check';
import { ACCESS_LINE_MESSAGE, HEADER } from '../../otel/wire-names';
import { runServer, type RunningServer } from '../../otel/lifecycle';
import { createGateway } from '../../src/gateway';
import { listen, memoryLogger, type TestServer } from '../helpers/servers';
import { login, registrationsSeen, startStack, type TestStack } from '../helpers/stack';
import { routesWithOpenRegister } from '../helpers/test-config';
import { stalledUpload, tricklingUpload } from '../helpers/uploads';
import { waitFor } from '../helpers/wait';

/**
 * A request body's first `proxy.requestBufferBytes`, all of a smaller one, are read before a connection to its service
 * is taken (src/request-buffer.ts): a slowly sending client holds none of a service's connections with a small body.
 */

/** The shipped stack with the register route open to many uploads, and these proxy and server settings. */
function startUploadStack(proxy: Record<string, unknown>, server: Record<string, unknown>, routes = routesWithOpenRegister()): Promise<TestStack> {
  return startStack({ overrides: { routes, proxy, server } });
}

const registration = (name: string, length: number) => {
  const json = JSON.stringify({ name, email: `${name.toLowerCase()}@example.com`, password: 'long enough' });
  return json.slice(0, -1) + ' '.repeat(Math.max(0, length - json.length)) + '}';
};

describe('a small body is read before its service is asked', () => {
  let stack: TestStack;
  let bob: string;
  const registrations = () => registrationsSeen(stack);

  beforeAll(async () => {
    stack = await startUploadStack({ timeoutMs: 3000, maxSockets: 2, maxPendingRequests: 8 }, { minBodyBytesPerSecond: 100, bodyGracePeriodMs: 600 });
    bob = await login(stack.gateway.url, 'bob@example.com', 'builder');
  });
  afterAll(() => stack.close());

  // The review's attack: uploads just above the minimum rate, more of them than the service has connections. Streamed,
  // they held both of user-service's connections until they ended, and the profile below waited for one (503 after
  // the 3 s timeout).
  it('serves other requests while slow uploads above the minimum rate are still arriving', async () => {
    const before = registrations();
    const uploads = ['Trickle', 'Drip', 'Seep'].map((name) =>
      tricklingUpload(stack.gateway.url, '/api/auth/register', { 'content-type': 'application/json', 'transfer-encoding': 'chunked' }, registration(name, 700), 8, 40),
    );
    await waitFor(() => uploads.every((upload) => upload.sent() >= 100), 'every upload to be under way');

    const profile = await fetch(`${stack.gateway.url}/api/users/2`, { headers: { authorization: `Bearer ${bob}` } });
    expect(profile.status).toBe(200);
    expect(uploads.map((upload) => upload.answered())).toEqual([false, false, false]);
    // None of them reached user-service yet: nothing of theirs holds one of its connections.
    expect(registrations()).toBe(before);

    // Each goes on whole once it is in.
    for (const upload of uploads) expect((await upload.reply).status).toBe(201);
    expect(registrations()).toBe(before + 3);
  });

  it('answers 408 to a small body slower than the minimum rate, never asking the service', async () => {
    const before = registrations();
    const upload = tricklingUpload(stack.gateway.url, '/api/auth/register', { 'content-type': 'application/json', 'content-length': '700' }, registration('Slowest', 700), 1, 50);
    const reply = await upload.reply;
    upload.stop();
    expect(reply.status).toBe(408);
    expect(reply.headers.connection).toBe('close');
    expect(JSON.parse(reply.text)).toMatchObject({ code: 'request_timeout', detail: 'The request body arrived slower than 100 bytes/s.', requestId: reply.headers[HEADER.requestId] });
    expect(registrations()).toBe(before);
  });

  it('asks the service nothing when the client leaves mid-body, and keeps serving', async () => {
    const before = registrations();
    const requestId = 'left-mid-body';
    const { hostname, port } = new URL(stack.gateway.url);
    const socket = net.connect(Number(port), hostname);
    socket.on('error', () => undefined);
    await new Promise((resolve) => socket.once('connect', resolve));
    socket.write(`POST /api/auth/register HTTP/1.1\r\nHost: ${hostname}:${port}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n${HEADER.requestId}: ${requestId}\r\n\r\n{"na`);
    const line = () => stack.gatewayLogs.find((entry) => entry.message === ACCESS_LINE_MESSAGE && entry.request_id === requestId);
    // The gateway has read the head (its body too, as it came) once its pipeline runs; then the client leaves.
    await new Promise((resolve) => setTimeout(resolve, 100));
    socket.destroy();
    await waitFor(() => line() !== undefined, 'the access line of the request whose client left');
    expect(line()).toMatchObject({ status: 499 });
    expect(registrations()).toBe(before);
    expect((await fetch(`${stack.gateway.url}/api/users/2`, { headers: { authorization: `Bearer ${bob}` } })).status).toBe(200);
  });
});

describe('a body that stops mid-way while it is read ahead', () => {
  let stack: TestStack;

  beforeAll(async () => {
    // The rate check stays out of it: the bytes sent are far above the rate for the whole grace period.
    stack = await startUploadStack({ timeoutMs: 1000, maxBodyBytes: 5000 }, { minBodyBytesPerSecond: 1, bodyGracePeriodMs: 60_000 });
  });
  afterAll(() => stack.close());

  const registrations = () => registrationsSeen(stack);

  it.each([
    ['a declared length', { 'content-type': 'application/json', 'content-length': '4001' }],
    ['chunked', { 'content-type': 'application/json', 'transfer-encoding': 'chunked' }],
  ])('answers 408 for a body stalled mid-way (%s), never asking the service', async (_name, headers) => {
    const before = registrations();
    const reply = await stalledUpload(stack.gateway.url, '/api/auth/register', headers, 4001);
    expect(reply.status).toBe(408);
    expect(reply.headers.connection).toBe('close');
    expect(JSON.parse(reply.text)).toMatchObject({ code: 'request_timeout', detail: 'No byte of the request body arrived for 1000 ms.', requestId: reply.headers[HEADER.requestId] });
    expect(registrations()).toBe(before);
  });

  it('answers 413 to a body of unknown length over proxy.maxBodyBytes, never asking the service', async () => {
    const before = registrations();
    const reply = await fetch(`${stack.gateway.url}/api/auth/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: new Blob([registration('Large', 6000)]).stream(),
      duplex: 'half',
    } as RequestInit);
    expect(reply.status).toBe(413);
    expect(await reply.json()).toMatchObject({ code: 'payload_too_large', detail: 'The request body is larger than 5000 bytes.' });
    expect(registrations()).toBe(before);
  });
});

describe('the rest of a long body, once a connection is taken', () => {
  let stack: TestStack;

  beforeAll(async () => {
    const routes = routesWithOpenRegister().map((route) => (route.name === 'register' ? { ...route, deadlineMs: 10_000 } : route));
    stack = await startUploadStack({ timeoutMs: 5000, requestBufferBytes: 1024 }, { minBodyBytesPerSecond: 100, bodyGracePeriodMs: 600 }, routes);
  });
  afterAll(() => stack.close());

  // Its fast start counted in its average, the rest could trickle at any rate (here 10 bytes/s) while it held the
  // service's connection: 2 KiB at once kept a body over 100 bytes/s for 20 s, and only the deadline ended it.
  it('answers 408 when the rest trickles below the minimum rate after a fast start, judged from when it streams', async () => {
    const body = registration('Burst', 5000);
    const upload = tricklingUpload(stack.gateway.url, '/api/auth/register', { 'content-type': 'application/json', 'content-length': String(body.length) }, body, 1, 100, 2048);
    const reply = await upload.reply;
    upload.stop();
    expect(reply.status).toBe(408);
    expect(JSON.parse(reply.text)).toMatchObject({ code: 'request_timeout', detail: 'The request body arrived slower than 100 bytes/s.' });
  });
});

describe('uploads still arriving take at most half of an instance’s connections', () => {
  let stack: TestStack;
  let bob: string;
  const registrations = () => registrationsSeen(stack);

  beforeAll(async () => {
    // Two connections, so one for uploads; a body longer than 16 bytes streams on once 16 came. Slow but within the
    // rules: the uploads below are cut by nothing but their clients.
    stack = await startUploadStack({ timeoutMs: 5000, maxSockets: 2, maxPendingRequests: 8, requestBufferBytes: 16 }, { minBodyBytesPerSecond: 1, bodyGracePeriodMs: 60_000 });
    bob = await login(stack.gateway.url, 'bob@example.com', 'builder');
  });
  afterAll(() => stack.close());

  // Past the read-ahead, a client could send the rest as slowly as the minimum rate lets it on as many connections as
  // it liked: two such uploads held both connections, and the profile below waited for one (503 after 5 s).
  it('answers a second upload 503 upstream_busy at once while the first holds its share, and serves the others', async () => {
    const before = registrations();
    const first = tricklingUpload(stack.gateway.url, '/api/auth/register', { 'content-type': 'application/json', 'transfer-encoding': 'chunked', [HEADER.requestId]: 'upload-holder' }, registration('Holder', 400), 1, 100, 64);
    await waitFor(() => registrations() === before + 1, 'the first upload to reach user-service');
    const second = tricklingUpload(stack.gateway.url, '/api/auth/register', { 'content-type': 'application/json', 'transfer-encoding': 'chunked' }, registration('Second', 400), 1, 100, 64);
    try {
      const busy = await second.reply;
      expect(busy.status).toBe(503);
      expect(busy.headers['retry-after']).toMatch(/^[1-9]\d*$/);
      expect(JSON.parse(busy.text)).toMatchObject({ code: 'upstream_busy', detail: 'Half of the connections to the users service already carry uploads still arriving; try again shortly.' });
      expect(registrations()).toBe(before + 1);
      // A request whose body is in (or that has none) takes the other connection.
      const profile = await fetch(`${stack.gateway.url}/api/users/2`, { headers: { authorization: `Bearer ${bob}` } });
      expect(profile.status).toBe(200);
      const small = await fetch(`${stack.gateway.url}/api/auth/register`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name":"S"}' });
      expect(small.status).toBe(400);
      expect(first.answered()).toBe(false);
    } finally {
      first.stop();
      second.stop();
    }
    // Its place is given back when it ends: the next upload is taken.
    await waitFor(() => stack.gatewayLogs.some((entry) => entry.message === ACCESS_LINE_MESSAGE && entry.request_id === 'upload-holder'), 'the first upload to end');
    const after = await fetch(`${stack.gateway.url}/api/auth/register`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: registration('After', 400) });
    expect(after.status).toBe(201);
  });
});

describe('uploads refused before any exchange took their body, on a kept-alive connection', () => {
  let stack: TestStack;
  let served: RunningServer;

  beforeAll(async () => {
    stack = await startUploadStack({ timeoutMs: 5000, maxSockets: 2, maxPendingRequests: 8, requestBufferBytes: 16 }, { minBodyBytesPerSecond: 1, bodyGracePeriodMs: 60_000 });
    // Served as main.ts serves it (runServer): the test stack's plain listener read the rest on its own.
    const { logger } = memoryLogger('gateway');
    served = await runServer({ app: createGateway(stack.config, { logger }), name: 'gateway', port: 0, host: '127.0.0.1', logger, drainTimeoutMs: 1000 });
  });
  afterAll(async () => {
    await served.close();
    await stack.close();
  });

  // The 503 came once 16 bytes were read and the rest paused: nothing read it after, and the connection, kept alive,
  // never parsed the client's next request (a client sending its whole body first was reset a few seconds later).
  it('reads and drops the rest of the body after its 503, and serves the next request on the connection', async () => {
    const registrations = () => registrationsSeen(stack);
    const before = registrations();
    const holder = tricklingUpload(served.url, '/api/auth/register', { 'content-type': 'application/json', 'transfer-encoding': 'chunked' }, registration('Keeper', 400), 1, 100, 64);
    await waitFor(() => registrations() === before + 1, 'the upload holding the share to reach user-service');
    const { hostname, port } = new URL(served.url);
    const socket = net.connect(Number(port), hostname);
    let received = '';
    socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
    socket.on('error', () => undefined);
    try {
      await new Promise((resolve) => socket.once('connect', resolve));
      const body = registration('Refused', 1_000_000);
      socket.write(`POST /api/auth/register HTTP/1.1\r\nHost: ${hostname}:${port}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      socket.write(`GET /health HTTP/1.1\r\nHost: ${hostname}:${port}\r\n\r\n`);
      await waitFor(() => (received.match(/HTTP\/1\.1 \d{3}/g) ?? []).length === 2, 'both answers on the connection');
      expect(received.match(/HTTP\/1\.1 \d{3}/g)).toEqual(['HTTP/1.1 503', 'HTTP/1.1 200']);
      expect(registrations()).toBe(before + 1);
    } finally {
      socket.destroy();
      holder.stop();
    }
  });
});

describe('what the service receives of a body read ahead or streamed after its start', () => {
  const LIMIT = 1024;
  let echo: TestServer;
  let stack: TestStack;
  let token: string;
  /** What the echo service saw of each request, by request id. */
  const seen = new Map<string, { bytes: number; sha256: string; contentLength?: string; chunked: boolean; expect?: string }>();

  beforeAll(async () => {
    echo = await listen((req, res) => {
      const hash = createHash('sha256');
      let bytes = 0;
      req.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        hash.update(chunk);
      });
      req.on('end', () => {
        seen.set(String(req.headers[HEADER.requestId]), { bytes, sha256: hash.digest('hex'), contentLength: req.headers['content-length'], chunked: req.headers['transfer-encoding'] === 'chunked', expect: req.headers.expect });
        res.setHeader('content-type', 'application/json');
        res.end('{}');
      });
    });
    stack = await startStack({ env: { RATE_LIMIT_MAX: '100000' }, overrides: { proxy: { requestBufferBytes: LIMIT } }, serviceUrls: { orders: echo.url } });
    token = await login(stack.gateway.url);
  });
  afterAll(async () => {
    await stack.close();
    await echo.close();
  });

  /** Sends `body` cut into `pieces` writes, with or without Content-Length; returns the request id. */
  async function send(body: Buffer, pieces: number[], declared: boolean, requestId: string): Promise<number> {
    const { hostname, port } = new URL(stack.gateway.url);
    return new Promise<number>((resolve, reject) => {
      const headers: http.OutgoingHttpHeaders = { authorization: `Bearer ${token}`, 'content-type': 'application/octet-stream', [HEADER.requestId]: requestId };
      if (declared) headers['content-length'] = String(body.length);
      const request = http.request({ host: hostname, port: Number(port), path: '/api/orders', method: 'POST', headers, agent: false }, (response) => {
        response.resume();
        response.on('end', () => resolve(response.statusCode ?? 0));
      });
      request.on('error', reject);
      let at = 0;
      for (const piece of pieces) {
        if (at >= body.length) break;
        request.write(body.subarray(at, Math.min(body.length, at + piece)));
        at += piece;
      }
      request.end(at < body.length ? body.subarray(at) : undefined);
    });
  }

  it.each([
    ['smaller than the limit, declared', 100, true, false],
    ['exactly the limit, declared', LIMIT, true, false],
    ['one byte over the limit, declared', LIMIT + 1, true, true],
    ['smaller than the limit, chunked', 100, false, false],
    ['exactly the limit, chunked', LIMIT, false, false],
    ['one byte over the limit, chunked', LIMIT + 1, false, true],
    ['far over the limit, chunked', 300_000, false, true],
  ])('passes on every byte in order: %s', async (name, length, declared, streamed) => {
    const body = Buffer.alloc(length, 0);
    for (let i = 0; i < length; i++) body[i] = (i * 31 + 7) & 0xff;
    const requestId = `table-${name.replaceAll(' ', '-').replaceAll(',', '')}`;
    expect(await send(body, [length], declared, requestId)).toBe(200);
    const received = seen.get(requestId)!;
    expect(received.bytes).toBe(length);
    expect(received.sha256).toBe(createHash('sha256').update(body).digest('hex'));
    // A body read whole goes with its length (nginx sends a buffered body so too), as does one whose client declared
    // it; one of unknown length that streams on goes chunked (or with its length, when undici finds it all there).
    if (!streamed || declared) expect(received).toMatchObject({ contentLength: String(length), chunked: false });
    else expect(received.chunked ? received.contentLength : received.contentLength === String(length)).toBe(received.chunked ? undefined : true);
  });

  it('passes on every byte in order, whatever the body’s length and however the client cuts it (generated)', async () => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 3 * LIMIT }), fc.array(fc.integer({ min: 1, max: 2 * LIMIT }), { minLength: 1, maxLength: 6 }), fc.boolean(), async (bytes, pieces, declared) => {
        const body = Buffer.from(bytes);
        const requestId = `generated-${run++}`;
        expect(await send(body, pieces, declared, requestId)).toBe(200);
        const received = seen.get(requestId)!;
        expect({ bytes: received.bytes, sha256: received.sha256 }).toEqual({ bytes: body.length, sha256: createHash('sha256').update(body).digest('hex') });
      }),
      { seed: 20261206, numRuns: 60 },
    );
  });
});
