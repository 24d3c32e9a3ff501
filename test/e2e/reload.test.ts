import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { ATTR, HEADER } from '../../otel/wire-names';
import { serviceSigningKey, verifyGatewaySignature } from '../../src/gateway-signature';
import { namedUpstream, requestOnNewConnection, startGatewayProcess, startLoad, type GatewayProcess } from '../helpers/gateway-process';
import { startOtlpReceiver, type OtlpReceiver } from '../helpers/otlp-receiver';
import { refusedOrigin, streamSixChunks } from '../helpers/servers';
import { signToken } from '../helpers/tokens';
import { waitFor } from '../helpers/wait';

/**
 * Configuration changes without a restart (src/config-reload.ts), on the built gateway as one process:
 * `POST /admin/reload` and SIGHUP re-read the file, and the new config serves new requests at once.
 */
// Each test starts real processes (a cluster: three), slow on a busy machine.
jest.setTimeout(120_000);

type Upstream = Awaited<ReturnType<typeof namedUpstream>>;

interface ConfigAnswer {
  version: string;
  loadedAt: string;
  pendingRestart: string[];
  workers: { id: number; version: string }[];
}

const FAST_EXPORT = { OTEL_BSP_SCHEDULE_DELAY: '100', OTEL_BLRP_SCHEDULE_DELAY: '100', OTEL_TRACES_SAMPLER: 'always_on', OTEL_METRICS_EXPORTER: 'none', OTEL_LOGS_EXPORTER: 'none' };

describe('config reload (one process)', () => {
  let alpha: Upstream;
  let beta: Upstream;
  let gamma: Upstream;
  let gateway: GatewayProcess | undefined;
  let receiver: OtlpReceiver | undefined;

  beforeAll(async () => {
    [alpha, beta, gamma] = await Promise.all([namedUpstream('alpha'), namedUpstream('beta'), namedUpstream('gamma', slowStream)]);
  });
  afterEach(async () => {
    if (gateway?.child.exitCode === null) gateway.child.kill('SIGKILL');
    gateway = undefined;
    await receiver?.close();
    receiver = undefined;
  });
  afterAll(() => Promise.all([alpha, beta, gamma].map((upstream) => upstream?.close())));

  /** `/gamma/stream` answers in six chunks over ~1.2 s. */
  function slowStream(req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse): boolean {
    if (!req.url?.endsWith('/stream')) return false;
    streamSixChunks(res);
    return true;
  }

  const route = (name: string, service: string, extra: Record<string, unknown> = {}) => ({ name, prefix: `/${name}`, service, upstreamPath: '', auth: 'public', ...extra });
  function config(changes: { services?: Record<string, string>; routes?: unknown[]; extra?: Record<string, unknown> } = {}) {
    const services = { users: alpha.url, alpha: alpha.url, gamma: gamma.url, beta: beta.url, ...changes.services };
    return {
      // The load below must never meet the default limit.
      rateLimit: { max: 1_000_000, windowMs: 60_000 },
      services: Object.fromEntries(Object.entries(services).map(([key, url]) => [key, { url }])),
      routes: changes.routes ?? [route('alpha', 'alpha'), route('gamma', 'gamma'), route('limited', 'alpha', { rateLimit: { max: 1000, windowMs: 60_000 } })],
      ...changes.extra,
    };
  }

  async function adminConfig(): Promise<ConfigAnswer> {
    return (await (await fetch(`${gateway!.adminUrl}/admin/config`)).json()) as ConfigAnswer;
  }

  async function reload(): Promise<{ status: number; body: Record<string, unknown> }> {
    const response = await fetch(`${gateway!.adminUrl}/admin/reload`, { method: 'POST' });
    return { status: response.status, body: (await response.json()) as Record<string, unknown> };
  }

  async function upstreamOf(path: string): Promise<string | number> {
    const answer = await requestOnNewConnection(`${gateway!.url}${path}`);
    return answer.status === 200 ? (JSON.parse(answer.body) as { upstream: string }).upstream : answer.status;
  }

  it('under continuous load adds a route, changes an upstream, tightens a limit and refuses a broken file, failing no request', async () => {
    gateway = await startGatewayProcess({ config: config() });
    const { version: first } = await adminConfig();
    expect(gateway.lines.find((line) => line.message === 'gateway listening')!.version).toBe(first);
    const load = startLoad(`${gateway.url}/alpha/ping`);
    try {
      // A route is added.
      expect(await upstreamOf('/beta/x')).toBe(404);
      gateway.writeConfig(config({ routes: [route('alpha', 'alpha'), route('gamma', 'gamma'), route('limited', 'alpha', { rateLimit: { max: 1000, windowMs: 60_000 } }), route('beta', 'beta')] }));
      const added = await reload();
      expect(added.status).toBe(200);
      expect(added.body).toMatchObject({ status: 'reloaded', workers: [{ id: 0, version: added.body.version }] });
      expect(added.body.version).not.toBe(first);
      expect(await upstreamOf('/beta/x')).toBe('beta');

      // An upstream changes: alpha's route now reaches the beta server.
      expect(await upstreamOf('/alpha/x')).toBe('alpha');
      const routes = [route('alpha', 'alpha'), route('gamma', 'gamma'), route('limited', 'alpha', { rateLimit: { max: 1000, windowMs: 60_000 } }), route('beta', 'beta')];
      gateway.writeConfig(config({ services: { alpha: beta.url }, routes }));
      expect((await reload()).status).toBe(200);
      expect(await upstreamOf('/alpha/x')).toBe('beta');

      // A limit is tightened: 1000 per minute becomes 2.
      for (let i = 0; i < 3; i++) expect(await upstreamOf('/limited/x')).toBe('beta');
      routes[2] = route('limited', 'alpha', { rateLimit: { max: 2, windowMs: 60_000 } });
      gateway.writeConfig(config({ services: { alpha: beta.url }, routes }));
      expect((await reload()).status).toBe(200);
      const limited = [];
      for (let i = 0; i < 4; i++) limited.push(await upstreamOf('/limited/x'));
      expect(limited).toEqual(['beta', 'beta', 429, 429]);

      // A broken file changes nothing, and says why once.
      const { version: running } = await adminConfig();
      const from = gateway.lines.length;
      gateway.writeConfig('{"services": {');
      const broken = await reload();
      expect(broken.status).toBe(422);
      expect(broken.body).toMatchObject({ code: 'config_invalid', detail: expect.stringContaining('not valid JSON') });
      const refused = await gateway.waitForLine((line) => line.message === 'config reload refused; the running config keeps serving', { from });
      expect(refused).toMatchObject({ reason: expect.stringContaining('not valid JSON'), version: running });
      // A file that parses but breaks a rule is refused the same way, naming the key.
      gateway.writeConfig(config({ services: { alpha: beta.url }, routes: [...routes, route('orphan', 'nowhere')] }));
      const invalid = await reload();
      expect(invalid.status).toBe(422);
      expect(invalid.body.detail).toMatch(/routes\.4\.service: names no entry of services/);
      expect((await adminConfig()).version).toBe(running);
      expect(await upstreamOf('/beta/x')).toBe('beta');
      expect(gateway.lines.slice(from).filter((line) => line.message === 'config reload refused; the running config keeps serving')).toHaveLength(2);
    } finally {
      const answers = await load.stop();
      // Every request of the load, before, during and after the reloads, was answered 200.
      expect(answers.filter((answer) => answer.status !== 200)).toEqual([]);
      expect(answers.length).toBeGreaterThan(10);
    }
  });

  it('lets a request in flight finish under the config it started with', async () => {
    gateway = await startGatewayProcess({ config: config() });
    // The response head is here; the body is still streaming from the old config's route.
    const response = await fetch(`${gateway.url}/gamma/stream`);
    const inFlight = response.text().then((body) => ({ status: response.status, body }));
    gateway.writeConfig(config({ routes: [route('alpha', 'alpha')] }));
    expect((await reload()).status).toBe(200);
    expect(await upstreamOf('/gamma/stream')).toBe(404);
    const finished = await inFlight;
    expect(finished.status).toBe(200);
    expect(finished.body.trim().split('\n')).toHaveLength(6);
  });

  it('finishes requests that started before a reload changing proxy.maxSockets on the old connections, ejecting no instance (they got 503 and the service was ejected)', async () => {
    // 1.5 s and not storable: requests coalesced behind the first cache miss go to the service themselves once it
    // answers, after the reload, on the connections of the build they started under.
    const slow = await namedUpstream('slow', (_req, res) => {
      setTimeout(() => res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end('{"upstream":"slow"}'), 1500);
      return true;
    });
    try {
      const routes = [route('cached', 'slow', { cache: { ttlSeconds: 60, scope: 'public' } }), route('direct', 'slow')];
      const withMaxSockets = (maxSockets: number) => config({ services: { slow: slow.url }, routes, extra: { proxy: { maxSockets } } });
      gateway = await startGatewayProcess({ config: withMaxSockets(256) });
      const first = upstreamOf('/cached/x');
      await new Promise((resolve) => setTimeout(resolve, 100));
      const waiting = Array.from({ length: 4 }, () => upstreamOf('/cached/x'));
      await new Promise((resolve) => setTimeout(resolve, 300));
      gateway.writeConfig(withMaxSockets(128));
      expect((await reload()).body.status).toBe('reloaded');
      expect(await Promise.all([first, ...waiting])).toEqual(['slow', 'slow', 'slow', 'slow', 'slow']);
      // The service was not blamed for the gateway's own closed connections, so the next config still reaches it.
      expect(await upstreamOf('/direct/y')).toBe('slow');
      expect(gateway.lines.filter((line) => JSON.stringify(line).includes('UND_ERR_CLOSED'))).toEqual([]);
    } finally {
      await slow.close();
    }
  });

  it('keeps the connections of unchanged upstreams and the counts of unchanged limits', async () => {
    gateway = await startGatewayProcess({ config: config({ routes: [route('gamma', 'gamma'), route('limited', 'alpha', { rateLimit: { max: 3, windowMs: 60_000 } })] }) });
    expect(await upstreamOf('/gamma/1')).toBe('gamma');
    expect(await upstreamOf('/limited/1')).toBe('alpha');
    expect(await upstreamOf('/limited/2')).toBe('alpha');
    const connections = gamma.connections();

    gateway.writeConfig(config({ routes: [route('gamma', 'gamma'), route('limited', 'alpha', { rateLimit: { max: 3, windowMs: 60_000 } }), route('beta', 'beta')] }));
    expect((await reload()).body.status).toBe('reloaded');
    expect(await upstreamOf('/gamma/2')).toBe('gamma');
    // The gateway's keep-alive connection to gamma was reused, not reopened by a new pool.
    expect(gamma.connections()).toBe(connections);
    // Two of three were used before the reload: one more, then the limit.
    expect([await upstreamOf('/limited/3'), await upstreamOf('/limited/4')]).toEqual(['alpha', 429]);
  });

  // /health's uptime was counted from the app's build, and a reload builds a new app: every reload looked like a restart.
  it("keeps the process's uptime in /health across a reload", async () => {
    gateway = await startGatewayProcess({ config: config() });
    const uptime = async (url: string) => ((await (await fetch(`${url}/health`)).json()) as { uptimeSeconds: number }).uptimeSeconds;
    await waitFor(async () => (await uptime(gateway!.url)) >= 2, 'an uptime of 2 s', 10_000);
    gateway.writeConfig(config({ routes: [route('alpha', 'alpha'), route('beta', 'beta')] }));
    expect((await reload()).body.status).toBe('reloaded');
    expect(await uptime(gateway.url)).toBeGreaterThanOrEqual(2);
    expect(await uptime(gateway.adminUrl!)).toBeGreaterThanOrEqual(2);
  });

  it('reloads on SIGHUP, names keys that need a restart and keeps their running values', async () => {
    gateway = await startGatewayProcess({ config: config() });
    const { version: first } = await adminConfig();
    const from = gateway.lines.length;
    gateway.writeConfig(config({ routes: [route('alpha', 'alpha'), route('beta', 'beta')], extra: { workers: 2 } }));
    gateway.child.kill('SIGHUP');
    const reloaded = await gateway.waitForLine((line) => line.message === 'config reloaded', { from });
    expect(reloaded).toMatchObject({ previousVersion: first, version: expect.stringMatching(/^[0-9a-f]{12}$/) });
    expect(await gateway.waitForLine((line) => String(line.message).startsWith('config keys changed that apply only after a restart'), { from })).toMatchObject({ keys: ['workers'] });
    const now = await adminConfig();
    expect(now).toMatchObject({ version: reloaded.version, pendingRestart: ['workers'], workers: [{ id: 0 }] });
    expect(await upstreamOf('/beta/x')).toBe('beta');
    // Still one process: no cluster was started by a reload.
    expect(gateway.lines.some((line) => line.message === 'gateway primary started')).toBe(false);
    gateway.child.kill('SIGTERM');
    expect(await gateway.exited()).toBe(0);
  });

  // The environment is overlaid on every read and never changes: a file edit of a key it sets never applies, and the
  // reload answered "unchanged" with nothing to say why the tightened limit did not.
  // Not the listeners' and services' addresses, which every deployment sets over the file (compose does): as at the
  // start, naming them at each reload hid the key the warning is for.
  it('names the file keys the environment overrides when a reload cannot apply them', async () => {
    const usersElsewhere = alpha.url.replace('127.0.0.1', 'localhost');
    gateway = await startGatewayProcess({ config: config(), env: { RATE_LIMIT_MAX: '1000000', TRUST_PROXY: 'false', USER_SERVICE_URL: usersElsewhere } });
    const from = gateway.lines.length;
    gateway.writeConfig({ ...config(), rateLimit: { max: 5, windowMs: 60_000 }, trustProxy: true });
    const answer = await reload();
    expect(answer).toEqual({ status: 200, body: expect.objectContaining({ status: 'unchanged' }) });
    expect((answer.body.shadowedByEnv as string[]).sort()).toEqual(['rateLimit.max (RATE_LIMIT_MAX)', 'trustProxy (TRUST_PROXY)']);
    expect(await gateway.waitForLine((line) => String(line.message).startsWith('config keys set in the environment override the file'), { from })).toMatchObject({ keys: expect.arrayContaining(['rateLimit.max (RATE_LIMIT_MAX)', 'trustProxy (TRUST_PROXY)']) });
    // A file value equal to the environment's is no conflict.
    gateway.writeConfig(config());
    expect((await reload()).body).toMatchObject({ status: 'unchanged', shadowedByEnv: [] });
  });

  // A fresh start is how Kubernetes applies an edited ConfigMap (the pods roll): a key the manifest's environment also
  // set changed nothing there, and only a reload said so.
  it('names the file keys the environment overrides at start, and none whose values agree', async () => {
    const shadowWarning = (line: { message?: unknown }) => String(line.message).startsWith('config keys set in the environment override the file');
    const listening = (line: { message?: unknown }) => line.message === 'gateway listening';
    // The proxy timeout agrees with the file's; a service's address differs, as every deployment's does.
    gateway = await startGatewayProcess({ config: { ...config(), rateLimit: { max: 5, windowMs: 60_000 }, proxy: { timeoutMs: 10_000 } }, env: { RATE_LIMIT_MAX: '1000000', PROXY_TIMEOUT_MS: '10000', USER_SERVICE_URL: gamma.url } });
    await gateway.waitForLine(listening);
    const warned = gateway.lines.filter(shadowWarning);
    expect(warned).toHaveLength(1);
    expect(warned[0]).toMatchObject({ level: 'warn', keys: ['rateLimit.max (RATE_LIMIT_MAX)'] });
    gateway.child.kill('SIGTERM');
    expect(await gateway.exited()).toBe(0);

    // Logged before `gateway listening`, so its absence there is final.
    gateway = await startGatewayProcess({ config: { ...config(), rateLimit: { max: 1_000_000, windowMs: 60_000 } }, env: { RATE_LIMIT_MAX: '1000000' } });
    await gateway.waitForLine(listening);
    expect(gateway.lines.some(shadowWarning)).toBe(false);
  });

  it('warns after a reload that opens what start-up warns of (trustProxy on with no trustedProxies): the reload said only "config reloaded"', async () => {
    gateway = await startGatewayProcess({ config: config() });
    const warning = (line: { message?: unknown }) => String(line.message).startsWith('trustProxy is on with no trustedProxies');
    expect(gateway.lines.some(warning)).toBe(false);
    const from = gateway.lines.length;
    gateway.writeConfig(config({ extra: { trustProxy: true } }));
    expect((await reload()).body.status).toBe('reloaded');
    expect(await gateway.waitForLine(warning, { from })).toMatchObject({ level: 'warn' });
  });

  it('takes a SIGHUP sent while it starts (waiting for Redis) as a reload once it serves, instead of ending with exit 129', async () => {
    // Nothing listens on port 1: start-up waits its 3 s for Redis, then serves under the store-down policy.
    gateway = await startGatewayProcess({
      config: config(),
      env: { REDIS_URL: 'redis://127.0.0.1:1' },
      async whileStarting(starting) {
        await starting.waitForLine((line) => line.message === 'rate-limit store unavailable');
        starting.writeConfig(config({ routes: [route('alpha', 'alpha'), route('beta', 'beta')] }));
        starting.child.kill('SIGHUP');
      },
    });
    await gateway.waitForLine((line) => line.message === 'config reloaded');
    expect(await upstreamOf('/beta/ping')).toBe('beta');
    expect(gateway.child.exitCode).toBeNull();
  });

  describe.each([
    { desc: 'one process', env: {} as Record<string, string> },
    { desc: 'two workers', env: { GATEWAY_WORKERS: '2' } },
  ])('a reload that changes only the keys in the file ($desc)', ({ env }) => {
    const OLD = { secret: 'old-jwt-secret-that-is-long-enough-0123', signingKey: 'old-signing-key-that-is-long-enough-0123' };
    const NEW = { secret: 'new-jwt-secret-that-is-long-enough-4567', signingKey: 'new-signing-key-that-is-long-enough-4567' };
    let keyed: http.Server;
    let keyedUrl: string;
    /** The key each request's signature verifies with (the route's service checks none itself). */
    const signedWith: (string | undefined)[] = [];
    beforeAll(async () => {
      keyed = http.createServer((req, res) => {
        // Signed for the route's service, or for user-service (the login's credential check, sent here too).
        const target = { audience: req.url === '/internal/credentials/verify' ? 'users' : 'keyed', method: req.method!, target: req.url! };
        signedWith.push([OLD, NEW].find((keys) => verifyGatewaySignature(serviceSigningKey(keys.signingKey, target.audience), target, (name) => req.headers[name]) === undefined)?.signingKey);
        // The login's credential check, for the test with a generated secret (tokens it makes cannot be signed here).
        if (req.url === '/internal/credentials/verify') return void res.setHeader('content-type', 'application/json').end(JSON.stringify({ id: '7', email: 'grace@example.com', role: 'user' }));
        res.end(JSON.stringify({ upstream: 'keyed', user: req.headers[HEADER.userId] }));
      });
      await new Promise<void>((resolve) => keyed.listen(0, '127.0.0.1', resolve));
      keyedUrl = `http://127.0.0.1:${(keyed.address() as { port: number }).port}`;
    });
    afterAll(() => new Promise<void>((resolve) => keyed.close(() => resolve())));

    const keyedConfig = (keys: typeof OLD) => config({ services: { keyed: keyedUrl }, routes: [{ name: 'me', prefix: '/me', service: 'keyed', upstreamPath: '' }], extra: { auth: { secret: keys.secret }, proxy: { signingKey: keys.signingKey } } });
    /** Statuses of requests on new connections (each may reach another worker) with a token signed with `secret`. */
    async function statusesWith(secret: string): Promise<number[]> {
      const authorization = `Bearer ${await signToken({ secret, subject: '7' })}`;
      const answers = await Promise.all(Array.from({ length: 6 }, () => requestOnNewConnection(`${gateway!.url}/me`, { headers: { authorization } })));
      return answers.map((answer) => answer.status);
    }

    it('applies them under the same version (they are left out of it): tokens of the old secret are refused, the new key signs (it answered "unchanged" and the leaked secret kept working)', async () => {
      gateway = await startGatewayProcess({ config: keyedConfig(OLD), env });
      const { version } = await adminConfig();
      expect(await statusesWith(OLD.secret)).toEqual(Array<number>(6).fill(200));
      signedWith.length = 0;
      gateway.writeConfig(keyedConfig(NEW));
      expect(await reload()).toMatchObject({ status: 200, body: { status: 'reloaded', version } });
      expect(await statusesWith(OLD.secret)).toEqual(Array<number>(6).fill(401));
      expect(await statusesWith(NEW.secret)).toEqual(Array<number>(6).fill(200));
      expect(signedWith).toEqual(Array<string>(6).fill(NEW.signingKey));
      // The same file again is no change.
      expect(await reload()).toMatchObject({ status: 200, body: { status: 'unchanged', version } });
    });

    // A secret configured to end a generated one's tokens (one leaked), then taken out of the file again: the reload
    // took back the generated secret of the start, and every token it had minted verified again.
    it('never takes back the secret generated at the start once a configured one replaced it: its tokens stay refused', async () => {
      const generatedConfig = (secret?: string) => config({ services: { keyed: keyedUrl, users: keyedUrl }, routes: [{ name: 'me', prefix: '/me', service: 'keyed', upstreamPath: '' }], extra: secret === undefined ? {} : { auth: { secret } } });
      gateway = await startGatewayProcess({ config: generatedConfig(), env });
      const login = await fetch(`${gateway.url}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'grace@example.com', password: 'whatever-it-is' }) });
      const { token } = (await login.json()) as { token: string };
      const statuses = async () => (await Promise.all(Array.from({ length: 6 }, () => requestOnNewConnection(`${gateway!.url}/me`, { headers: { authorization: `Bearer ${token}` } })))).map((answer) => answer.status);
      expect(await statuses()).toEqual(Array<number>(6).fill(200));
      gateway.writeConfig(generatedConfig(NEW.secret));
      expect(await reload()).toMatchObject({ status: 200, body: { status: 'reloaded' } });
      expect(await statuses()).toEqual(Array<number>(6).fill(401));
      gateway.writeConfig(generatedConfig());
      expect(await reload()).toMatchObject({ status: 200, body: { status: 'reloaded' } });
      expect(await statuses()).toEqual(Array<number>(6).fill(401));
      // A secret generated by that reload is kept by the next one, as the start's was (tokens it mints stay valid).
      const again = await fetch(`${gateway.url}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'grace@example.com', password: 'whatever-it-is' }) });
      const fresh = ((await again.json()) as { token: string }).token;
      expect(await reload()).toMatchObject({ status: 200, body: { status: 'unchanged' } });
      const freshStatuses = await Promise.all(Array.from({ length: 6 }, () => requestOnNewConnection(`${gateway!.url}/me`, { headers: { authorization: `Bearer ${fresh}` } })));
      expect(freshStatuses.map((answer) => answer.status)).toEqual(Array<number>(6).fill(200));
    });
  });

  it('answers "unchanged" for the same file, and refuses a reload from a browser page or by GET', async () => {
    gateway = await startGatewayProcess({ config: config() });
    const { version, loadedAt } = await adminConfig();
    expect(await reload()).toEqual({ status: 200, body: expect.objectContaining({ status: 'unchanged', version, loadedAt, pendingRestart: [] }) });
    const response = await fetch(`${gateway.adminUrl}/admin/reload`, { method: 'POST', headers: { origin: 'http://evil.example' } });
    expect(response.status).toBe(403);
    expect((await fetch(`${gateway.adminUrl}/admin/reload`)).status).toBe(405);
    // Only the internal listener has the endpoints.
    expect((await fetch(`${gateway.url}/admin/reload`, { method: 'POST' })).status).toBe(404);
  });

  // The version covered the config's JSON only: an edit of a .proto alone (an HTTP rule moved) was `unchanged`, and
  // the gateway went on mapping requests by the rules it loaded at start until a restart.
  it('reloads an edit of a gRPC route\'s .proto alone as a new version, and maps requests by the edited rules', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'reload-proto-'));
    const proto = path.join(dir, 'notifications.proto');
    const shipped = readFileSync(path.join(__dirname, '../../proto/notifications.proto'), 'utf8');
    writeFileSync(proto, shipped);
    const grpcRoute = { name: 'rpc', prefix: '/rpc', service: 'notifications', upstreamPath: '/v1/notifications', auth: 'public', methods: ['GET'], grpc: { proto, service: 'koagateway.notifications.v1.Notifications' } };
    const refused = await refusedOrigin();
    gateway = await startGatewayProcess({ config: { ...config({ routes: [route('alpha', 'alpha'), grpcRoute] }), services: { users: { url: alpha.url }, alpha: { url: alpha.url }, notifications: { url: alpha.url, grpcUrl: refused } } } });
    const { version } = await adminConfig();
    // Mapped to GetNotification, whose service is down: not the gateway's 404.
    expect((await requestOnNewConnection(`${gateway.url}/rpc/n-1`)).status).not.toBe(404);
    expect(shipped).toContain('get: "/v1/notifications/{id}"');
    writeFileSync(proto, shipped.replace('get: "/v1/notifications/{id}"', 'get: "/v1/notifications/by-id/{id}"'));
    const answer = await reload();
    expect(answer).toEqual({ status: 200, body: expect.objectContaining({ status: 'reloaded' }) });
    expect(answer.body.version).not.toBe(version);
    expect((await requestOnNewConnection(`${gateway.url}/rpc/n-1`)).status).toBe(404);
    expect((await requestOnNewConnection(`${gateway.url}/rpc/by-id/n-1`)).status).not.toBe(404);
  });

  it('marks each request span with the version of the config that served it', async () => {
    receiver = await startOtlpReceiver();
    gateway = await startGatewayProcess({ config: config(), telemetry: true, env: { ...FAST_EXPORT, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url } });
    const { version: first } = await adminConfig();
    await upstreamOf('/alpha/before');
    gateway.writeConfig(config({ routes: [route('alpha', 'alpha'), route('beta', 'beta')] }));
    const { body } = await reload();
    await upstreamOf('/alpha/after');
    const serverSpan = (path: string) => (received: { spans: readonly { kind: string; attributes: Record<string, unknown> }[] }) =>
      received.spans.find((span) => span.kind === 'SERVER' && span.attributes['url.path'] === path);
    const received = await receiver.waitFor((all) => serverSpan('/alpha/before')(all) !== undefined && serverSpan('/alpha/after')(all) !== undefined);
    expect(serverSpan('/alpha/before')(received)!.attributes[ATTR.configVersion]).toBe(first);
    expect(serverSpan('/alpha/after')(received)!.attributes[ATTR.configVersion]).toBe(body.version);
    expect(body.version).not.toBe(first);
  });
});
