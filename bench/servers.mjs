import { randomBytes } from 'node:crypto';
// How the benchmark starts each server it measures, shared by bench/run.mjs and bench/profile.mjs. Every
// server listens on 127.0.0.1 only, on a port picked here, with its output in the logs folder.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SignJWT } from 'jose';
import { freePort, start, waitUntilServing } from './processes.mjs';

export const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(BENCH_DIR, '..');

/**
 * The gateway's command line exactly as `npm run start:gateway` has it (node flags, preload, main file), read
 * from package.json so the benchmark can never measure a differently tuned process than users start.
 */
function startGatewayArgs() {
  const script = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).scripts['start:gateway'];
  const [command, ...args] = script.split(' ');
  if (command !== 'node') throw new Error(`start:gateway is not a plain node command: ${script}`);
  return args;
}

/** Must match the gateway's auth config (bench/gateway.bench.json, src/tokens.ts). */
const ISSUER = 'koa-gateway';
const AUDIENCE = 'koa-gateway-api';

/** A fresh secret for the gateways' token check, and the `Authorization` header of a request that passes it. */
export async function benchCredentials() {
  const secret = randomBytes(32).toString('hex');
  const token = await mintToken(secret);
  return { secret, token, headers: { Authorization: `Bearer ${token}` } };
}

/** The folder of `segments` (resolved), emptied and made: where one tool's run writes its logs and results. */
export function freshDir(...segments) {
  const dir = path.resolve(...segments);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/** The one token every authenticated case is sent: HS256, the claims the gateway's own tokens carry. */
export function mintToken(secret, jti) {
  const token = new SignJWT({ email: 'ada@example.com', role: 'user' })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject('42')
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setIssuedAt()
    // The gateway's own lifetime (auth.tokenTtlSeconds, 3600 by default): a token living longer is refused as one the
    // gateway never issued. An hour outlasts any run.
    .setExpirationTime('1h');
  return (jti === undefined ? token : token.setJti(jti)).sign(new TextEncoder().encode(secret));
}

/**
 * `--tokens N`: with N over 1, N distinct tokens like mintToken's (each its own `jti`), so no verified-token cache holds
 * them all, written to `<dir>/tokens.txt` one per line (bench/wrk-tokens.lua reads them). `cursor()` makes a place in
 * the file for one case or variant: runWrk sends on from it and moves it on, so a case's runs go through all the
 * tokens before any comes back. Undefined for one token (the one of benchCredentials).
 */
export async function tokensFile(dir, secret, count) {
  if (count <= 1) return undefined;
  const file = path.join(dir, 'tokens.txt');
  const tokens = [];
  for (let i = 0; i < count; i++) tokens.push(await mintToken(secret, `bench-${i}`));
  fs.writeFileSync(file, `${tokens.join('\n')}\n`);
  return { count, cursor: () => ({ file, count, next: 0 }) };
}

/** This process's environment without anything that would change a server or its telemetry. */
export function cleanEnv(extra = {}) {
  const env = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (/^(OTEL_|GATEWAY_|JWT_|NODE_OPTIONS$|NODE_ENV$|PORT$|HOST$|LOG_LEVEL$|RATE_LIMIT_|REDIS_URL$|TRUST_|PROXY_TIMEOUT_MS$|.*_SERVICE_URL$)/.test(key)) continue;
    env[key] = value;
  }
  return { ...env, ...extra };
}

const logFiles = (logs, name) => ({ stdoutFile: path.join(logs, `${name}.out.log`), stderrFile: path.join(logs, `${name}.err.log`) });

export function startUpstream({ port, logs }) {
  return start('upstream', process.execPath, [path.join(BENCH_DIR, 'upstream.mjs'), String(port)], { cwd: ROOT, env: cleanEnv(), ...logFiles(logs, 'upstream') });
}

export function startSink({ port, logs, name = 'otlp-sink' }) {
  return start(name, process.execPath, [path.join(BENCH_DIR, 'otlp-sink.mjs'), String(port)], { cwd: ROOT, env: cleanEnv(), ...logFiles(logs, name) });
}

/** The fixed upstream and one OTLP sink on free ports, both answering, for the tools that measure one gateway at a time. */
export async function startUpstreamAndSink(logs) {
  const upstreamPort = await freePort();
  const sinkPort = await freePort();
  const upstream = startUpstream({ port: upstreamPort, logs });
  const sink = startSink({ port: sinkPort, logs });
  await waitUntilServing(`http://127.0.0.1:${upstreamPort}/users/42`, { child: upstream });
  await waitUntilServing(`http://127.0.0.1:${sinkPort}/__stats`, { child: sink });
  return { upstreamPort, sinkPort };
}

/** startGateway's options per gateway variant (bench/paired.mjs, bench/allocations.mjs); the same names as bench/instructions.mjs's variants. */
export const GATEWAY_VARIANTS = {
  off: { tracing: false },
  traced: { tracing: true },
  'traced-metrics': { tracing: true, metrics: true },
  // Every span non-recording, contexts valid: what spans cost before they record.
  'sampled-out': { tracing: true, env: { OTEL_TRACES_SAMPLER: 'always_off' } },
  // No span processor, so no tracer provider (otel/sdk.ts): context manager, propagators, baggage, log fields only.
  'no-tracer': { tracing: true, env: { OTEL_TRACES_EXPORTER: 'none' } },
};

/** The key the bench's gateways sign what they forward with (src/gateway-signature.ts; the upstream does not check it). */
export const BENCH_SIGNING_KEY = randomBytes(32).toString('base64url');

/**
 * Koa Gateway as `npm run start:gateway` runs it (compiled, telemetry preloaded), configured by
 * bench/gateway.bench.json and the env. `tracing`: { sinkPort, exportLogs } for 100% sampling exported
 * over OTLP (the default protocol, http/protobuf), or false for OTEL_SDK_DISABLED=true. `metrics` (with
 * tracing): { port } records RED metrics, serves them on that scrape port and exports them over OTLP to the
 * sink every 10 s; absent: metrics off (OTEL_METRICS_EXPORTER=none, no METRICS_PORT). Its stdout, the JSON
 * access log, goes to `<name>-access.log`. `config`: the config file in bench/ (default gateway.bench.json).
 * `extraEnv` is for experiments (e.g. OTEL_TRACES_EXPORTER=none). `root`: another checkout to run the gateway from
 * (its dist/ and node_modules; the launch's paths are relative), for one build against another (bench/paired.mjs).
 */
export function startGateway({ name, port, upstreamPort, secret, tracing, metrics, logs, config = 'gateway.bench.json', nodeArgs = [], extraEnv = {}, root = ROOT }) {
  const telemetry = tracing
    ? {
        OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${tracing.sinkPort}`,
        OTEL_TRACES_SAMPLER: 'always_on',
        OTEL_LOGS_EXPORTER: tracing.exportLogs ? 'otlp' : 'none',
        ...(metrics ? { OTEL_METRICS_EXPORTER: 'otlp', OTEL_METRIC_EXPORT_INTERVAL: '10000', METRICS_PORT: String(metrics.port) } : { OTEL_METRICS_EXPORTER: 'none' }),
      }
    : { OTEL_SDK_DISABLED: 'true' };
  const env = cleanEnv({
    GATEWAY_CONFIG: path.join(BENCH_DIR, config),
    NODE_ENV: 'production',
    HOST: '127.0.0.1',
    PORT: String(port),
    JWT_SECRET: secret,
    // Production requires it: every forwarded request carries the gateway's signature, as deployed.
    GATEWAY_SIGNING_KEY: BENCH_SIGNING_KEY,
    USER_SERVICE_URL: `http://127.0.0.1:${upstreamPort}`,
    RATE_LIMIT_MAX: '1000000000',
    LOG_LEVEL: 'info',
    ...telemetry,
    ...extraEnv,
  });
  // `nodeArgs` after the launch's own node flags, before its preload: a V8 flag given here wins over the launch's
  // (bench/young-generation.mjs tries other --max-semi-space-size values).
  const launch = startGatewayArgs();
  const preload = launch.indexOf('--require');
  const args = [...launch.slice(0, preload), ...nodeArgs, ...launch.slice(preload)];
  return start(name, process.execPath, args, { cwd: root, env, stdoutFile: path.join(logs, `${name}-access.log`), stderrFile: path.join(logs, `${name}.err.log`) });
}

/**
 * A peer gateway from bench/peers (`express-gateway` or `fastify-gateway`), with the same route, token
 * secret and (never triggering) rate limit as the gateway cases, its access log to `<name>-access.log`.
 */
export function startPeer({ name, port, upstreamPort, secret, logs }) {
  return start(name, process.execPath, [path.join(BENCH_DIR, `peers/${name}-gateway/server.mjs`)], {
    cwd: path.join(BENCH_DIR, 'peers'),
    env: cleanEnv({
      NODE_ENV: 'production',
      PORT: String(port),
      USER_SERVICE_URL: `http://127.0.0.1:${upstreamPort}`,
      JWT_SECRET: secret,
      RATE_LIMIT_MAX: '1000000000',
      ACCESS_LOG: path.join(logs, `${name}-access.log`),
    }),
    ...logFiles(logs, name),
  });
}

/**
 * How the traced floor (bench/node-floor.mjs --traced) runs, for the bench and bench:instructions alike: the
 * gateway's own node flags and preload (package.json's start:gateway, its main file left out) and the traced
 * gateway's OTLP settings (100% sampling, traces only), with no instrumentation, as the gateway runs
 * (otel/telemetry-config.ts): the floor makes its two spans by hand.
 */
export function tracedFloorLaunch({ name = 'node-floor-traced', sinkPort }) {
  return {
    nodeFlags: startGatewayArgs().slice(0, -1),
    env: { OTEL_SERVICE_NAME: name, OTEL_NODE_ENABLED_INSTRUMENTATIONS: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${sinkPort}`, OTEL_TRACES_SAMPLER: 'always_on', OTEL_LOGS_EXPORTER: 'none', OTEL_METRICS_EXPORTER: 'none' },
  };
}

/**
 * The bare Node proxy (bench/node-floor.mjs); with `tracing` ({ sinkPort }), the traced floor. `nodeArgs` go
 * before the script (bench/paired.mjs --gc: --trace-gc, whose lines share the floor's `<name>.out.log`).
 */
export function startNodeFloor({ name = 'node-floor', port, upstreamPort, logs, tracing, nodeArgs = [] }) {
  const script = [path.join(BENCH_DIR, 'node-floor.mjs'), String(port), String(upstreamPort)];
  if (!tracing) return start(name, process.execPath, [...nodeArgs, ...script], { cwd: ROOT, env: cleanEnv(), ...logFiles(logs, name) });
  const { nodeFlags, env } = tracedFloorLaunch({ name, sinkPort: tracing.sinkPort });
  return start(name, process.execPath, [...nodeFlags, ...nodeArgs, ...script, '--traced'], { cwd: ROOT, env: cleanEnv(env), ...logFiles(logs, name) });
}

/** nginx from bench/nginx.conf.template, in the foreground (`daemon off`), master plus one worker. */
export function startNginx({ port, upstreamPort, logs }) {
  const conf = fs
    .readFileSync(path.join(BENCH_DIR, 'nginx.conf.template'), 'utf8')
    .replaceAll('@OUT@', logs)
    .replaceAll('@PORT@', String(port))
    .replaceAll('@UPSTREAM_PORT@', String(upstreamPort));
  fs.mkdirSync(path.join(logs, 'nginx-temp'), { recursive: true });
  fs.writeFileSync(path.join(logs, 'nginx.conf'), conf);
  return start('nginx', 'nginx', ['-p', logs, '-c', path.join(logs, 'nginx.conf'), '-g', 'daemon off;'], { cwd: logs, env: cleanEnv(), ...logFiles(logs, 'nginx') });
}
