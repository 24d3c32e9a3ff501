import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { METRIC, METRIC_LABEL } from '../../otel/wire-names';
import { startGatewayProcess, type GatewayProcess } from '../helpers/gateway-process';
import { scrape, scrapeWhen, valueOf, type Exposition } from '../helpers/openmetrics';
import { childEnvironment } from '../helpers/process-stack';
import { shippedConfigFile } from '../helpers/test-config';

/**
 * Configurations the gateway would run wrongly, or not at all past start-up, on the built gateway as a user runs it:
 * each one stops start-up (exit 1) with one line naming the key, and a reload (SIGHUP) of it is refused while the
 * running config keeps serving. Each row was accepted before the fix its description names.
 */
const root = path.join(__dirname, '../..');
jest.setTimeout(60_000);

type Config = Record<string, any>;

/** The shipped config with `change` applied, as the text of a file (or that text itself, for cases JSON.stringify cannot write). */
function shippedWith(change: (config: Config) => void): string {
  const config = shippedConfigFile() as Config;
  change(config);
  return JSON.stringify(config, null, 2);
}

interface Refusal {
  desc: string;
  /** The config file's text. */
  file: () => string;
  env?: Record<string, string>;
  /** The one line start-up prints. */
  line: RegExp;
}

const REFUSALS: Refusal[] = [
  {
    desc: 'a route with auth given twice, the last one public (JSON.parse kept the last: the route was served without a token)',
    file: () => shippedWith(() => undefined).replace('"name": "orders",', '"name": "orders",\n      "auth": "required",\n      "auth": "public",'),
    line: /^gateway: config: routes\.3\.auth: is given twice in .*gateway\.config\.json/,
  },
  {
    desc: 'a cors.exposeHeaders entry with CR LF in it (every cross-origin request was a 500)',
    file: () => shippedWith((config) => (config.cors = { origins: ['https://app.example.com'], exposeHeaders: ['x-request-id', 'x-a\r\nx-b'] })),
    line: /^gateway: config: cors\.exposeHeaders\.1: must be a header name .*\(got "x-a\\r\\nx-b"\)$/,
  },
  {
    desc: "a route's cors.headers entry with LF in it (every preflight to it was a 500)",
    file: () => shippedWith((config) => (config.routes[3].cors = { origins: ['https://app.example.com'], headers: ['authorization\nx-b'] })),
    line: /^gateway: config: routes\.3\.cors\.headers\.0: must be a header name/,
  },
  {
    desc: 'a trustedProxies range of every IPv4 client in IPv4-mapped form (a client reaching the gateway directly named its own address)',
    file: () => shippedWith((config) => Object.assign(config, { trustProxy: true, trustedProxies: ['::ffff:0:0/96'] })),
    line: /^gateway: config: trustedProxies\.0: must not be broader than .*IPv4-mapped.* \(got "::ffff:0:0\/96"\)$/,
  },
  {
    desc: 'a service on port 0 (every request to it was a 502)',
    file: () => shippedWith((config) => (config.services.orders.url = ['http://127.0.0.1:4002', 'http://127.0.0.1:0'])),
    line: /^gateway: config: services\.orders\.url\.1: must name a port other than 0: no service listens there \(got "http:\/\/127\.0\.0\.1:0"\)$/,
  },
  {
    desc: 'a JWKS URL with credentials (fetch refused it: every provider token was 503)',
    file: () => shippedWith((config) => (config.auth.jwks = { url: 'https://client:secret@idp.example.com/jwks.json', issuer: 'idp', audience: 'api' })),
    line: /^gateway: config: auth\.jwks\.url: must not carry credentials/,
  },
  {
    desc: 'a CORS origin with an upper-case host (no browser sends it: every cross-origin request was 403)',
    file: () => shippedWith((config) => (config.cors = { origins: ['https://App.example.com'] })),
    line: /^gateway: config: cors\.origins\.0: must be written as browsers send Origin.* \(got "https:\/\/App\.example\.com"\)$/,
  },
  {
    desc: "a route's CORS origin with the scheme's default port",
    file: () => shippedWith((config) => (config.routes[3].cors = { origins: ['https://app.example.com:443'] })),
    line: /^gateway: config: routes\.3\.cors\.origins\.0: must be written as browsers send Origin/,
  },
  {
    desc: 'a route prefix with a segment ending in "." (every request to it was 400 bad_path)',
    file: () => shippedWith((config) => config.routes.push({ name: 'v1', prefix: '/api/v1./items', service: 'orders', upstreamPath: '/orders' })),
    line: /^gateway: config: routes\.6\.prefix: must not have a segment ending in "\."/,
  },
  {
    desc: 'a REDIS_URL whose database is no number (the gateway listened, then died on SELECT NaN)',
    file: () => shippedWith(() => undefined),
    env: { REDIS_URL: 'redis://127.0.0.1:6379/ratelimit' },
    line: /^gateway: config: REDIS_URL \(rateLimit\.redisUrl\): must name its database by number, if at all .*\(got "redis:\/\/127\.0\.0\.1:6379\/ratelimit"\)$/,
  },
  {
    desc: 'a rateLimit.redisUrl whose db parameter is no number (the same SELECT NaN)',
    file: () => shippedWith((config) => (config.rateLimit.redisUrl = 'redis://127.0.0.1:6379?db=cache')),
    line: /^gateway: config: rateLimit\.redisUrl: must name its database by number/,
  },
];

function startOnce(file: string, env: Record<string, string> = {}) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gateway-refusal-'));
  const configFile = path.join(dir, 'gateway.config.json');
  writeFileSync(configFile, file);
  return spawnSync(process.execPath, [path.join(root, 'dist/src/main.js')], {
    cwd: root,
    env: childEnvironment({ PORT: '0', NODE_ENV: 'test', OTEL_SDK_DISABLED: 'true', GATEWAY_CONFIG: configFile, ...env }),
    encoding: 'utf8',
    timeout: 15_000,
  });
}

// Node's words alone named neither the key nor, for a directory, the file.
describe('a tls file the gateway cannot read', () => {
  it.each([
    { desc: 'a certFile that is a directory', tls: { certFile: os.tmpdir(), keyFile: 'key.pem' }, line: /^gateway: failed to start: tls\.certFile: cannot read \/.* \(EISDIR\)$/ },
    { desc: 'a keyFile that is missing', tls: { certFile: 'package.json', keyFile: 'no-such-key.pem' }, line: /^gateway: failed to start: tls\.keyFile: cannot read \/.*no-such-key\.pem \(ENOENT\)$/ },
    { desc: 'a caFile that is missing', tls: { certFile: 'package.json', keyFile: 'package.json', caFile: 'no-such-ca.pem' }, line: /^gateway: failed to start: tls\.caFile: cannot read \/.*no-such-ca\.pem \(ENOENT\)$/ },
  ])('stops start-up with one line naming the key: $desc', ({ tls, line }) => {
    const result = startOnce(shippedWith((config) => (config.tls = tls)));
    expect({ status: result.status, lines: result.stderr.trim().split('\n') }).toEqual({ status: 1, lines: [expect.stringMatching(line)] });
  });
});

describe('a config the gateway would run wrongly', () => {
  it.each(REFUSALS)('stops start-up with one line naming the key: $desc', ({ file, env, line }) => {
    const result = startOnce(file(), env);
    expect({ status: result.status, lines: result.stderr.trim().split('\n') }).toEqual({ status: 1, lines: [expect.stringMatching(line)] });
  });

  describe('on reload (SIGHUP)', () => {
    let gateway: GatewayProcess | undefined;
    afterEach(() => {
      if (gateway?.child.exitCode === null) gateway.child.kill('SIGKILL');
      gateway = undefined;
    });

    it.each(REFUSALS.filter((refusal) => refusal.env === undefined))('is refused, and the running config keeps serving: $desc', async ({ file, line }) => {
      gateway = await startGatewayProcess({ config: shippedConfigFile() });
      const running = (await (await fetch(`${gateway.adminUrl}/admin/config`)).json()) as { version: string };
      const from = gateway.lines.length;
      gateway.writeConfig(file());
      gateway.child.kill('SIGHUP');
      const refused = await gateway.waitForLine((entry) => entry.message === 'config reload refused; the running config keeps serving', { from });
      // The reason is the start-up line without its `gateway: ` prefix.
      expect(`gateway: ${String(refused.reason)}`).toMatch(line);
      expect(((await (await fetch(`${gateway.adminUrl}/admin/config`)).json()) as { version: string }).version).toBe(running.version);
      // The shipped route table still serves: the orders route still wants a token.
      expect((await fetch(`${gateway.url}/api/orders`)).status).toBe(401);
    });

    // A SIGHUP has no one to answer: a refused one was a log line only, which no alert watched.
    it.each<{ desc: string; env: Record<string, string> }>([
      { desc: 'one process', env: {} },
      { desc: 'a cluster, counted once by its primary', env: { GATEWAY_WORKERS: '2' } },
    ])('is counted, and gateway_config_last_reload_successful is 0 until a reload applies ($desc)', async ({ env }) => {
      gateway = await startGatewayProcess({ config: shippedConfigFile(), env: { METRICS_PORT: '0', ...env } });
      const metricsUrl = String((await gateway.waitForLine((entry) => entry.message === 'metrics listener started')).url);
      const state = (exposition: Exposition) => ({
        success: valueOf(exposition, METRIC.configReloads, { [METRIC_LABEL.configReloadResult]: 'success' }),
        failure: valueOf(exposition, METRIC.configReloads, { [METRIC_LABEL.configReloadResult]: 'failure' }),
        lastSuccessful: valueOf(exposition, METRIC.configLastReloadSuccessful, {}),
      });
      expect(state(await scrape(metricsUrl))).toEqual({ success: 0, failure: 0, lastSuccessful: 1 });

      let from = gateway.lines.length;
      gateway.writeConfig(REFUSALS[0]!.file());
      gateway.child.kill('SIGHUP');
      await gateway.waitForLine((entry) => entry.message === 'config reload refused; the running config keeps serving', { from });
      expect(state(await scrapeWhen(metricsUrl, (exposition) => state(exposition).failure === 1))).toEqual({ success: 0, failure: 1, lastSuccessful: 0 });

      from = gateway.lines.length;
      gateway.writeConfig({ ...shippedConfigFile(), rateLimit: { max: 99, windowMs: 60_000 } });
      gateway.child.kill('SIGHUP');
      await gateway.waitForLine((entry) => entry.message === 'config reloaded', { from });
      expect(state(await scrapeWhen(metricsUrl, (exposition) => state(exposition).success === 1))).toEqual({ success: 1, failure: 1, lastSuccessful: 1 });
    });
  });
});
