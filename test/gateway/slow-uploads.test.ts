import http from 'node:http';
import net from 'node:net';
import { runServer, type RunningServer } from '../../otel/lifecycle';
import { HEADER } from '../../otel/wire-names';
import { parseConfig } from '../../src/config';
import { createGateway } from '../../src/gateway';
import { CREDENTIALS_CHECK_PATH } from '../../src/middleware/login';
import { listen, memoryLogger, type TestServer } from '../helpers/servers';
import { login, registrationsSeen, startStack, type TestStack } from '../helpers/stack';
import { routesWithOpenRegister, shippedConfigFile, TEST_JWT_SECRET } from '../helpers/test-config';
import { stalledUpload, tricklingUpload } from '../helpers/uploads';
import { waitFor } from '../helpers/wait';

/**
 * A chunked POST that sends one byte every `everyMs` until the gateway answers (or 1000 went out), the shape of the
 * attack in the review: a client holding an upstream connection by trickling its body.
 */
function slowUpload(origin: string, path: string, everyMs: number) {
  return tricklingUpload(origin, path, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' }, `{${' '.repeat(1000)}`, 1, everyMs, 1);
}

// These suites hold connections with bodies that stream (proxy.requestBufferBytes 0): what still bounds a body too long
// to be read ahead. test/gateway/request-read-ahead.test.ts has the bodies read before a connection is taken.
describe('slow uploads cannot starve a service’s connections', () => {
  let stack: TestStack;
  let bob: string;
  const registrations = () => registrationsSeen(stack);

  beforeAll(async () => {
    stack = await startStack({
      overrides: {
        routes: routesWithOpenRegister(),
        // Four connections: two for uploads still arriving (half of maxSockets), two for the rest.
        proxy: { timeoutMs: 3000, maxSockets: 4, maxPendingRequests: 8, requestBufferBytes: 0 },
        server: { minBodyBytesPerSecond: 100, bodyGracePeriodMs: 600 },
      },
    });
    bob = await login(stack.gateway.url, 'bob@example.com', 'builder');
  });
  afterAll(() => stack.close());

  it('cuts uploads slower than the minimum rate with 408, while other requests are served', async () => {
    const before = registrations();
    const uploads = [slowUpload(stack.gateway.url, '/api/auth/register', 500), slowUpload(stack.gateway.url, '/api/auth/register', 500)];
    // Both uploads hold one of the two connections to user-service uploads may take.
    await waitFor(() => registrations() === before + 2, 'both slow uploads to reach user-service', 10_000);
    const profile = fetch(`${stack.gateway.url}/api/users/2`, { headers: { authorization: `Bearer ${bob}` }, signal: AbortSignal.timeout(15_000) });

    for (const upload of uploads) {
      const reply = await upload.reply;
      expect(reply.status).toBe(408);
      expect(reply.headers.connection).toBe('close');
      expect(JSON.parse(reply.text)).toMatchObject({ code: 'request_timeout', requestId: reply.headers[HEADER.requestId] });
    }
    // Without the cut this waits until the uploads end (1000 bytes at 2 bytes/s: minutes) and the signal fires.
    const served = await profile;
    expect(served.status).toBe(200);
    uploads.forEach((upload) => upload.stop());
  });

  // The bodies the gateway reads itself are held to the same rate: without it a login body could drip for the
  // whole requestTimeoutMs (120 s by default) on each of many connections.
  it('cuts a login body slower than the minimum rate with 408, never asking user-service', async () => {
    const checks = () => stack.users.requests.filter((request) => request.url === CREDENTIALS_CHECK_PATH).length;
    const before = checks();
    const upload = slowUpload(stack.gateway.url, '/api/auth/login', 500);
    const reply = await upload.reply;
    upload.stop();
    expect(reply.status).toBe(408);
    expect(reply.headers.connection).toBe('close');
    expect(JSON.parse(reply.text)).toMatchObject({ code: 'request_timeout', requestId: reply.headers[HEADER.requestId] });
    expect(checks()).toBe(before);
  });

  it('forwards a body that arrives fast enough, however large', async () => {
    const body = JSON.stringify({ name: 'Fast', email: 'fast@example.com', password: 'long enough', padding: 'x'.repeat(256 * 1024) });
    const reply = await fetch(`${stack.gateway.url}/api/auth/register`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    expect(reply.status).toBe(201);
  });
});

/** A service that answers at once and reads the body on, a byte of its answer every half second meanwhile. */
function answerAtOnce(req: http.IncomingMessage, res: http.ServerResponse): void {
  res.writeHead(200, { 'content-type': 'text/plain' }).flushHeaders();
  const ticking = setInterval(() => res.write('.'), 500);
  req.resume();
  req.on('close', () => clearInterval(ticking));
  req.on('end', () => res.end('done'));
}

describe('the queue of requests waiting for an upstream connection is bounded', () => {
  let stack: TestStack;
  let held: TestServer;
  let token: string;
  /** Answers to the requests the service holds (`/orders/hold`), given when the test lets them go. */
  const holding: (() => void)[] = [];
  let bodies = 0;

  beforeAll(async () => {
    held = await listen((req, res) => {
      if (req.url?.startsWith('/orders/hold')) return void holding.push(() => res.end('{}'));
      if (req.url?.startsWith('/orders/early')) return answerAtOnce(req, res);
      bodies++;
      req.resume();
      req.on('end', () => res.writeHead(201, { 'content-type': 'application/json' }).end('{}'));
    });
    stack = await startStack({
      serviceUrls: { orders: held.url },
      env: { RATE_LIMIT_MAX: '100000' },
      // A body over 16 bytes streams on after them: it waits for a connection as an upload still arriving.
      overrides: { proxy: { timeoutMs: 3000, maxSockets: 2, maxPendingRequests: 2, requestBufferBytes: 16 }, server: { minBodyBytesPerSecond: 100, bodyGracePeriodMs: 1500 } },
    });
    token = await login(stack.gateway.url);
  });
  afterAll(async () => {
    holding.splice(0).forEach((answer) => answer());
    await stack.close();
    await held.close();
  });

  /** Two requests the service holds: both connections busy. */
  async function fillThePool(): Promise<Promise<Response>[]> {
    const waiting = holding.length;
    const requests = [1, 2].map((n) => fetch(`${stack.gateway.url}/api/orders/hold?n=${n}`, { headers: { authorization: `Bearer ${token}` } }));
    await waitFor(() => holding.length === waiting + 2, 'both connections to be held');
    return requests;
  }

  it('answers 503 upstream_busy with Retry-After at once when every connection is busy and the queue is full', async () => {
    const requests = await fillThePool();
    const queued = [1, 2].map((n) => fetch(`${stack.gateway.url}/api/orders/queued?n=${n}`, { headers: { authorization: `Bearer ${token}` } }));
    const busy = await fetch(`${stack.gateway.url}/api/orders/over`, { headers: { authorization: `Bearer ${token}` } });
    expect(busy.status).toBe(503);
    expect(busy.headers.get('retry-after')).toMatch(/^[1-9]\d*$/);
    expect(await busy.json()).toMatchObject({ code: 'upstream_busy' });
    // Other services' connections are their own.
    expect((await fetch(`${stack.gateway.url}/api/users/2`)).status).toBe(401);
    holding.splice(0).forEach((answer) => answer());
    for (const request of requests) expect((await request).status).toBe(200);
    // The ones that waited are served once connections came free.
    for (const request of queued) expect((await request).status).toBe(201);
  });

  // Counted among the uploads waiting on their clients while they waited for a connection (the gateway holding their
  // bodies back), the second was answered 503 as one over the uploads' half, with no slow client anywhere.
  it('queues uploads its clients send at once behind busy connections, and serves them all', async () => {
    const requests = await fillThePool();
    const before = bodies;
    const body = JSON.stringify({ items: [], padding: 'x'.repeat(3_000_000) });
    const uploads = [1, 2].map((n) => fetch(`${stack.gateway.url}/api/orders?upload=${n}`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body }));
    // Both under way at the gateway, their bodies' starts read: time for each to be queued (neither can be answered).
    await new Promise((resolve) => setTimeout(resolve, 300));
    holding.splice(0).forEach((answer) => answer());
    for (const request of requests) expect((await request).status).toBe(200);
    expect(await Promise.all(uploads.map(async (upload) => (await upload).status))).toEqual([201, 201]);
    expect(bodies).toBe(before + 2);
  });

  /**
   * Two uploads queued behind both connections held, then let out together: each a fast start that fills what the
   * gateway buffers for a queued body (so it is held back, not owed by its client), then `rest` bytes at
   * `bytesPerTick` every `everyMs`.
   */
  async function queuedUploads(path: string, rest: number, bytesPerTick: number, everyMs: number, sendsPastAnswer = false) {
    const requests = await fillThePool();
    const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'transfer-encoding': 'chunked' };
    const start = 200_000;
    const body = JSON.stringify({ items: [], padding: 'x'.repeat(start + rest) });
    const uploads = [1, 2].map((n) => tricklingUpload(stack.gateway.url, `${path}?upload=${n}`, headers, body, bytesPerTick, everyMs, start, sendsPastAnswer));
    // Both under way at the gateway, their bodies' starts read, and queued: then both take the connections.
    await new Promise((resolve) => setTimeout(resolve, 300));
    holding.splice(0).forEach((answer) => answer());
    for (const request of requests) expect((await request).status).toBe(200);
    return uploads;
  }

  // Queued behind busy connections, uploads are paused (the gateway holds their bodies back), so the half is not met
  // when an instance is picked for them: let out together, slow ones took every connection, and a request that had
  // nothing to send waited for one until its timeout.
  it('refuses the newest upload still arriving past the grace period beyond the uploads’ half, and serves the others', async () => {
    // 200 bytes/s after the start, twice the minimum: nothing but the half cuts them; about 5 s each, past the timeout.
    const uploads = await queuedUploads('/api/orders', 1000, 20, 100);
    try {
      const first = await Promise.race(uploads.map((upload, index) => upload.reply.then((reply) => ({ reply, index }))));
      expect(first.reply.status).toBe(503);
      expect(first.reply.headers.connection).toBe('close');
      expect(first.reply.headers['retry-after']).toMatch(/^[1-9]\d*$/);
      expect(JSON.parse(first.reply.text)).toMatchObject({ code: 'upstream_busy', detail: 'Half of the connections to the orders service already carry uploads still arriving; try again shortly.' });
      // The connection it held serves a request that has nothing more to send, while the other upload still arrives.
      const other = uploads[1 - first.index]!;
      const served = await fetch(`${stack.gateway.url}/api/orders/after?n=1`, { headers: { authorization: `Bearer ${token}` } });
      expect(served.status).toBe(201);
      expect(other.answered()).toBe(false);
      expect((await other.reply).status).toBe(201);
    } finally {
      for (const upload of uploads) upload.stop();
    }
  });

  // A slow upload whose service answered at once held its connection all the same, and was let past the check.
  it('refuses a slow upload past the uploads’ half though its service answered at once, cutting that answer', async () => {
    const uploads = await queuedUploads('/api/orders/early', 1000, 20, 100, true);
    const settled = uploads.map((upload, index) =>
      upload.reply.then(
        (reply) => ({ index, status: reply.status, cut: false }),
        () => ({ index, status: 0, cut: true }),
      ),
    );
    try {
      const first = await Promise.race(settled);
      expect(first.cut).toBe(true);
      const served = await fetch(`${stack.gateway.url}/api/orders/after?n=2`, { headers: { authorization: `Bearer ${token}` } });
      expect(served.status).toBe(201);
      expect(await settled[1 - first.index]).toMatchObject({ status: 200, cut: false });
    } finally {
      for (const upload of uploads) upload.stop();
    }
  });

  // Any upload still arriving past the grace counted: two at 200 KB/s, let out of the queue together, lost one mid-body.
  it('lets uploads faster than a slow one’s rate go on past the grace period, however many', async () => {
    // The rest at 200 KB/s for about 2.5 s: past the grace (1.5 s), and over 64 KiB/s.
    const uploads = await queuedUploads('/api/orders', 500_000, 10_000, 50);
    try {
      expect((await Promise.all(uploads.map((upload) => upload.reply))).map((reply) => reply.status)).toEqual([201, 201]);
    } finally {
      for (const upload of uploads) upload.stop();
    }
  });

  // undici listens for a body's 'error' only once a connection takes its request: a body still queued in the pool
  // had no listener, and its destruction when the client broke off was an uncaught error that ended the process.
  it('keeps serving when a client breaks off a body still queued for a connection', async () => {
    const requests = await fillThePool();
    const before = bodies;
    const { hostname, port } = new URL(stack.gateway.url);
    const queued = net.connect(Number(port), hostname);
    await new Promise((resolve) => queued.once('connect', resolve));
    queued.write(`POST /api/orders HTTP/1.1\r\nHost: ${hostname}:${port}\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"items": [], "padding": "`);
    // Time for the gateway to read the head and the body's start and queue the request behind the two held ones.
    await new Promise((resolve) => setTimeout(resolve, 200));
    queued.destroy();
    holding.splice(0).forEach((answer) => answer());
    for (const request of requests) expect((await request).status).toBe(200);
    const after = await fetch(`${stack.gateway.url}/api/orders`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ items: [], padding: 'x'.repeat(64) }) });
    expect(after.status).toBe(201);
    // The broken-off body never reached the service as a request, before the connections came free or after.
    expect(bodies).toBe(before + 1);
  });
});

// Four connections, so two for slow uploads, each answered at once: exactly the two beyond the half are cut. (An outside
// review saw all four cut when a cut one stayed counted until its exchange ended; here the cut exchanges end before
// the next judgement, so this does not reproduce that, only pins the count.)
describe('slow uploads let out of the queue together, whose service answered at once', () => {
  let stack: TestStack;
  let service: TestServer;
  let token: string;
  const holding: (() => void)[] = [];

  beforeAll(async () => {
    service = await listen((req, res) => {
      if (req.url?.startsWith('/orders/hold')) return void holding.push(() => res.end('{}'));
      answerAtOnce(req, res);
    });
    stack = await startStack({
      serviceUrls: { orders: service.url },
      env: { RATE_LIMIT_MAX: '100000' },
      overrides: { proxy: { timeoutMs: 3000, maxSockets: 4, maxPendingRequests: 4, requestBufferBytes: 16 }, server: { minBodyBytesPerSecond: 100, bodyGracePeriodMs: 1500 } },
    });
    token = await login(stack.gateway.url);
  });
  afterAll(async () => {
    holding.splice(0).forEach((answer) => answer());
    await stack.close();
    await service.close();
  });

  it('cuts only those beyond the half', async () => {
    const auth = { authorization: `Bearer ${token}` };
    const held = [1, 2, 3, 4].map((n) => fetch(`${stack.gateway.url}/api/orders/hold?n=${n}`, { headers: auth }));
    await waitFor(() => holding.length === 4, 'every connection to be held');
    const body = JSON.stringify({ items: [], padding: 'x'.repeat(201_000) });
    const uploads = [1, 2, 3, 4].map((n) => tricklingUpload(stack.gateway.url, `/api/orders/early?upload=${n}`, { ...auth, 'content-type': 'application/json', 'transfer-encoding': 'chunked' }, body, 20, 100, 200_000, true));
    try {
      await new Promise((resolve) => setTimeout(resolve, 300));
      holding.splice(0).forEach((answer) => answer());
      for (const request of held) expect((await request).status).toBe(200);
      const outcomes = await Promise.all(uploads.map((upload) => upload.reply.then((reply) => reply.status, () => 'cut')));
      expect(outcomes.filter((outcome) => outcome === 'cut')).toHaveLength(2);
      expect(outcomes.filter((outcome) => outcome === 200)).toHaveLength(2);
    } finally {
      for (const upload of uploads) upload.stop();
    }
  });
});

describe('an upstream exchange cannot outlive its deadline', () => {
  let stack: TestStack;
  let upstream: TestServer;
  let token: string;

  beforeAll(async () => {
    // Keeps every response going just under the idle timeout, forever: only a deadline ends it.
    upstream = await listen((req, res) => {
      if (req.url?.startsWith('/orders/silent')) return; // never answers
      res.writeHead(200, { 'content-type': 'text/plain' });
      const timer = setInterval(() => res.write('.'), 100);
      res.on('close', () => clearInterval(timer));
    });
    const routes = (shippedConfigFile().routes as { name: string }[]).map((route) => (route.name === 'orders' ? { ...route, deadlineMs: 800 } : route));
    stack = await startStack({ overrides: { routes, proxy: { timeoutMs: 5000 } }, serviceUrls: { orders: upstream.url } });
    token = await login(stack.gateway.url);
  });
  afterAll(async () => {
    await stack.close();
    await upstream.close();
  });

  it('answers 504 when nothing came back within the deadline (shorter than the idle timeout)', async () => {
    const reply = await fetch(`${stack.gateway.url}/api/orders/silent`, { headers: { authorization: `Bearer ${token}` } });
    expect(reply.status).toBe(504);
    expect(await reply.json()).toMatchObject({ code: 'upstream_timeout' });
  });

  // The deadline covers the upload too; it came while the client still owed its body (a slow link, above the
  // minimum rate) and the answer, the log and the metrics blamed the service: 504 upstream_timeout.
  it('answers 408 when the deadline comes while the client is still sending its body', async () => {
    const { hostname, port } = new URL(stack.gateway.url);
    let timer: NodeJS.Timeout | undefined;
    const reply = await new Promise<{ status: number; connection?: string; code: string }>((resolve, reject) => {
      const request = http.request({ host: hostname, port: Number(port), path: '/api/orders/silent', method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'transfer-encoding': 'chunked' }, agent: false }, (response) => {
        clearInterval(timer);
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, connection: response.headers.connection, code: (JSON.parse(Buffer.concat(chunks).toString()) as { code: string }).code }));
      });
      request.on('error', reject);
      request.write('[');
      // 3.2 KB/s, far above any minimum rate, for longer than the 800 ms deadline.
      timer = setInterval(() => request.writable && request.write(' '.repeat(64)), 20);
    });
    clearInterval(timer);
    expect(reply).toEqual({ status: 408, connection: 'close', code: 'request_timeout' });
  });

  it('cuts a response that keeps streaming past the deadline', async () => {
    const reply = await fetch(`${stack.gateway.url}/api/orders/stream`, { headers: { authorization: `Bearer ${token}` } });
    expect(reply.status).toBe(200);
    await expect(reply.text()).rejects.toThrow();
  });
});

describe('client connections are bounded', () => {
  let gateway: RunningServer;

  beforeAll(async () => {
    const file = shippedConfigFile();
    const { logger } = memoryLogger('gateway');
    const config = parseConfig(file, { JWT_SECRET: TEST_JWT_SECRET });
    gateway = await runServer({ app: createGateway(config, { logger }), name: 'gateway', port: 0, host: '127.0.0.1', logger, maxConnections: 2 });
  });
  afterAll(() => gateway.close());

  /** Connects and resolves `true` once a /health answer arrived, `false` when the server closed the socket first. */
  function healthOnNewConnection(keep: net.Socket[]): Promise<boolean> {
    const { port } = new URL(gateway.url);
    return new Promise((resolve) => {
      const socket = net.connect(Number(port), '127.0.0.1', () => socket.write(`GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`));
      keep.push(socket);
      socket.once('data', () => resolve(true));
      socket.once('close', () => resolve(false));
      socket.on('error', () => undefined);
    });
  }

  it('closes connections beyond server.maxConnections and accepts again when one goes', async () => {
    const sockets: net.Socket[] = [];
    expect(await healthOnNewConnection(sockets)).toBe(true);
    expect(await healthOnNewConnection(sockets)).toBe(true);
    expect(await healthOnNewConnection(sockets)).toBe(false);
    sockets[0]!.destroy();
    // The server counts the closed connection out asynchronously: retry until a new one is served.
    let served = false;
    for (let attempt = 0; attempt < 50 && !served; attempt++) served = await healthOnNewConnection(sockets);
    expect(served).toBe(true);
    sockets.forEach((socket) => socket.destroy());
  });

  // Node's server keeps its side of a connection it ended open until the client closes too: a client that read the
  // 400 and never closed held its slot for good (FIN-WAIT-2 on the gateway's side), and these two filled the bound.
  it('frees the slots of connections it refused, though their clients never close them', async () => {
    const { port } = new URL(gateway.url);
    /** A connection refused 400 whose client keeps its side open; undefined when it was closed at accept (bound full). */
    const refusedAndLeftOpen = () =>
      new Promise<net.Socket | undefined>((resolve) => {
        const socket = net.connect({ port: Number(port), host: '127.0.0.1', allowHalfOpen: true }, () => socket.write('GARBAGE\r\n\r\n'));
        let answer = '';
        socket.on('data', (chunk: Buffer) => (answer += chunk.toString()));
        socket.on('error', () => undefined);
        // The 400 and the gateway's FIN came; this side stays open.
        socket.once('end', () => resolve(answer.startsWith('HTTP/1.1 400') ? socket : undefined));
        socket.once('close', () => resolve(undefined));
      });
    const sockets: net.Socket[] = [];
    // The last test's connections are counted out asynchronously: until then a new one may be closed at accept.
    for (let attempt = 0; attempt < 100 && sockets.length < 2; attempt++) {
      const socket = await refusedAndLeftOpen();
      if (socket) sockets.push(socket);
    }
    expect(sockets).toHaveLength(2);
    // Both slots are held until the gateway lets those connections go (a second after its answers): then one serves.
    let served = false;
    const until = Date.now() + 5000;
    while (!served && Date.now() < until) {
      served = await healthOnNewConnection(sockets);
      if (!served) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(served).toBe(true);
    sockets.forEach((socket) => socket.destroy());
  });
});

/**
 * A client that sends part of its body, fast enough for the minimum rate, then nothing: the silence is the client's.
 * Counted as the service's timeout, it ejected the instance; with one failure allowed here, the profile request after
 * it is answered 503 `upstream_unavailable` under that bug.
 */
function withUsersEjectedAfterOneFailure() {
  const services = shippedConfigFile().services as Record<string, Record<string, unknown>>;
  return { ...services, users: { ...services.users, ejectAfterFailures: 1 } };
}

describe('an upload its client stops sending is the client’s silence, not the service’s', () => {
  let stack: TestStack;
  let bob: string;

  beforeAll(async () => {
    stack = await startStack({
      overrides: {
        routes: routesWithOpenRegister(),
        proxy: { timeoutMs: 1000, requestBufferBytes: 0 },
        // The rate check stays out of it: the bytes sent are far above the rate for the whole grace period.
        server: { minBodyBytesPerSecond: 1, bodyGracePeriodMs: 60_000 },
        services: withUsersEjectedAfterOneFailure(),
      },
    });
    bob = await login(stack.gateway.url, 'bob@example.com', 'builder');
  });
  afterAll(() => stack.close());

  it.each([
    ['a declared length', { 'content-type': 'application/json', 'content-length': '4001' }],
    ['chunked', { 'content-type': 'application/json', 'transfer-encoding': 'chunked' }],
  ])('answers 408 for a body stalled mid-way (%s), and the service stays in rotation', async (_name, headers) => {
    const before = stack.users.requests.filter((request) => request.method === 'POST' && request.url === '/users').length;
    const reply = await stalledUpload(stack.gateway.url, '/api/auth/register', headers, 4001);
    // It reached the service: the exchange was under way when the client went silent.
    expect(stack.users.requests.filter((request) => request.method === 'POST' && request.url === '/users').length).toBe(before + 1);
    expect(reply.status).toBe(408);
    expect(reply.headers.connection).toBe('close');
    expect(JSON.parse(reply.text)).toMatchObject({ code: 'request_timeout', detail: 'No byte of the request body arrived for 1000 ms.', requestId: reply.headers[HEADER.requestId] });

    const profile = await fetch(`${stack.gateway.url}/api/users/2`, { headers: { authorization: `Bearer ${bob}` } });
    expect(profile.status).toBe(200);
  });
});
