import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { HEADER } from '../../otel/wire-names';
import { login, startStack, type TestStack } from '../helpers/stack';
import { runServer } from '../../otel/lifecycle';
import { createGateway } from '../../src/gateway';
import { listen, memoryLogger, refusedOrigin, type TestServer } from '../helpers/servers';
import { waitFor } from '../helpers/wait';

const PROXY_TIMEOUT_MS = 400;

/** A fake order-service whose behaviour each test picks by path. */
async function startFaultyUpstream(): Promise<TestServer & { arrived: string[]; received: { path: string; bytes: number; sha256: string }[]; closedEarly: string[] }> {
  /** Every request as soon as its head arrived, body or not. */
  const arrived: string[] = [];
  const received: { path: string; bytes: number; sha256: string }[] = [];
  const closedEarly: string[] = [];
  const server = await listen((req, res) => {
    const path = req.url ?? '';
    arrived.push(path);
    if (path.startsWith('/orders/hang')) {
      // Never answers; records the gateway giving up on the exchange.
      res.on('close', () => closedEarly.push(path));
    } else if (path.startsWith('/orders/slow')) {
      setTimeout(() => res.end('too late'), PROXY_TIMEOUT_MS * 10).unref();
    } else if (path.startsWith('/orders/reset-before-headers')) {
      req.socket.destroy();
    } else if (path.startsWith('/orders/die-mid-body')) {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': '1000000' });
      res.write(Buffer.alloc(1000));
      setTimeout(() => req.socket.destroy(), 50);
    } else if (path.startsWith('/orders/download')) {
      const size = Number(new URL(path, 'http://x').searchParams.get('bytes'));
      const chunk = randomBytes(64 * 1024);
      const hash = createHash('sha256');
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'x-expected-sha256': 'trailer' });
      let sent = 0;
      const pump = () => {
        while (sent < size) {
          const part = chunk.subarray(0, Math.min(chunk.length, size - sent));
          hash.update(part);
          sent += part.length;
          if (!res.write(part)) return void res.once('drain', pump);
        }
        received.push({ path, bytes: sent, sha256: hash.digest('hex') });
        res.end();
      };
      pump();
    } else if (path.startsWith('/orders/upload')) {
      const hash = createHash('sha256');
      let bytes = 0;
      // An upload that never completed: the gateway ended the exchange before its body did.
      req.on('close', () => {
        if (!req.complete) closedEarly.push(path);
      });
      req.on('data', (chunk: Buffer) => {
        // This process (client, gateway and this service in one) stalls past the timeout, as a loaded machine or a
        // long GC stalls it: its I/O waits while its timers come due.
        if (path.startsWith('/orders/upload-stalling') && bytes < 1024 * 1024 && bytes + chunk.length >= 1024 * 1024) stall(PROXY_TIMEOUT_MS + 300);
        bytes += chunk.length;
        hash.update(chunk);
      });
      req.on('end', () => {
        const sha256 = hash.digest('hex');
        received.push({ path, bytes, sha256 });
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ bytes, sha256 }));
      });
    } else {
      res.setHeader('content-type', 'application/json');
      res.end('{"ok":true}');
    }
  });
  return Object.assign(server, { arrived, received, closedEarly });
}

/** Blocks this process's event loop for `ms`. */
function stall(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

/** Polls until `condition` holds or `timeoutMs` passed; the caller asserts the condition afterwards. */
async function waitUntil(condition: () => boolean, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
}


describe('upstream faults', () => {
  let stack: TestStack;
  let upstream: Awaited<ReturnType<typeof startFaultyUpstream>>;
  let token: string;
  let refusedUrl: string;

  beforeAll(async () => {
    upstream = await startFaultyUpstream();
    refusedUrl = await refusedOrigin();
    stack = await startStack({
      serviceUrls: { orders: upstream.url, notifications: refusedUrl },
      env: { PROXY_TIMEOUT_MS: String(PROXY_TIMEOUT_MS) },
      overrides: {
        proxy: { timeoutMs: 10_000, maxSockets: 64, maxBodyBytes: 32 * 1024 * 1024 },
        // One fake instance plays every fault here; passive ejection (tested in load-balancing.test.ts)
        // would otherwise take it out of rotation after the third.
        services: { users: { url: 'http://placeholder' }, orders: { url: 'http://placeholder', ejectAfterFailures: 1000 }, notifications: { url: 'http://placeholder', ejectAfterFailures: 1000 } },
      },
    });
    token = await login(stack.gateway.url);
  });
  afterAll(async () => {
    await stack.close();
    await upstream.close();
  });

  const auth = () => ({ authorization: `Bearer ${token}` });

  async function expectProblem(response: Response, status: number, code: string): Promise<void> {
    expect(response.status).toBe(status);
    expect(response.headers.get('content-type')).toBe('application/problem+json');
    const body = (await response.json()) as Record<string, unknown>;
    expect(body).toMatchObject({ status, code, requestId: response.headers.get(HEADER.requestId) });
    expect(typeof body.detail).toBe('string');
  }

  it('answers 502 with the request id when the upstream refuses the connection', async () => {
    await expectProblem(await fetch(`${stack.gateway.url}/api/notifications`, { headers: auth() }), 502, 'upstream_refused');
  });

  it('answers 504 with the request id when the upstream is slow (PROXY_TIMEOUT_MS)', async () => {
    const started = Date.now();
    await expectProblem(await fetch(`${stack.gateway.url}/api/orders/slow`, { headers: auth() }), 504, 'upstream_timeout');
    // Generous bound: only proves the timeout, not the default 10 s, applied.
    expect(Date.now() - started).toBeLessThan(PROXY_TIMEOUT_MS * 8);
  });

  it('answers 502 when the upstream resets the connection before answering', async () => {
    await expectProblem(await fetch(`${stack.gateway.url}/api/orders/reset-before-headers`, { headers: auth() }), 502, 'upstream_reset');
  });

  it('closes the client connection promptly when the upstream dies mid-body', async () => {
    const { url } = stack.gateway;
    // The status is recorded, not asserted in the callback: a bare hang-up (no response at all) must fail.
    let status: number | undefined;
    const outcome = await new Promise<string>((resolve) => {
      const req = http.get(`${url}/api/orders/die-mid-body`, { headers: auth() }, (res) => {
        status = res.statusCode;
        res.on('data', () => undefined);
        res.on('end', () => resolve('ended'));
        res.on('error', (error) => resolve(`error:${(error as NodeJS.ErrnoException).code ?? error.message}`));
        res.on('aborted', () => resolve('aborted'));
      });
      req.on('error', (error) => resolve(`request-error:${error.message}`));
      req.setTimeout(5000, () => resolve('hung'));
    });
    expect(status).toBe(200);
    expect(outcome).not.toBe('hung');
    expect(outcome).not.toBe('ended');
    // The body was cut: the response (not the request before any answer) failed.
    expect(outcome).toMatch(/^(aborted|error:)/);
    // Recorded as the service's failure after a 200 was sent, not as a client that left (499).
    await waitUntil(() => stack.gatewayLogs.some((line) => line.message === 'request completed' && line.url === '/api/orders/die-mid-body'));
    expect(stack.gatewayLogs.find((line) => line.message === 'request completed' && line.url === '/api/orders/die-mid-body')).toMatchObject({ status: 200, error_code: 'upstream_reset', level: 'error' });
    // The gateway is still fine afterwards.
    expect((await fetch(`${stack.gateway.url}/api/orders/fine`, { headers: auth() })).status).toBe(200);
  });

  it('drops the upstream exchange when the client goes away first, and keeps serving', async () => {
    // A gateway of its own whose proxy timeout (60 s) cannot end the exchange within the 3 s this test waits:
    // only the client going away can.
    const patient = await startStack({
      serviceUrls: { orders: upstream.url },
      overrides: { proxy: { timeoutMs: 60_000 }, services: { users: { url: 'http://placeholder' }, orders: { url: 'http://placeholder', ejectAfterFailures: 1000 }, notifications: { url: 'http://placeholder' } } },
    });
    try {
      const path = `/orders/hang?client=${Date.now()}`;
      const req = http.get(`${patient.gateway.url}/api${path}`, { headers: auth() });
      req.on('error', () => undefined);
      // The client goes away only once the exchange with the upstream is open.
      await waitUntil(() => upstream.arrived.includes(path));
      expect(upstream.arrived).toContain(path);
      expect(upstream.closedEarly).not.toContain(path);
      req.destroy();
      await waitUntil(() => upstream.closedEarly.includes(path));
      expect(upstream.closedEarly).toContain(path);
      // A client that left is 499 (as nginx logs it), with no error of the gateway's or the service's.
      const logged = () => patient.gatewayLogs.find((line) => line.message === 'request completed' && line.url === `/api${path}`);
      await waitUntil(() => logged() !== undefined);
      expect(logged()).toMatchObject({ status: 499, error_code: null });
      expect((await fetch(`${patient.gateway.url}/api/orders/fine`, { headers: auth() })).status).toBe(200);
    } finally {
      await patient.close();
    }
  });

  it.each([
    ['disconnects mid-body (Content-Length)', 'Content-Length: 100000', 'x'.repeat(10), (socket: net.Socket) => socket.destroy()],
    ['half-closes mid-body (chunked)', 'Transfer-Encoding: chunked', '5\r\nhello\r\n', (socket: net.Socket) => socket.end()],
    ['sends a malformed chunk', 'Transfer-Encoding: chunked', '5\r\nhello\r\n', (socket: net.Socket) => socket.write('ZZ\r\n')],
  ] as const)('frees the upstream exchange of an upload whose client %s: the instance keeps its only slot', async (desc, framing, start, breakOff) => {
    // One slot per instance (no queue): an exchange left open would make every later request 503 upstream_busy.
    // Ejected after one failure: the client's broken upload must not count as the instance's (503 upstream_unavailable).
    const narrow = await startStack({
      serviceUrls: { orders: upstream.url },
      // Bodies stream from their first byte (none read ahead): the upload must be under way at the service when it breaks.
      overrides: { proxy: { timeoutMs: 60_000, deadlineMs: 120_000, maxSockets: 1, maxPendingRequests: 0, requestBufferBytes: 0 }, services: { users: { url: 'http://placeholder' }, orders: { url: 'http://placeholder', ejectAfterFailures: 1 }, notifications: { url: 'http://placeholder' } } },
    });
    // Served by runServer, as main.ts serves it: its clientError handler answers a broken body (400) through the
    // request's own response, which then counts as finished while the upstream exchange is still open.
    const { logger } = memoryLogger('gateway');
    const served = await runServer({ app: createGateway(narrow.config, { logger }), name: 'gateway', port: 0, host: '127.0.0.1', logger, drainTimeoutMs: 1000 });
    try {
      const path = `/orders/upload-broken?client=${Date.now()}-${desc.length}`;
      const socket = net.connect(Number(new URL(served.url).port), '127.0.0.1');
      socket.on('error', () => undefined);
      socket.on('data', () => undefined);
      // The start of a body: the gateway forwards the head with its first bytes.
      socket.write(`POST /api${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/octet-stream\r\n${framing}\r\n\r\n${start}`);
      await waitUntil(() => upstream.arrived.includes(path));
      expect(upstream.arrived).toContain(path);
      breakOff(socket);
      // The service sees its request end (it would otherwise wait for the body until its own timeout)...
      await waitUntil(() => upstream.closedEarly.includes(path));
      expect(upstream.closedEarly).toContain(path);
      // ...and the instance's one slot is free again, the instance still in rotation.
      expect((await fetch(`${served.url}/api/orders/fine`, { headers: auth() })).status).toBe(200);
      socket.destroy();
    } finally {
      await served.close();
      await narrow.close();
    }
  });

  it('streams a 20 MB upload to the upstream byte for byte', async () => {
    const body = randomBytes(20 * 1024 * 1024);
    const response = await fetch(`${stack.gateway.url}/api/orders/upload`, { method: 'POST', headers: { ...auth(), 'content-type': 'application/octet-stream' }, body });
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ bytes: body.length, sha256: createHash('sha256').update(body).digest('hex') });
  });

  it('streams a chunked 20 MB upload (no Content-Length) byte for byte', async () => {
    const chunks = Array.from({ length: 20 }, () => randomBytes(1024 * 1024));
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        const next = chunks.shift();
        if (next) controller.enqueue(next);
        else controller.close();
      },
    });
    const expected = createHash('sha256');
    // chunks is consumed by the stream; hash a copy first.
    const copy = chunks.map((chunk) => Buffer.from(chunk));
    copy.forEach((chunk) => expected.update(chunk));
    const response = await fetch(`${stack.gateway.url}/api/orders/upload`, { method: 'POST', headers: auth(), body: stream, duplex: 'half' } as RequestInit);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ bytes: 20 * 1024 * 1024, sha256: expected.digest('hex') });
  });

  it('takes a stall of its own process for no silence of the service (timers come due before the I/O that waited is read)', async () => {
    // Under load the gateway's idle timer fired as the process resumed, before it read what had arrived meanwhile: 504.
    const body = randomBytes(4 * 1024 * 1024);
    const response = await fetch(`${stack.gateway.url}/api/orders/upload-stalling`, { method: 'POST', headers: { ...auth(), 'content-type': 'application/octet-stream' }, body });
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ bytes: body.length, sha256: createHash('sha256').update(body).digest('hex') });
  });

  it('streams a 20 MB download from the upstream byte for byte', async () => {
    const size = 20 * 1024 * 1024;
    const response = await fetch(`${stack.gateway.url}/api/orders/download?bytes=${size}`, { headers: auth() });
    expect(response.status).toBe(200);
    const body = Buffer.from(await response.arrayBuffer());
    const sent = upstream.received.find((entry) => entry.path.startsWith('/orders/download'))!;
    expect(body.length).toBe(size);
    expect(createHash('sha256').update(body).digest('hex')).toBe(sent.sha256);
  });

  it('answers 413 for a declared body over proxy.maxBodyBytes without forwarding it', async () => {
    const before = upstream.received.length;
    const path = `/orders/upload?declared=${Date.now()}`;
    let req: http.ClientRequest | undefined;
    // Only 1 KiB of the declared 33 MiB is ever sent: a gateway that forwarded instead of answering would wait
    // for the rest forever, so no answer within 5 s is a failure, not a hang.
    const status = await new Promise<number | string>((resolve, reject) => {
      req = http.request(`${stack.gateway.url}/api${path}`, { method: 'POST', headers: { ...auth(), 'content-length': String(33 * 1024 * 1024) } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.setTimeout(5000, () => resolve('no answer within 5 s'));
      req.write(Buffer.alloc(1024));
    }).finally(() => req?.destroy());
    expect(status).toBe(413);
    // A request sent after the 413 has reached the upstream: a forwarded upload would have arrived before it.
    const marker = `/orders/fine?after=${Date.now()}`;
    expect((await fetch(`${stack.gateway.url}/api${marker}`, { headers: auth() })).status).toBe(200);
    expect(upstream.arrived).toContain(marker);
    expect(upstream.arrived).not.toContain(path);
    expect(upstream.received.length).toBe(before);
  });

  it('cuts a chunked body over proxy.maxBodyBytes with 413 before the upstream gets all of it', async () => {
    // The gateway answers 413 and closes the connection while the client is still sending, so the client sees
    // either the 413 or its own write failing (EPIPE/ECONNRESET) first; never a 2xx, never the whole body upstream.
    const { status, body } = await new Promise<{ status: number; body: string }>((resolve) => {
      const req = http.request(`${stack.gateway.url}/api/orders/upload`, { method: 'POST', headers: auth() }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      });
      req.on('error', (error: NodeJS.ErrnoException) => resolve({ status: 0, body: error.code ?? error.message }));
      let sent = 0;
      const write = () => {
        while (sent < 40 * 1024 * 1024) {
          sent += 1024 * 1024;
          if (!req.write(Buffer.alloc(1024 * 1024))) return void req.once('drain', write);
        }
        req.end();
      };
      write();
    });
    if (status === 0) expect(['EPIPE', 'ECONNRESET']).toContain(body);
    else {
      expect(status).toBe(413);
      expect(JSON.parse(body)).toMatchObject({ code: 'payload_too_large' });
    }
    expect(upstream.received.filter((entry) => entry.path.startsWith('/orders/upload') && entry.bytes > 32 * 1024 * 1024)).toHaveLength(0);
  });

  it('keeps upstream connections alive between requests', async () => {
    const sockets = new Set<net.Socket>();
    const onConnection = (socket: net.Socket) => sockets.add(socket);
    upstream.server.on('connection', onConnection);
    for (let i = 0; i < 5; i++) {
      await (await fetch(`${stack.gateway.url}/api/orders/fine`, { headers: auth() })).arrayBuffer();
    }
    upstream.server.off('connection', onConnection);
    expect(sockets.size).toBeLessThanOrEqual(1);
  });
});

describe('keep-alive races and connection queues (one instance, as the shipped config has)', () => {
  /** A stack whose orders route goes to `upstreamUrl`, with `proxy` settings on top, ejecting the instance after `ejectAfterFailures`. */
  /**
   * A loopback port that accepts no connection, as a dead host whose SYNs are dropped: a listening socket whose
   * backlog is full and never accepted (a python3 child; kill it after).
   */
  async function connectionBlackhole() {
    const port = await new Promise<number>((resolve) => {
      const probe = net.createServer().listen(0, '127.0.0.1', () => {
        const { port: free } = probe.address() as net.AddressInfo;
        probe.close(() => resolve(free));
      });
    });
    const script = `import socket, time\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1', ${port})); s.listen(0)\nfill = []\nfor i in range(3):\n    c = socket.socket(); c.setblocking(False)\n    try: c.connect(('127.0.0.1', ${port}))\n    except BlockingIOError: pass\n    fill.append(c)\ntime.sleep(0.3)\nprint('ready', flush=True)\ntime.sleep(120)\n`;
    const blackhole = spawn('python3', ['-c', script], { stdio: ['ignore', 'pipe', 'ignore'] });
    await new Promise((resolve) => blackhole.stdout!.once('data', resolve));
    return { port, blackhole };
  }

  const stackFor = (upstreamUrl: string, proxy: Record<string, unknown> = {}, ejectAfterFailures = 1000) =>
    startStack({
      serviceUrls: { orders: upstreamUrl },
      overrides: { proxy, services: { users: { url: 'http://placeholder' }, orders: { url: 'http://placeholder', ejectAfterFailures }, notifications: { url: 'http://placeholder' } } },
    });

  /**
   * A raw service: `onRequest` gets the socket at each read (the requests here are body-less, one read each) with
   * how many that connection had so far; returns its URL and a close that ends every connection.
   */
  async function rawService(onRequest: (socket: net.Socket, nth: number) => void) {
    const open = new Set<net.Socket>();
    const server = net.createServer((socket) => {
      open.add(socket);
      socket.once('close', () => open.delete(socket));
      socket.on('error', () => undefined);
      let reads = 0;
      socket.on('data', () => onRequest(socket, ++reads));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return {
      url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
      close: async () => {
        for (const socket of open) socket.destroy();
        await new Promise((resolve) => server.close(resolve));
      },
    };
  }

  it('counts one failure of the instance for a request retried on it, not one per attempt (one GET ejected the only instance)', async () => {
    let requests = 0;
    const resets = await rawService((socket) => {
      requests++;
      socket.resetAndDestroy();
    });
    const stack = await stackFor(resets.url, {}, 3);
    try {
      const token = await login(stack.gateway.url);
      const first = await fetch(`${stack.gateway.url}/api/orders/1`, { headers: { authorization: `Bearer ${token}` } });
      expect([first.status, ((await first.json()) as { code: string }).code]).toEqual([502, 'upstream_reset']);
      expect(requests).toBe(3);
      // One failure of three: the instance still gets the next request (three counted failures ejected it: 503).
      const second = await fetch(`${stack.gateway.url}/api/orders/2`, { headers: { authorization: `Bearer ${token}` } });
      expect(((await second.json()) as { code: string }).code).toBe('upstream_reset');
      expect(requests).toBe(6);
    } finally {
      await stack.close();
      await resets.close();
    }
  });

  it('holds retries to the route deadline: an attempt begun near it is cut there, and none begins after it', async () => {
    let requests = 0;
    // Each request is reset after 600 ms: the second attempt starts at ~600 ms, the 1000 ms deadline cuts it.
    const slowResets = await rawService((socket) => {
      requests++;
      setTimeout(() => socket.resetAndDestroy(), 600);
    });
    const stack = await stackFor(slowResets.url, { deadlineMs: 1000, timeoutMs: 5000 });
    try {
      const token = await login(stack.gateway.url);
      const response = await fetch(`${stack.gateway.url}/api/orders/1`, { method: 'DELETE', headers: { authorization: `Bearer ${token}` } });
      expect(response.status).toBe(504);
      expect(await response.json()).toMatchObject({ code: 'upstream_timeout', detail: expect.stringMatching(/did not finish within 1000 ms/) });
      // Each attempt used to get a deadline of its own: three attempts, 502 after ~1.8 s.
      expect(requests).toBe(2);
    } finally {
      await stack.close();
      await slowResets.close();
    }
  });

  it('retries a GET the service reset on a reused keep-alive connection, on another connection to the same instance', async () => {
    // The race made certain: each connection answers its first request (keep-alive, no Keep-Alive hint, as Go and
    // nginx answer) and is closed by the service when the next request arrives on it.
    let answered = 0;
    const closesOnReuse = await rawService((socket, nth) => {
      if (nth > 1) return void socket.destroy();
      answered++;
      socket.write('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}');
    });
    const stack = await stackFor(closesOnReuse.url);
    try {
      const token = await login(stack.gateway.url);
      const statuses: number[] = [];
      for (let i = 0; i < 6; i++) statuses.push((await fetch(`${stack.gateway.url}/api/orders/race-${i}`, { headers: { authorization: `Bearer ${token}` } })).status);
      // Every other request met a connection the service was closing: each was 502 upstream_reset.
      expect(statuses).toEqual(Array(6).fill(200));
      expect(answered).toBe(6);
      // A POST with a body is never sent twice: its reset stays a 502.
      const post = await fetch(`${stack.gateway.url}/api/orders`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: '{"items":[]}' });
      const again = await fetch(`${stack.gateway.url}/api/orders`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: '{"items":[]}' });
      expect([post.status, again.status].sort()).toEqual([200, 502]);
    } finally {
      await stack.close();
      await closesOnReuse.close();
    }
  });

  it.each([
    { desc: 'something that is not HTTP', answer: 'SSH-2.0-OpenSSH_9.2\r\n' },
    { desc: 'a header block over the limit', answer: `HTTP/1.1 200 OK\r\nX-Big: ${'b'.repeat(100 * 1024)}\r\nContent-Length: 2\r\n\r\n{}` },
  ])('answers a service that answers $desc with 502 upstream_bad_response (it read as a reset connection)', async ({ answer }) => {
    const open = new Set<net.Socket>();
    const speaksOtherwise = net.createServer((socket) => {
      open.add(socket);
      socket.on('error', () => undefined);
      socket.once('data', () => socket.write(answer));
    });
    await new Promise<void>((resolve) => speaksOtherwise.listen(0, '127.0.0.1', resolve));
    const stack = await stackFor(`http://127.0.0.1:${(speaksOtherwise.address() as net.AddressInfo).port}`);
    try {
      const token = await login(stack.gateway.url);
      const response = await fetch(`${stack.gateway.url}/api/orders/1`, { headers: { authorization: `Bearer ${token}` } });
      expect(response.status).toBe(502);
      expect(await response.json()).toMatchObject({ code: 'upstream_bad_response' });
    } finally {
      await stack.close();
      for (const socket of open) socket.destroy();
      await new Promise((resolve) => speaksOtherwise.close(resolve));
    }
  });

  it('counts an instance that accepts no connection (its SYNs dropped) as failing and ejects it, rather than answering busy for good', async () => {
    const { port, blackhole } = await connectionBlackhole();
    const good = await listen((_req, res) => res.end('{}'));
    const stack = await stackFor(`http://127.0.0.1:${port},${good.url}`, { timeoutMs: 500 }, 3);
    try {
      const token = await login(stack.gateway.url);
      const statuses: number[] = [];
      for (let i = 0; i < 10; i++) statuses.push((await fetch(`${stack.gateway.url}/api/orders/${i}`, { headers: { authorization: `Bearer ${token}` } })).status);
      // Every other request went to it and came back 503 upstream_busy, never counted: it was never ejected. Then each
      // that went to it waited for the connection and came back 504 (while it was not yet ejected): no connection was
      // made, so nothing was sent, and it goes on to the other instance.
      expect(statuses).toEqual(Array(10).fill(200));
    } finally {
      await stack.close();
      await good.close();
      blackhole.kill('SIGKILL');
    }
  });

  // A route whose timeoutMs is longer than undici's connect timeout (10 s): undici gave up first, and its
  // UND_ERR_CONNECT_TIMEOUT was read as a reset, retried twice on the one instance (30 s), then answered 502.
  it('answers 504 upstream_timeout when no connection is made within the connect timeout, under a longer route timeout', async () => {
    const { port, blackhole } = await connectionBlackhole();
    const stack = await stackFor(`http://127.0.0.1:${port}`, { timeoutMs: 15_000, deadlineMs: 60_000 });
    try {
      const token = await login(stack.gateway.url);
      const response = await fetch(`${stack.gateway.url}/api/orders/1`, { headers: { authorization: `Bearer ${token}` } });
      expect(response.status).toBe(504);
      expect(await response.json()).toMatchObject({ code: 'upstream_timeout', detail: expect.stringMatching(/accepted no connection within 10000 ms/) });
    } finally {
      await stack.close();
      blackhole.kill('SIGKILL');
    }
  }, 45_000);

  it('retries a GET an instance answered with bytes that are not HTTP on the other one, and ejects the broken one', async () => {
    const garbage = await rawService((socket) => socket.write('SSH-2.0-OpenSSH_9.2\r\n'));
    const good = await listen((_req, res) => res.end('{}'));
    const stack = await stackFor(`${garbage.url},${good.url}`, {}, 3);
    try {
      const token = await login(stack.gateway.url);
      const statuses: number[] = [];
      for (let i = 0; i < 20; i++) statuses.push((await fetch(`${stack.gateway.url}/api/orders/${i}`, { headers: { authorization: `Bearer ${token}` } })).status);
      // Taken for a response it could not forward, the broken instance was neither retried away from nor ejected: half were 502.
      expect(statuses).toEqual(Array(20).fill(200));
    } finally {
      await stack.close();
      await garbage.close();
      await good.close();
    }
  });

  // One endpoint's answer, not a broken instance. llhttp refuses each head after its status line; undici reports
  // Content-Length then Transfer-Encoding as the body's length mismatch. Taken for resets, each GET went out three
  // times and three of them ejected the instance: every route to the service was 503.
  it.each([
    { desc: 'a header block over the limit', fields: `X-Big: ${'b'.repeat(100 * 1024)}\r\nContent-Length: 2` },
    { desc: 'Content-Length, then Transfer-Encoding', fields: 'Content-Length: 2\r\nTransfer-Encoding: chunked' },
    { desc: 'Transfer-Encoding, then Content-Length', fields: 'Transfer-Encoding: chunked\r\nContent-Length: 2' },
    { desc: 'two Content-Lengths that disagree', fields: 'Content-Length: 2\r\nContent-Length: 3' },
    { desc: 'a Content-Length that is no number', fields: 'Content-Length: 2x' },
    { desc: 'a field name with a space in it', fields: 'Bad Name: x\r\nContent-Length: 2' },
  ])('keeps an instance whose one endpoint answers a head with $desc (502, neither retried nor counted)', async ({ fields }) => {
    let requests = 0;
    const malformed = await rawService((socket) => {
      requests++;
      socket.end(`HTTP/1.1 200 OK\r\n${fields}\r\n\r\n{}`);
    });
    const stack = await stackFor(malformed.url, {}, 3);
    try {
      const token = await login(stack.gateway.url);
      const codes: string[] = [];
      for (let i = 0; i < 4; i++) codes.push(((await (await fetch(`${stack.gateway.url}/api/orders/${i}`, { headers: { authorization: `Bearer ${token}` } })).json()) as { code: string }).code);
      // Ejected after three, the fourth was 503 upstream_unavailable; retried, the service saw 12 requests.
      expect(codes).toEqual(Array(4).fill('upstream_bad_response'));
      expect(requests).toBe(4);
    } finally {
      await stack.close();
      await malformed.close();
    }
  });

  // The pipe from the request stopped when undici dropped the body, and Node does not discard a body that was being
  // read: the rest sat unread, the connection served nothing more, and a timeout destroyed it.
  it('reads and drops the rest of a body its service answered before reading, and serves the next request on the connection', async () => {
    const early = await listen((_req, res) => void res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"early"}'));
    const stack = await stackFor(early.url);
    const socket = net.connect(Number(new URL(stack.gateway.url).port), '127.0.0.1');
    try {
      const token = await login(stack.gateway.url);
      const total = 768 * 1024;
      let received = '';
      socket.setEncoding('latin1').on('data', (chunk: string) => (received += chunk));
      const head = (method: string, path: string, extra: string) => `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${token}\r\n${extra}\r\n`;
      // More than the gateway reads before it asks the service (proxy.requestBufferBytes, 64 KiB): the rest streams.
      const first = 96 * 1024;
      socket.write(head('POST', '/api/orders', `Content-Type: application/json\r\nContent-Length: ${total}\r\n`) + ' '.repeat(first));
      await waitFor(() => received.includes('{"error":"early"}'), 'the service\'s early answer');
      expect(received).toMatch(/^HTTP\/1\.1 401 /);
      expect(received.toLowerCase()).not.toContain('connection: close');
      socket.write(' '.repeat(total - first) + head('GET', '/api/orders/1', ''));
      await waitFor(() => received.split('HTTP/1.1 401 ').length === 3, 'the answer to the next request on the connection', 5000);
    } finally {
      socket.destroy();
      await stack.close();
      await early.close();
    }
  });

  it('answers a request still waiting for a connection after the route timeout with 503 upstream_busy, not blaming the instance', async () => {
    // One connection, held by a response that keeps trickling (never idle): the next request can only queue.
    const trickling = await listen((req, res) => {
      if (!req.url?.endsWith('/long')) return void res.end('ok');
      res.writeHead(200, { 'content-type': 'text/plain' });
      const drip = setInterval(() => res.write('.'), 100);
      const stop = setTimeout(() => res.end(), 5000);
      res.on('close', () => {
        clearInterval(drip);
        clearTimeout(stop);
      });
      req.resume();
    });
    // Ejected after one failure: the busy wait must not count as the healthy instance's.
    const stack = await stackFor(trickling.url, { timeoutMs: 1000, deadlineMs: 30_000, maxSockets: 1, maxPendingRequests: 5 }, 1);
    try {
      const token = await login(stack.gateway.url);
      const holder = http.get(`${stack.gateway.url}/api/orders/long`, { headers: { authorization: `Bearer ${token}` } }, (response) => response.resume());
      holder.on('error', () => undefined);
      await new Promise((resolve) => holder.once('response', resolve));
      const queued = await fetch(`${stack.gateway.url}/api/orders/queued`, { headers: { authorization: `Bearer ${token}` } });
      // It used to wait for the connection (5 s here, each round of maxSockets another timeout behind a hung service).
      expect(queued.status).toBe(503);
      expect(queued.headers.get('retry-after')).not.toBeNull();
      expect(await queued.json()).toMatchObject({ code: 'upstream_busy', detail: expect.stringMatching(/^No connection to the orders service came free within 1000 ms/) });
      holder.destroy();
      // Not the instance's failure: it is still in rotation (ejected, it would answer 503 upstream_unavailable).
      const after = await fetch(`${stack.gateway.url}/api/orders/after`, { headers: { authorization: `Bearer ${token}` } });
      expect(after.status).toBe(200);
      await after.arrayBuffer();
    } finally {
      await stack.close();
      await trickling.close();
    }
  });
});
