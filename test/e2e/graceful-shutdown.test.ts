import { spawn } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { ATTR_HTTP_RESPONSE_STATUS_CODE } from '@opentelemetry/semantic-conventions';
import { runServer } from '../../otel/lifecycle';
import { ATTR, HEADER } from '../../otel/wire-names';
import { createGateway } from '../../src/gateway';
import { startInMemoryTracing, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { memoryLogger } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';
import { waitFor } from '../helpers/wait';
import { childEnvironment } from '../helpers/process-stack';
import { requestOnNewConnection, startGatewayProcess } from '../helpers/gateway-process';
import { listen, streamSixChunks, type TestServer } from '../helpers/servers';
import { signToken } from '../helpers/tokens';
import { TEST_JWT_SECRET } from '../helpers/test-config';

const root = path.join(__dirname, '../..');

/** The built gateway as a child (telemetry off, the test's JWT secret), with `env` on top; `detached` gives it a process group. */
function spawnGateway(env: Record<string, string>, detached = false) {
  return spawn(process.execPath, [path.join(root, 'dist/src/main.js')], {
    cwd: root,
    env: childEnvironment({ PORT: '0', JWT_SECRET: TEST_JWT_SECRET, OTEL_SDK_DISABLED: 'true', ...env }),
    stdio: ['ignore', 'pipe', 'pipe'],
    detached,
  });
}

/** Waits for a line on the child's stdout that parses as JSON and matches. */
function waitForLog(child: ReturnType<typeof spawn>, match: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let buffer = '';
    const timer = setTimeout(() => reject(new Error(`no matching log line; got:\n${buffer}`)), 15_000);
    child.stdout!.on('data', (chunk: Buffer) => {
      buffer += chunk.toString();
      for (const text of buffer.split('\n')) {
        try {
          const line = JSON.parse(text) as Record<string, unknown>;
          if (match(line)) {
            clearTimeout(timer);
            resolve(line);
          }
        } catch {
          // partial line
        }
      }
    });
  });
}

describe('graceful shutdown', () => {
  let upstream: TestServer;
  afterAll(() => upstream?.close());

  it('on SIGTERM finishes a streaming request in flight, refuses new connections, and exits 0', async () => {
    // An upstream that streams its answer over ~1.2 s.
    upstream = await listen((_req, res) => streamSixChunks(res));
    const gateway = spawnGateway({ ORDER_SERVICE_URL: upstream.url });
    try {
      const { url } = (await waitForLog(gateway, (line) => line.message === 'gateway listening')) as { url: string };
      const token = await signToken({ subject: '2', claims: { role: 'user', email: 'bob@example.com' } });
      // In flight: the response head is here and the body (six chunks over ~1.2 s) is still streaming.
      const response = await fetch(`${url}/api/orders/stream`, { headers: { authorization: `Bearer ${token}` } });
      const inFlight = response.text().then((body) => ({ status: response.status, body }));
      const exited = new Promise<number | null>((resolve) => gateway.once('exit', (code) => resolve(code)));
      // The gateway logs this line in the same turn in which it stops listening.
      const stopping = waitForLog(gateway, (line) => line.message === 'gateway stopping');
      gateway.kill('SIGTERM');
      await stopping;
      expect(gateway.exitCode).toBeNull();
      await expect(fetch(`${url}/health`)).rejects.toThrow();

      const finished = await inFlight;
      expect(finished.status).toBe(200);
      expect(finished.body.trim().split('\n')).toHaveLength(6);
      expect(await exited).toBe(0);
    } finally {
      if (gateway.exitCode === null) gateway.kill('SIGKILL');
    }
  });
});

describe('the response cache\'s background fetches', () => {
  it('on SIGTERM waits for a stale-while-revalidate fetch under way: the service answers it, it is logged, then the exit is 0', async () => {
    let fetches = 0;
    let backgroundAnswered = false;
    let backgroundCut = false;
    const service = await listen((_req, res) => {
      if (++fetches === 1) {
        res.writeHead(200, { 'cache-control': 'max-age=1, stale-while-revalidate=60', 'content-type': 'text/plain' });
        return void res.end('v1');
      }
      // The cache's own fetch of the stale copy: the service takes a second and a half to answer it.
      res.on('close', () => (backgroundCut ||= !res.writableFinished));
      setTimeout(() => {
        res.writeHead(200, { 'cache-control': 'max-age=60', 'content-type': 'text/plain' });
        res.end('v2', () => (backgroundAnswered = true));
      }, 1_500);
    });
    const gateway = await startGatewayProcess({
      config: {
        port: 0,
        rateLimit: { max: 1_000_000, windowMs: 60_000 },
        services: { users: { url: service.url }, items: { url: service.url } },
        routes: [{ name: 'items', prefix: '/items', service: 'items', upstreamPath: '/items', auth: 'public', cache: { ttlSeconds: 60, scope: 'public' } }],
      },
      env: { JWT_SECRET: TEST_JWT_SECRET },
    });
    try {
      expect((await requestOnNewConnection(`${gateway.url}/items/1`)).body).toBe('v1');
      await new Promise((resolve) => setTimeout(resolve, 1_200));
      const stale = await requestOnNewConnection(`${gateway.url}/items/1`);
      expect([stale.headers['x-cache'], stale.body]).toEqual(['STALE', 'v1']);
      await waitFor(() => fetches === 2);
      gateway.child.kill('SIGTERM');
      expect(await gateway.exited()).toBe(0);
      expect([backgroundAnswered, backgroundCut]).toEqual([true, false]);
      expect(gateway.lines.some((line) => line.message === 'cache background fetch completed' && line.status === 200)).toBe(true);
    } finally {
      if (gateway.child.exitCode === null) gateway.child.kill('SIGKILL');
      await service.close();
    }
  }, 20_000);
});

describe('while it starts', () => {
  // As PID 1 (a container) the signal was ignored and the gateway served on until SIGKILL; elsewhere it died by it.
  it('holds a SIGTERM that arrives while it waits for Redis, then stops cleanly once it serves, exit code 0', async () => {
    // Nothing listens on port 1: start-up waits its 3 s for Redis.
    const gateway = spawnGateway({ REDIS_URL: 'redis://127.0.0.1:1' });
    try {
      const exited = new Promise<number | null>((resolve) => gateway.once('exit', (code) => resolve(code)));
      await waitForLog(gateway, (line) => line.message === 'rate-limit store unavailable');
      const stopping = waitForLog(gateway, (line) => line.message === 'gateway stopping');
      gateway.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(await stopping).toMatchObject({ signal: 'SIGTERM' });
    } finally {
      if (gateway.exitCode === null) gateway.kill('SIGKILL');
    }
  });

  // Ctrl-C reaches the whole process group: the primary, and workers still waiting for Redis. They died by the
  // signal, and the primary, finding them gone uncleanly, exited 1 (npm start with GATEWAY_WORKERS, a supervisor).
  it('exits 0 on a SIGINT to the process group of a cluster whose workers are still starting', async () => {
    const gateway = spawnGateway({ GATEWAY_WORKERS: '2', REDIS_URL: 'redis://127.0.0.1:1' }, true);
    try {
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => gateway.once('exit', (code, signal) => resolve({ code, signal })));
      let waiting = 0;
      await waitForLog(gateway, (line) => line.message === 'rate-limit store unavailable' && ++waiting === 2);
      process.kill(-gateway.pid!, 'SIGINT');
      expect(await exited).toEqual({ code: 0, signal: null });
    } finally {
      if (gateway.exitCode === null) process.kill(-gateway.pid!, 'SIGKILL');
    }
  });
});

// Earlier still: the workers were forked a moment ago and are loading their modules or waiting for their config.
// They held no stop signal until their config came (they had no listener before), died by the Ctrl-C, and the
// primary took that for an unclean stop: exit 1.
describe('while its workers load', () => {
  it('exits 0 on a SIGINT to the process group as soon as the primary started', async () => {
    const gateway = spawnGateway({ GATEWAY_WORKERS: '2' }, true);
    try {
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => gateway.once('exit', (code, signal) => resolve({ code, signal })));
      await waitForLog(gateway, (line) => line.message === 'gateway primary started');
      process.kill(-gateway.pid!, 'SIGINT');
      expect(await exited).toEqual({ code: 0, signal: null });
    } finally {
      if (gateway.exitCode === null) process.kill(-gateway.pid!, 'SIGKILL');
    }
  });
});

describe('during the drain', () => {
  it('ignores a second SIGTERM and a SIGINT: the request in flight still completes and the exit code is 0 (the second signal killed the process at once)', async () => {
    // Answers after 1.5 s: both repeated signals arrive while it is in flight.
    let arrived = 0;
    const slow = await listen((_req, res) => {
      arrived++;
      setTimeout(() => res.writeHead(200, { 'content-type': 'application/json' }).end('[]'), 1500);
    });
    const gateway = spawnGateway({ ORDER_SERVICE_URL: slow.url });
    try {
      const { url } = (await waitForLog(gateway, (line) => line.message === 'gateway listening')) as { url: string };
      const token = await signToken({ subject: '2', claims: { role: 'user', email: 'bob@example.com' } });
      const inFlight = fetch(`${url}/api/orders`, { headers: { authorization: `Bearer ${token}` } }).then(async (response) => ({ status: response.status, body: await response.text() }));
      const exited = new Promise<number | null>((resolve) => gateway.once('exit', (code) => resolve(code)));
      await waitFor(() => arrived === 1, 'the request to reach the service');
      const stopping = waitForLog(gateway, (line) => line.message === 'gateway stopping');
      const ignored = waitForLog(gateway, (line) => line.message === 'gateway already stopping; SIGINT ignored');
      gateway.kill('SIGTERM');
      await stopping;
      gateway.kill('SIGTERM');
      gateway.kill('SIGINT');
      expect(await inFlight).toEqual({ status: 200, body: '[]' });
      expect(await exited).toBe(0);
      await ignored;
    } finally {
      if (gateway.exitCode === null) gateway.kill('SIGKILL');
      await slow.close();
    }
  });

  it('answers /ready on the internal listener with 503 stopping once the drain began (it said ready until the exit)', async () => {
    let arrived = 0;
    // Its readiness probe (/health) is answered at once; the request, after 1.5 s.
    const slow = await listen((req, res) => {
      if (req.url === '/health') return void res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
      arrived++;
      setTimeout(() => res.writeHead(200, { 'content-type': 'application/json' }).end('[]'), 1500);
    });
    const gateway = await startGatewayProcess({
      config: { services: { users: { url: slow.url }, slow: { url: slow.url } }, routes: [{ name: 'slow', prefix: '/slow', service: 'slow', upstreamPath: '', auth: 'public' }] },
    });
    try {
      const inFlight = requestOnNewConnection(`${gateway.url}/slow/orders`);
      await waitFor(() => arrived === 1, 'the request to reach the service');
      const from = gateway.lines.length;
      gateway.child.kill('SIGTERM');
      await gateway.waitForLine((line) => line.message === 'gateway stopping', { from });
      const ready = await fetch(`${gateway.adminUrl}/ready`);
      // Every 503 says when to come back (RFC 9110 10.2.3), this one too: a replacement may answer at this address by then.
      expect({ status: ready.status, cacheControl: ready.headers.get('cache-control'), retryAfter: ready.headers.get('retry-after'), body: await ready.json() }).toEqual({ status: 503, cacheControl: 'no-store', retryAfter: '1', body: { status: 'stopping' } });
      expect((await inFlight).status).toBe(200);
      expect(await gateway.exited()).toBe(0);
    } finally {
      if (gateway.child.exitCode === null) gateway.child.kill('SIGKILL');
      await slow.close();
    }
  });

  it('tells a keep-alive client whose answer is still coming to close its connection, so it does not reuse it', async () => {
    const arrived: string[] = [];
    // Answers after 300 ms: the request is in flight when the drain starts, and its answer comes within it.
    const slow = await listen((req, res) => {
      arrived.push(String(req.headers[HEADER.requestId]));
      setTimeout(() => res.writeHead(200, { 'content-type': 'application/json' }).end('{"id":"1"}'), 300);
    });
    const { logger } = memoryLogger('gateway');
    const config = testConfig({ users: slow.url, orders: slow.url, notifications: slow.url });
    const served = await runServer({ app: createGateway(config, { logger, metrics: false }), name: 'gateway', port: 0, host: '127.0.0.1', logger, drainTimeoutMs: 5000 });
    const agent = new http.Agent({ keepAlive: true });
    try {
      const token = await signToken({ subject: '2', claims: { role: 'user', email: 'bob@example.com' } });
      const answer = new Promise<{ status: number; connection: string | undefined }>((resolve, reject) => {
        http
          .get(`${served.url}/api/orders/1`, { agent, headers: { authorization: `Bearer ${token}`, [HEADER.requestId]: 'drain-keepalive' } }, (response) => {
            response.resume();
            response.on('end', () => resolve({ status: response.statusCode ?? 0, connection: response.headers.connection }));
          })
          .on('error', reject);
      });
      await waitFor(() => arrived.includes('drain-keepalive'), 'the request to reach the service');
      const closing = served.close();
      expect(await answer).toEqual({ status: 200, connection: 'close' });
      await closing;
    } finally {
      agent.destroy();
      await slow.close();
    }
  });
});

describe('past the drain bound', () => {
  /** What the telemetry flush would find of request `requestId`: its access line and its SERVER span. */
  interface AtFlush {
    line?: Record<string, unknown>;
    span?: ReturnType<InMemoryTracing['spans']>[number];
  }

  /** The gateway in front of `upstream` with a 300 ms drain bound; `atFlush()` is read when onShutdown runs. */
  async function serveWithDrainBound(upstream: TestServer, requestId: string) {
    const tracing = startInMemoryTracing();
    const { logger, lines } = memoryLogger('gateway');
    let seen: AtFlush | undefined;
    const config = testConfig({ users: upstream.url, orders: upstream.url, notifications: upstream.url });
    const served = await runServer({
      app: createGateway(config, { logger, tracer: tracing.tracer, metrics: false }),
      name: 'gateway',
      port: 0,
      host: '127.0.0.1',
      logger,
      drainTimeoutMs: 300,
      onShutdown: async () => {
        seen = {
          line: lines.find((each) => each.message === 'request completed' && each.request_id === requestId),
          span: tracing.spans().find((each) => each.kind === SpanKind.SERVER && each.attributes[ATTR.requestId] === requestId),
        };
      },
    });
    const token = await signToken({ subject: '2', claims: { role: 'user', email: 'bob@example.com' } });
    const request = () => fetch(`${served.url}/api/orders/1`, { headers: { authorization: `Bearer ${token}`, [HEADER.requestId]: requestId } });
    return { served, request, atFlush: () => seen, shutdownTracing: () => tracing.shutdown() };
  }

  it('answers a request still waiting for its service with 503 problem+json and its request id, logged and traced before the flush', async () => {
    const arrived: string[] = [];
    // A service that never answers: the request is still waiting when the drain bound passes.
    const silent = await listen((req) => void arrived.push(String(req.headers[HEADER.requestId])));
    const gateway = await serveWithDrainBound(silent, 'drain-1');
    try {
      const reply = gateway.request();
      await waitFor(() => arrived.includes('drain-1'), 'the request to reach the silent service');
      await gateway.served.close();
      const response = await reply;
      expect(response.status).toBe(503);
      expect(response.headers.get('retry-after')).toBe('1');
      expect(await response.json()).toMatchObject({ status: 503, code: 'shutting_down', requestId: 'drain-1' });
      // Logged and traced before the flush; the server answered it, not the pipeline, and both still say why.
      const { line, span } = gateway.atFlush() ?? {};
      expect([line?.status, line?.error_code]).toEqual([503, 'shutting_down']);
      expect(span && [span.attributes[ATTR.errorCode], span.status.code]).toEqual(['shutting_down', SpanStatusCode.ERROR]);
    } finally {
      await silent.close();
      await gateway.shutdownTracing();
    }
  });

  it('records a response still streaming at the drain bound as cut by the gateway (shutting_down), not as a client that left', async () => {
    // A service that sends its head and a first chunk, then nothing more.
    const stalled = await listen((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first chunk');
    });
    const gateway = await serveWithDrainBound(stalled, 'drain-stream-1');
    try {
      const response = await gateway.request();
      expect(response.status).toBe(200);
      const body = response.text().catch((error: unknown) => error);
      await gateway.served.close();
      // The client sees a broken body (fetch's `terminated`), not a complete one.
      expect(await body).toHaveProperty('name', 'TypeError');
      const { line, span } = gateway.atFlush() ?? {};
      expect([line?.status, line?.error_code, line?.level]).toEqual([200, 'shutting_down', 'error']);
      expect(span && [span.attributes[ATTR_HTTP_RESPONSE_STATUS_CODE], span.attributes[ATTR.errorCode], span.status.code]).toEqual([200, 'shutting_down', SpanStatusCode.ERROR]);
    } finally {
      await stalled.close();
      await gateway.shutdownTracing();
    }
  });
});
