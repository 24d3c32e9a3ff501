import { ConfigError, parseConfig, type GatewayConfig } from '../../src/config';
import { activeConfig, checkReload, configVersion, createLiveGateway, keepRestartOnly, KeptAcrossReloads, RESTART_ONLY_KEYS } from '../../src/config-reload';
import { RateLimitWindows } from '../../src/rate-limit-store';
import http from 'node:http';
import { listenAdmin, type ConfigControl } from '../../src/admin';
import { createGatewayApps } from '../../src/gateway';
import { listen, memoryLogger, type TestServer } from '../helpers/servers';
import { shippedConfigFile, TEST_JWT_SECRET, testConfig } from '../helpers/test-config';
import { waitFor } from '../helpers/wait';

const file = (changes: Record<string, unknown> = {}) => ({ ...shippedConfigFile(), ...changes });
const parse = (changes: Record<string, unknown> = {}, env: Record<string, string> = { JWT_SECRET: TEST_JWT_SECRET }) => parseConfig(file(changes), env);

describe('config version', () => {
  it('is 12 hex digits, the same for the same file and different when a route changes', () => {
    const version = configVersion(parse());
    expect(version).toMatch(/^[0-9a-f]{12}$/);
    expect(configVersion(parse())).toBe(version);
    const routes = shippedConfigFile().routes as { name: string; timeoutMs?: number }[];
    expect(configVersion(parse({ routes: routes.map((route, i) => (i === 0 ? { ...route, timeoutMs: 1234 } : route)) }))).not.toBe(version);
  });

  // The version is published (spans, logs, /admin/config) and the rest of a config is often public: a version over the
  // password let anyone test guesses of it offline.
  it('does not depend on the Redis URL\'s password, and does on the rest of the URL', () => {
    const withRedis = (url: string) => configVersion(parse({}, { JWT_SECRET: TEST_JWT_SECRET, REDIS_URL: url }));
    expect(withRedis('redis://:first-password@redis:6379')).toBe(withRedis('redis://:second-password@redis:6379'));
    expect(withRedis('redis://gateway:first-password@redis:6379')).toBe(withRedis('redis://gateway:second-password@redis:6379'));
    expect(withRedis('redis://gateway:first-password@redis:6379')).not.toBe(withRedis('redis://other:first-password@redis:6379'));
    expect(withRedis('redis://:first-password@redis:6379')).not.toBe(withRedis('redis://:first-password@redis-2:6379'));
  });

  it('does not depend on the JWT secret (a generated one differs per start; a configured one must stay secret)', () => {
    expect(configVersion(parseConfig(file(), {}))).toBe(configVersion(parseConfig(file(), {})));
    expect(configVersion(parse({}, { JWT_SECRET: 'first-jwt-secret-4c1d9e7a20b6f358' }))).toBe(configVersion(parse({}, { JWT_SECRET: 'other-jwt-secret-b83f02e6d9a17c45' })));
  });

  // A header rule's value is often an upstream's credential: with the rest of the file known, an outside review found
  // a six-digit one from the version in 3.5 s.
  it("does not depend on the values header rules set or add, and does on the headers' names", () => {
    const withRule = (headers: Record<string, unknown>) => {
      const routes = (shippedConfigFile().routes as Record<string, unknown>[]).map((route, i) => (i === 0 ? { ...route, headers } : route));
      return configVersion(parse({ routes }));
    };
    const version = withRule({ request: { set: { 'X-Upstream-Key': 'pin-398445' }, add: { 'X-Tag': 'a' } }, response: { set: { 'X-Served-By': 'one' } } });
    expect(withRule({ request: { set: { 'X-Upstream-Key': 'pin-000001' }, add: { 'X-Tag': 'b' } }, response: { set: { 'X-Served-By': 'two' } } })).toBe(version);
    expect(withRule({ request: { set: { 'X-Other-Key': 'pin-398445' }, add: { 'X-Tag': 'a' } }, response: { set: { 'X-Served-By': 'one' } } })).not.toBe(version);
    expect(withRule({ request: { set: { 'X-Upstream-Key': 'pin-398445' }, add: { 'X-Tag': 'a' }, remove: ['cookie'] }, response: { set: { 'X-Served-By': 'one' } } })).not.toBe(version);
    expect(withRule({ request: { add: { 'X-Upstream-Key': 'pin-398445', 'X-Tag': 'a' } }, response: { set: { 'X-Served-By': 'one' } } })).not.toBe(version);
  });
});

describe('workers setting', () => {
  it.each([
    { desc: 'absent: one process', env: {} as Record<string, string>, workers: 1 },
    { desc: 'a number', env: { GATEWAY_WORKERS: '4' }, workers: 4 },
    { desc: 'auto', env: { GATEWAY_WORKERS: 'auto' }, workers: 'auto' },
  ])('accepts $desc', ({ env, workers }) => {
    expect(parse({}, { JWT_SECRET: TEST_JWT_SECRET, ...env }).workers).toBe(workers);
  });

  it.each([
    { desc: 'zero', value: '0' },
    { desc: 'more than 64', value: '65' },
    { desc: 'a word other than auto', value: 'many' },
    { desc: 'a fraction', value: '1.5' },
    { desc: 'a negative number', value: '-2' },
  ])('refuses $desc with one line naming GATEWAY_WORKERS', ({ value }) => {
    expect(() => parse({}, { JWT_SECRET: TEST_JWT_SECRET, GATEWAY_WORKERS: value })).toThrow(/^config: GATEWAY_WORKERS \(workers\): must be an integer from 1 to 64 or "auto"/);
  });
});

describe('keepRestartOnly', () => {
  it('keeps the running values of keys a reload cannot apply and names them', () => {
    const running = parse();
    const next = parse({ port: 4000, workers: 3, server: { headersTimeoutMs: 1234 }, admin: { port: 9100 }, rateLimit: { max: 5, windowMs: 1000 } });
    const { config, pendingRestart } = keepRestartOnly(running, next);
    expect(pendingRestart.sort()).toEqual(['admin', 'port', 'server', 'workers']);
    expect(config).toMatchObject({ port: running.port, workers: running.workers, server: running.server, admin: running.admin });
    // What can change live does.
    expect(config.rateLimit).toMatchObject({ max: 5, windowMs: 1000 });
    expect(Object.isFrozen(config.server)).toBe(true);
  });

  it('names nothing and returns the new config itself when only live keys changed', () => {
    const next = parse({ rateLimit: { max: 5, windowMs: 1000 } });
    expect(keepRestartOnly(parse(), next)).toEqual({ config: next, pendingRestart: [] });
  });

  // The windows a reload keeps, the primary's ledger and the workers' lease tables keep the bound they were made with:
  // applied, the reload said `reloaded` with nothing pending while the old bound stayed.
  it('keeps the running bound of the memory windows and names it', () => {
    const running = parse();
    const next = parse({ rateLimit: { max: 5, windowMs: 1000, maxTrackedClients: 10 } });
    const { config, pendingRestart } = keepRestartOnly(running, next);
    expect(pendingRestart).toEqual(['rateLimit.maxTrackedClients']);
    expect(config.rateLimit).toMatchObject({ max: 5, windowMs: 1000, maxTrackedClients: running.rateLimit.maxTrackedClients });
  });

  it('covers the listeners, the processes and the Redis connection', () => {
    expect(RESTART_ONLY_KEYS).toEqual(expect.arrayContaining(['port', 'host', 'workers', 'admin', 'metrics', 'rateLimit.redisUrl']));
  });
});

describe('checkReload', () => {
  const running = activeConfig(parse());

  it('refuses a config the schema refuses, with one log line saying why', () => {
    const { logger, lines } = memoryLogger('gateway');
    const check = checkReload(running, () => parse({ routes: [] }), logger);
    expect(check).toEqual({ ok: false, reason: expect.stringMatching(/^config: routes: /) });
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 'warn', message: 'config reload refused; the running config keeps serving', version: running.version });
  });

  it.each([
    { desc: 'a Redis URL of another scheme', env: { REDIS_URL: 'http://gateway:hunter2-redis-password@redis.internal:6379' } },
    { desc: 'a Redis URL with a password only', env: { REDIS_URL: 'redis//:hunter2-redis-password@redis:6379' } },
    { desc: 'a service URL with credentials and a path', env: { USER_SERVICE_URL: 'ftp://svc:hunter2-redis-password@users/x' } },
    // Pasted from `openssl rand -base64` without encoding: its `/`, `+` and `#` make the URL unparseable.
    { desc: 'a Redis URL whose password holds a slash and a hash', env: { REDIS_URL: 'redis://:hunter2/redis+password#x@redis:6379' } },
    { desc: 'a Redis URL with the password in the query', env: { REDIS_URL: 'rediss//redis:6379?db=0&password=hunter2-redis-password' } },
  ])('never puts the password of a refused URL ($desc) in the log line or the reason', ({ env }) => {
    const { logger, lines } = memoryLogger('gateway');
    const check = checkReload(running, () => parseConfig(shippedConfigFile(), { JWT_SECRET: TEST_JWT_SECRET, ...env }), logger);
    expect(check.ok).toBe(false);
    expect(JSON.stringify([check, lines])).not.toContain('hunter2');
    expect(lines).toHaveLength(1);
  });

  // Each half passed alone: the file without `tls` may write Strict-Transport-Security, and the running `tls.hsts`
  // was kept for the restart; applied together, a route's `max-age=0` replaced the gateway's policy on HTTPS answers.
  it('refuses a file whose rules break a rule with the running values of the restart-only keys, naming both', () => {
    const tls = { certFile: 'cert.pem', keyFile: 'key.pem', hsts: { maxAgeSeconds: 600 } };
    const withHsts = activeConfig(parse({ tls }));
    const routes = (shippedConfigFile().routes as Record<string, unknown>[]).map((route, index) =>
      index === 1 ? { ...route, headers: { response: { set: { 'Strict-Transport-Security': 'max-age=0' } } } } : route,
    );
    const { logger, lines } = memoryLogger('gateway');
    const check = checkReload(withHsts, () => parse({ routes }), logger);
    expect(check).toEqual({ ok: false, reason: expect.stringMatching(/^config: routes\.1\.headers\.response: may not write Strict-Transport-Security: .* \(with the running tls, which apply only after a restart\)$/) });
    expect(lines).toEqual([expect.objectContaining({ level: 'warn', message: 'config reload refused; the running config keeps serving' })]);
    // The same file is taken where the running config has no tls to keep.
    expect(checkReload(running, () => parse({ routes }), logger)).toMatchObject({ ok: true, changed: true });
  });

  it('keeps serving on other failures than a bad config too, logged as an error rather than a refusal', () => {
    const { logger, lines } = memoryLogger('gateway');
    expect(checkReload(running, () => { throw new TypeError('bug'); }, logger)).toEqual({ ok: false, reason: 'config reload failed: bug' });
    expect(lines).toEqual([expect.objectContaining({ level: 'error', message: 'config reload failed; the running config keeps serving' })]);
    expect(checkReload(running, () => { throw new ConfigError('config: x: bad'); }, logger)).toEqual({ ok: false, reason: 'config: x: bad' });
  });

  it('reports an unchanged config as unchanged, and leaves "reloaded" to the caller once the new version serves', () => {
    const { logger, lines } = memoryLogger('gateway');
    expect(checkReload(running, () => parse(), logger)).toMatchObject({ ok: true, changed: false, next: { version: running.version } });
    expect(lines).toEqual([expect.objectContaining({ message: 'config reload: no change', version: running.version })]);
    const changed = checkReload(running, (): GatewayConfig => parse({ rateLimit: { max: 5, windowMs: 1000 } }), logger);
    expect(changed).toMatchObject({ ok: true, changed: true, next: { version: expect.not.stringMatching(running.version) } });
    expect(lines).toHaveLength(1);
  });

  it.each([
    { desc: 'the JWT secret', from: { JWT_SECRET: TEST_JWT_SECRET }, to: { JWT_SECRET: 'another-jwt-secret-that-is-long-enough-0123' } },
    { desc: 'the signing key', from: { JWT_SECRET: TEST_JWT_SECRET, GATEWAY_SIGNING_KEY: 'a'.repeat(20) + 'signing-key-0123' }, to: { JWT_SECRET: TEST_JWT_SECRET, GATEWAY_SIGNING_KEY: 'b'.repeat(20) + 'signing-key-4567' } },
    { desc: 'a configured JWT secret for none (a generated one)', from: { JWT_SECRET: TEST_JWT_SECRET }, to: {} },
  ] as { desc: string; from: Record<string, string>; to: Record<string, string> }[])('takes a change of $desc alone as a change, under the same version or not (it was "unchanged", and never applied)', ({ from, to }) => {
    const { logger } = memoryLogger('gateway');
    const before = activeConfig(parse({}, from));
    const check = checkReload(before, () => parse({}, to), logger);
    expect(check).toMatchObject({ ok: true, changed: true });
  });

  it("takes a change of a header rule's value alone as a change, under the same version", () => {
    const { logger } = memoryLogger('gateway');
    const withKey = (key: string) => ({ routes: (shippedConfigFile().routes as Record<string, unknown>[]).map((route, i) => (i === 0 ? { ...route, headers: { request: { set: { 'X-Upstream-Key': key } } } } : route)) });
    const before = activeConfig(parse(withKey('first-upstream-key')));
    expect(checkReload(before, () => parse(withKey('first-upstream-key')), logger)).toMatchObject({ ok: true, changed: false });
    const check = checkReload(before, () => parse(withKey('second-upstream-key')), logger);
    expect(check).toMatchObject({ ok: true, changed: true, next: { version: before.version } });
  });

  it('keeps a generated secret across reloads that configure none, even after a start with a configured one (each read made up another, and every reload then ended every token)', () => {
    const { logger } = memoryLogger('gateway');
    // Started with a configured secret, then the file and environment stop configuring one: the reader has no
    // generated secret of the start to reuse, so each read makes up a new one.
    const first = checkReload(activeConfig(parse()), () => parseConfig(file(), {}), logger);
    expect(first).toMatchObject({ ok: true, changed: true });
    const generated = (first as { next: { config: GatewayConfig } }).next;
    const again = checkReload(generated as ReturnType<typeof activeConfig>, () => parseConfig(file(), {}), logger);
    expect(again).toMatchObject({ ok: true, changed: false });
    expect((again as { next: { config: GatewayConfig } }).next.config.auth.secret).toBe(generated.config.auth.secret);
  });

  it('names restart-only keys that changed in one line, and keeps them out of the version', () => {
    const { logger, lines } = memoryLogger('gateway');
    const check = checkReload(running, () => parse({ workers: 4 }), logger);
    expect(check).toMatchObject({ ok: true, changed: false, next: { version: running.version, pendingRestart: ['workers'] } });
    expect(lines[0]).toMatchObject({ level: 'warn', message: 'config keys changed that apply only after a restart; running values kept', keys: ['workers'] });
  });
});

describe('RateLimitWindows', () => {
  it('gives an unchanged policy its windows back after a sweep, and drops policies no build asked for', () => {
    const windows = new RateLimitWindows();
    const first = windows.for('api|5|60000', 10);
    first.set('api:client', { reset: Date.now() / 1000 + 60, remaining: 5, total: 5 });
    windows.sweep();
    expect(windows.for('api|5|60000', 10)).toBe(first);
    windows.sweep();
    windows.sweep();
    expect(windows.for('api|5|60000', 10)).not.toBe(first);
  });

  it('keeps two limiters of one build with the same policy apart, the same way in every build', () => {
    const windows = new RateLimitWindows();
    const [a, b] = [windows.for('default|100|60000', 10), windows.for('default|100|60000', 10)];
    expect(a).not.toBe(b);
    windows.sweep();
    const [againA, againB] = [windows.for('default|100|60000', 10), windows.for('default|100|60000', 10)];
    expect(againA).toBe(a);
    expect(againB).toBe(b);
  });
});

describe('upstream connections replaced by a reload (proxy.maxSockets changed)', () => {
  let upstream: TestServer;
  beforeAll(async () => {
    upstream = await listen((_req, res) => res.end('{}'));
  });
  afterAll(() => upstream.close());

  const config = (maxSockets: number) =>
    testConfig({ users: upstream.url, orders: upstream.url, notifications: upstream.url }, {
      proxy: { maxSockets },
      services: { users: { url: upstream.url, ejectAfterFailures: 1 }, orders: { url: upstream.url }, notifications: { url: upstream.url } },
      routes: [{ name: 'open', prefix: '/open', service: 'users', upstreamPath: '', auth: 'public' }],
    });

  /** The old build's and the new build's apps on one KeptAcrossReloads, the new one with other `maxSockets`. */
  async function reloaded() {
    const { logger } = memoryLogger('gateway');
    const kept = new KeptAcrossReloads();
    const old = await listen(createGatewayApps(config(256), { logger, metrics: false, kept }).gateway.callback());
    const current = await listen(createGatewayApps(config(128), { logger, metrics: false, kept }).gateway.callback());
    return { kept, old, current, close: () => Promise.all([old.close(), current.close()]) };
  }

  /** Asks the old build until its replaced connections refuse it (a 503), at most `withinMs`. */
  async function refusedOn(url: string, withinMs: number): Promise<Response> {
    const deadline = Date.now() + withinMs;
    for (;;) {
      const answer = await fetch(`${url}/open/1`);
      if (answer.status !== 200 || Date.now() > deadline) return answer;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  it('keeps them open while the old build has requests, and closes them once it has none', async () => {
    const { kept, old, current, close } = await reloaded();
    try {
      let drain!: () => void;
      kept.retireReplaced(new Promise((resolve) => (drain = resolve)), 60_000);
      // Not drained: a request of the old build still finishes on them, however long it waited to dispatch.
      expect((await fetch(`${old.url}/open/1`)).status).toBe(200);
      drain();
      expect((await refusedOn(old.url, 5_000)).status).toBe(503);
      expect((await fetch(`${current.url}/open/1`)).status).toBe(200);
    } finally {
      await close();
    }
  });

  it('closes them after the bound when the old build never drains, and counts a request refused on them against no instance (it ejected a healthy one)', async () => {
    const { kept, old, current, close } = await reloaded();
    try {
      kept.retireReplaced(new Promise(() => {}), 20);
      const refused = await refusedOn(old.url, 5_000);
      expect(refused.status).toBe(503);
      expect(await refused.json()).toMatchObject({ code: 'upstream_unavailable', detail: expect.stringContaining('config reload') });
      expect(kept.pools.get('users')!.pool.health()).toEqual([expect.objectContaining({ state: 'healthy', consecutiveFailures: 0 })]);
      expect((await fetch(`${current.url}/open/1`)).status).toBe(200);
    } finally {
      await close();
    }
  });
});

// Counted per build, a reload's new build started at 0 exchanges on the one Agent the builds share (maxSockets
// unchanged): its request queued behind the old build's unknowingly, met its timeout as a connection never made (504,
// the instance blamed: one failure ejects here) where the old build answered 503 upstream_busy and blamed nothing.
describe('a reload whose build fails', () => {
  // The build updates the pool caches as it goes; failing after that (a proto file missing) it left them holding a pool
  // no build ran, and the next reload made a fresh pool where the running one, with its ejections, should have stayed.
  it('leaves the kept upstream pools as they were, so the running pools carry over to the next reload', () => {
    const { logger } = memoryLogger('gateway');
    const origin = 'http://127.0.0.1:9';
    const config = (users: Record<string, unknown>, routes: unknown[] = [], more: Record<string, unknown> = { gone: { url: origin } }) =>
      testConfig({ users: origin, orders: origin, notifications: origin }, {
        services: { users: { url: origin, ...users }, orders: { url: origin }, notifications: { url: origin }, ...more },
        routes: [{ name: 'open', prefix: '/open', service: 'users', upstreamPath: '', auth: 'public' }, ...routes],
      });
    let kept!: KeptAcrossReloads;
    const live = createLiveGateway(activeConfig(config({})), (active, given) => {
      kept = given;
      return createGatewayApps(active.config, { logger, metrics: false, kept: given, configVersion: active.version });
    }, logger);
    const running = { users: kept.pools.get('users')!.pool, gone: kept.pools.get('gone')!.pool };
    // `users` changed and `gone` removed: the build replaced the one's pool and deleted the other's before it failed.
    const unbuildable = config({ ejectMs: 1234 }, [{ name: 'rpc', prefix: '/rpc', service: 'users', upstreamPath: '', auth: 'public', methods: ['GET'], grpc: { proto: 'proto/missing.proto', service: 'x.v1.X' } }], {});
    expect(live.apply(activeConfig(unbuildable))).toMatch(/proto\/missing\.proto/);
    expect({ users: kept.pools.get('users')?.pool, gone: kept.pools.get('gone')?.pool }).toEqual(running);
    expect(kept.pools.get('users')!.pool).toBe(running.users);
  });
});

// A cluster's reload one worker built and another refused is rolled back: the primary sends the running config again,
// and the worker that built the new one rebuilt the old one against pool caches holding the new settings' pools: fresh
// pools, the running ones' ejections gone.
describe('a reload back to the version the running one replaced', () => {
  it('takes up that version\'s own upstream pools again (their ejections), and the replacing version\'s after it', () => {
    const { logger } = memoryLogger('gateway');
    const origin = 'http://127.0.0.1:9';
    const config = (users: Record<string, unknown>) =>
      testConfig({ users: origin, orders: origin, notifications: origin }, {
        services: { users: { url: origin, ...users }, orders: { url: origin }, notifications: { url: origin } },
        routes: [{ name: 'open', prefix: '/open', service: 'users', upstreamPath: '', auth: 'public' }],
      });
    let kept!: KeptAcrossReloads;
    const first = activeConfig(config({}));
    const second = activeConfig(config({ ejectMs: 4321 }));
    const live = createLiveGateway(first, (active, given) => {
      kept = given;
      return createGatewayApps(active.config, { logger, metrics: false, kept: given, configVersion: active.version });
    }, logger);
    const usersPool = () => kept.pools.get('users')!.pool;
    const firstPool = usersPool();
    const orders = kept.pools.get('orders')!.pool;
    expect(live.apply(second)).toBeUndefined();
    const secondPool = usersPool();
    expect(secondPool).not.toBe(firstPool);
    expect(live.apply(activeConfig(config({})))).toBeUndefined();
    expect(usersPool()).toBe(firstPool);
    expect(live.apply(activeConfig(config({ ejectMs: 4321 })))).toBeUndefined();
    expect(usersPool()).toBe(secondPool);
    // Another version altogether: a pool of its own.
    expect(live.apply(activeConfig(config({ ejectMs: 999 })))).toBeUndefined();
    expect([firstPool, secondPool]).not.toContain(usersPool());
    expect(kept.pools.get('orders')!.pool).toBe(orders);
  });
});

describe('response cache across a reload (memory store)', () => {
  // A write still under way on the old build when the new one (with an empty store of its own) began serving
  // dropped the old build's copies only: the new build stored the service's answer from before the write and
  // served it as a hit until it expired (RFC 9111 4.4).
  it("drops the new build's copy when a write the old build forwarded succeeds", async () => {
    let version = 1;
    let commit!: () => void;
    let writeArrived!: () => void;
    const arrived = new Promise<void>((resolve) => (writeArrived = resolve));
    const upstream = await listen((req, res) => {
      if (req.method === 'PUT') {
        writeArrived();
        commit = () => {
          version++;
          res.end('{}');
        };
        return;
      }
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ version }));
    });
    const config = testConfig({ users: upstream.url, orders: upstream.url, notifications: upstream.url }, {
      routes: [{ name: 'items', prefix: '/items', service: 'users', upstreamPath: '', auth: 'public', cache: { ttlSeconds: 300, scope: 'public' } }],
    });
    const { logger } = memoryLogger('gateway');
    const kept = new KeptAcrossReloads();
    const old = await listen(createGatewayApps(config, { logger, metrics: false, kept }).gateway.callback());
    try {
      const write = fetch(`${old.url}/items/1`, { method: 'PUT', body: '{}', headers: { 'content-type': 'application/json' } });
      await arrived;
      const current = await listen(createGatewayApps(config, { logger, metrics: false, kept }).gateway.callback());
      try {
        const read = async () => {
          const answer = await fetch(`${current.url}/items/1`);
          return { version: ((await answer.json()) as { version: number }).version, cache: answer.headers.get('x-cache') };
        };
        expect(await read()).toEqual({ version: 1, cache: 'MISS' });
        expect(await read()).toEqual({ version: 1, cache: 'HIT' });
        commit();
        expect((await write).status).toBe(200);
        expect(await read()).toEqual({ version: 2, cache: 'MISS' });
      } finally {
        await current.close();
      }
    } finally {
      await old.close();
      await upstream.close();
    }
  });
});

describe('exchanges in flight across a reload that keeps the connections', () => {
  it("counts the old build's exchanges on the shared connections: a new build's request finds none free (503 busy), blaming no instance", async () => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let slowArrived = false;
    const upstream = await listen(async (req, res) => {
      if (req.url?.startsWith('/slow')) {
        slowArrived = true;
        await held;
      }
      res.end('{}');
    });
    const config = testConfig({ users: upstream.url, orders: upstream.url, notifications: upstream.url }, {
      proxy: { maxSockets: 1, maxPendingRequests: 0, timeoutMs: 1000 },
      services: { users: { url: upstream.url, ejectAfterFailures: 1 }, orders: { url: upstream.url }, notifications: { url: upstream.url } },
      routes: [
        { name: 'open', prefix: '/open', service: 'users', upstreamPath: '', auth: 'public' },
        // A long answer the route waits for: it holds the one connection past the other route's timeout.
        { name: 'long', prefix: '/long', service: 'users', upstreamPath: '', auth: 'public', timeoutMs: 30_000 },
      ],
    });
    const { logger } = memoryLogger('gateway');
    const kept = new KeptAcrossReloads();
    const old = await listen(createGatewayApps(config, { logger, metrics: false, kept }).gateway.callback());
    const current = await listen(createGatewayApps(config, { logger, metrics: false, kept }).gateway.callback());
    try {
      // The old build's exchange holds the one connection.
      const slow = fetch(`${old.url}/long/slow`);
      await waitFor(() => slowArrived, 'the long answer to hold the connection');
      const refused = await fetch(`${current.url}/open/1`);
      expect(refused.status).toBe(503);
      expect(await refused.json()).toMatchObject({ code: 'upstream_busy' });
      expect(kept.pools.get('users')!.pool.health()).toEqual([expect.objectContaining({ state: 'healthy', consecutiveFailures: 0 })]);
      release();
      expect((await slow).status).toBe(200);
      expect((await fetch(`${current.url}/open/1`)).status).toBe(200);
    } finally {
      release();
      await old.close();
      await current.close();
      await upstream.close();
    }
  });
});

describe('the internal listener against DNS rebinding', () => {
  // The admin app on its real listener: the host check is the listener's (listenInternal), before the app.
  let admin: { url: string; close(): Promise<void> };
  let reloads = 0;
  const control: ConfigControl = {
    status: async () => ({ version: 'abcdef012345', loadedAt: new Date(0).toISOString(), pendingRestart: [], servedBy: { worker: 0, pid: process.pid }, workers: [] }),
    reload: async () => {
      reloads++;
      return { ok: true, status: 'unchanged', version: 'abcdef012345', loadedAt: new Date(0).toISOString(), pendingRestart: [], shadowedByEnv: [], workers: [] };
    },
  };
  beforeAll(async () => {
    const config = testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' });
    const { admin: app } = createGatewayApps(config, { logger: memoryLogger('gateway').logger, metrics: false, control });
    admin = await listenAdmin(app, { port: 0, host: '127.0.0.1', timeouts: { headersMs: 5_000, requestMs: 5_000, keepAliveMs: 1_000 } });
  });
  afterAll(() => admin.close());

  /** A request with the Host a browser would send (fetch cannot set Host). */
  const request = (method: string, path: string, host: string) =>
    new Promise<number>((resolve, reject) => {
      const sent = http.request(`${admin.url}${path}`, { method, headers: { host } }, (response) => {
        response.resume();
        resolve(response.statusCode!);
      });
      sent.on('error', reject).end();
    });

  it.each([
    { desc: 'a rebound name', host: 'attacker.example:9000' },
    { desc: 'a rebound name without a port', host: 'attacker.example' },
    { desc: 'a name under localhost spelled as a suffix', host: 'localhost.attacker.example' },
    { desc: 'a decimal-looking name', host: '127.0.0.1.attacker.example' },
  ])('refuses $desc in Host (421) on every endpoint, reloading nothing', async ({ host }) => {
    for (const [method, path] of [['GET', '/admin/config'], ['GET', '/ready'], ['POST', '/admin/reload']] as const) {
      expect(await request(method, path, host)).toBe(421);
    }
    expect(reloads).toBe(0);
  });

  // Live state of this process: without it, a 200 is heuristically cacheable by anything between operator and listener.
  it('answers /admin/config and /admin/reload no-store', async () => {
    for (const [method, path] of [['GET', '/admin/config'], ['POST', '/admin/reload']] as const) {
      const answer = await fetch(`${admin.url}${path}`, { method });
      expect(answer.status).toBe(200);
      expect(answer.headers.get('cache-control')).toBe('no-store');
    }
  });

  it.each([
    { desc: 'an IPv4 address and port', host: '127.0.0.1:9000' },
    { desc: 'an IPv6 address in brackets', host: '[::1]:9000' },
    { desc: 'localhost (kubectl port-forward)', host: 'localhost:9000' },
    { desc: 'a pod address without a port', host: '10.1.2.3' },
  ])('answers operators using $desc', async ({ host }) => {
    expect(await request('GET', '/admin/config', host)).toBe(200);
    expect(await request('POST', '/admin/reload', host)).toBe(200);
  });
});
