import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import fs from 'node:fs';
import path from 'node:path';
import { describeRouteAccess, loadConfig, type GatewayConfig } from '../src/config';
import { callerKeyFromGatewayKey, serviceSigningKey } from '../src/gateway-signature';

/**
 * `npm start`: the gateway and the three services as four processes on one machine, the way
 * docker compose runs them, each preloading the telemetry bootstrap. Prints the routes and a curl to paste,
 * and stops all four on Ctrl-C / SIGTERM / SIGHUP (or when any of them dies).
 *
 * Ports: `PORT` for the gateway (default 3000; the gateway reads it itself, this launcher only to know where to
 * wait), `USERS_PORT`, `ORDERS_PORT` and `NOTIFICATIONS_PORT` for the services (default 4001, 4002, 4003), and
 * `NOTIFICATIONS_GRPC_PORT` for notification-service's gRPC interface (default 50053), so a second stack can run
 * beside the first.
 *
 * `HOST` is the gateway's public listener only (the gateway reads it itself). The services always listen on
 * 127.0.0.1 and the gateway reaches them there: given HOST too, `::1` left every connection between them refused
 * (they dialled 127.0.0.1), and `0.0.0.0` put the services, which trust the gateway's signed identity headers,
 * on every interface beside it.
 */

const dist = path.resolve(__dirname, '..');
const register = path.join(dist, 'otel', 'register.js');

/**
 * The node flags of `npm run start:gateway` (V8's garbage collector tuned for the gateway: the Dockerfile says
 * why), read from package.json so `npm start` runs the gateway exactly as the other launch paths do.
 */
function gatewayNodeFlags(): string[] {
  const scripts = (JSON.parse(fs.readFileSync(path.join(dist, '..', 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts;
  const words = scripts['start:gateway']!.split(' ');
  const preload = words.indexOf('./dist/otel/register.js') - 1;
  // Anything else would hand node a wrong command line without a word: stop here instead.
  if (words[0] !== 'node' || preload < 1 || words[preload] !== '--require') throw new Error(`start:gateway is not \`node [flags] --require ./dist/otel/register.js ...\`: ${scripts['start:gateway']}`);
  // Its flags and the preloads before the telemetry bootstrap (the stop signals held), found from any directory.
  return words.slice(1, preload).map((word) => (word.startsWith('./dist/') ? path.join(dist, word.slice('./dist/'.length)) : word));
}

interface Member {
  name: string;
  entry: string;
  env: Record<string, string>;
  nodeOptions?: string[];
}

/** A port from the environment, or the default; anything but a whole number in 1-65535 stops the launcher. */
function portFrom(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const port = Number(raw);
  if (!/^\d+$/.test(raw) || port < 1 || port > 65535) {
    process.stderr.write(`stack: ${name} must be a port number (1-65535) (got "${raw}")\n`);
    process.exit(1);
  }
  return port;
}

const SERVICE_PORTS = { users: portFrom('USERS_PORT', 4001), orders: portFrom('ORDERS_PORT', 4002), notifications: portFrom('NOTIFICATIONS_PORT', 4003) } as const;
/** notification-service's gRPC interface, which order-service and the gateway's `/api/v1/notifications` route call. */
const NOTIFICATIONS_GRPC_PORT = portFrom('NOTIFICATIONS_GRPC_PORT', 50053);
/** Where the launcher waits for a gateway whose config it cannot read (that gateway says why and exits); the gateway's config validates PORT itself. */
const GATEWAY_PORT = portFrom('PORT', 3000);
/** Where the services listen and the gateway and order-service reach them, whatever HOST says. */
const SERVICE_HOST = '127.0.0.1';
/**
 * The key the gateway signs what it tells the services with (src/gateway-signature.ts): the environment's, else
 * one made for this run; each service is given its own key derived from it, so the services refuse requests that
 * did not come from the gateway, and none can sign for another.
 */
const SIGNING_KEY = process.env.GATEWAY_SIGNING_KEY || randomBytes(32).toString('base64url');
const keyOf = (service: string) => serviceSigningKey(SIGNING_KEY, service);
const urlOf = (port: number) => `http://${SERVICE_HOST}:${port}`;

const members: Member[] = [
  { name: 'user-service', entry: 'services/users/main.js', env: { HOST: SERVICE_HOST, PORT: String(SERVICE_PORTS.users), GATEWAY_SIGNING_KEY: keyOf('users') } },
  { name: 'notification-service', entry: 'services/notifications/main.js', env: { HOST: SERVICE_HOST, PORT: String(SERVICE_PORTS.notifications), GRPC_PORT: String(NOTIFICATIONS_GRPC_PORT), GATEWAY_SIGNING_KEY: keyOf('notifications') } },
  {
    name: 'order-service',
    entry: 'services/orders/main.js',
    env: {
      HOST: SERVICE_HOST,
      PORT: String(SERVICE_PORTS.orders),
      USER_SERVICE_URL: urlOf(SERVICE_PORTS.users),
      NOTIF_SERVICE_URL: urlOf(SERVICE_PORTS.notifications),
      NOTIF_GRPC_SERVICE_URL: urlOf(NOTIFICATIONS_GRPC_PORT),
      GATEWAY_SIGNING_KEY: keyOf('orders'),
      // The keys the two it calls give it as a caller, good for its calls to them only.
      USER_SERVICE_SIGNING_KEY: callerKeyFromGatewayKey(SIGNING_KEY, 'users', 'orders'),
      NOTIF_SERVICE_SIGNING_KEY: callerKeyFromGatewayKey(SIGNING_KEY, 'notifications', 'orders'),
    },
  },
  {
    name: 'gateway',
    entry: 'src/main.js',
    nodeOptions: gatewayNodeFlags(),
    env: {
      GATEWAY_SIGNING_KEY: SIGNING_KEY,
      USER_SERVICE_URL: urlOf(SERVICE_PORTS.users),
      ORDER_SERVICE_URL: urlOf(SERVICE_PORTS.orders),
      NOTIF_SERVICE_URL: urlOf(SERVICE_PORTS.notifications),
      NOTIF_GRPC_SERVICE_URL: urlOf(NOTIFICATIONS_GRPC_PORT),
    },
  },
];

/**
 * How long the launcher waits for the four to stop after its SIGTERM before it kills them, ms: the 30 s compose and
 * Kubernetes give each. At 12 s it killed a gateway still within its own bounds (drain 10 s, then background fetches
 * and the telemetry flush; a cluster's primary waits 22 s for its workers), mid-flush.
 */
const CHILD_STOP_BOUND_MS = 30_000;

/**
 * The signals that stop all four. SIGHUP too: a closed terminal sends it to the launcher's whole process group, and
 * without a handler the launcher died at once while the gateway (to which SIGHUP means "reload") stayed up on its
 * port as an orphan answering 502, and the next `npm start` found the port taken. Handled with `on`, not `once`:
 * a second Ctrl-C during the stop is ignored, where Node's default killed the launcher and the kill bound with it.
 */
const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

const children = new Map<string, ChildProcess>();
let stopping = false;

function start(member: Member): void {
  const child = spawn(process.execPath, [...(member.nodeOptions ?? []), '--require', register, path.join(dist, member.entry)], {
    // The gateway's HOST is the user's (else its config's, else 127.0.0.1); the services' is SERVICE_HOST.
    env: { ...process.env, ...member.env },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  children.set(member.name, child);
  // A spawn that failed (EAGAIN, EMFILE, EACCES) emits 'error' and never 'exit': unheard, the launcher died of it
  // and the members already started stayed up on their ports. One that never ran has nothing to wait for.
  child.on('error', (error) => {
    if (child.pid === undefined) children.delete(member.name);
    process.stderr.write(`stack: ${member.name} failed (${error.message}); stopping the others\n`);
    void stop(1);
  });
  child.once('exit', (code, signal) => {
    children.delete(member.name);
    if (!stopping) {
      process.stderr.write(`stack: ${member.name} exited (${signal ?? `code ${code}`}); stopping the others\n`);
      void stop(1);
    }
  });
}

async function stop(exitCode: number): Promise<void> {
  if (stopping) return;
  stopping = true;
  // A member whose spawn failed never exits: its 'error' ends its wait (several can fail in one start).
  const exits = [...children.values()].map((child) => new Promise<void>((resolve) => child.once('exit', () => resolve()).once('error', () => child.pid === undefined && resolve())));
  for (const child of children.values()) child.kill('SIGTERM');
  const killTimer = setTimeout(() => {
    for (const child of children.values()) child.kill('SIGKILL');
  }, CHILD_STOP_BOUND_MS);
  await Promise.all(exits);
  clearTimeout(killTimer);
  process.exit(exitCode);
}

async function waitUntilReady(probeUrl: string, deadlineMs: number): Promise<boolean> {
  const deadline = Date.now() + deadlineMs;
  while (Date.now() < deadline && !stopping) {
    if (await answersReady(probeUrl)) return true;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return false;
}

/**
 * Whether the gateway answers 200 at `/ready` (false while it is not listening yet). Over HTTPS its certificate is
 * not checked: this asks the launcher's own child on this machine whether it serves, and the certificate names the
 * public host, seldom the address dialled here.
 */
function answersReady(probeUrl: string): Promise<boolean> {
  return new Promise((resolve) => {
    const get = probeUrl.startsWith('https:') ? https.get : http.get;
    const request = get(`${probeUrl}/ready`, { timeout: 1000, rejectUnauthorized: false }, (response) => {
      response.resume();
      resolve(response.statusCode === 200);
    });
    request.on('timeout', () => request.destroy());
    request.on('error', () => resolve(false));
  });
}

/** The gateway's config, as the gateway reads it. */
const gatewayConfig = () => loadConfig({ ...process.env, ...members.at(-1)!.env });

interface GatewayAddress {
  /** Where the launcher asks for `/ready`. */
  probeUrl: string;
  /** The URL printed for curl. */
  url: string;
  /** With `tls`: the certificate file the printed curls trust (`--cacert`). */
  certFile?: string;
}

/**
 * Where this machine reaches the gateway, as its config says: `https` with `tls`, the address it listens on (HOST,
 * else the file's `host`, else 127.0.0.1; loopback when that is every address) and its port (PORT, else the file's
 * `port`). Before, the launcher waited at http://...:PORT only, and gave up after 20 s on a gateway serving HTTPS or
 * on the file's port. A config the gateway refuses: it says why and exits, and so does the launcher, so any address
 * will do.
 */
function gatewayAddress(): GatewayAddress {
  let config: GatewayConfig | undefined;
  try {
    config = gatewayConfig();
  } catch {
    config = undefined;
  }
  const host = config?.host ?? SERVICE_HOST;
  const port = config?.port ?? GATEWAY_PORT;
  const reachable = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  const origin = (scheme: string, name: string) => `${scheme}://${name.includes(':') ? `[${name}]` : name}:${port}`;
  if (!config?.tls) return { probeUrl: origin('http', reachable), url: origin('http', reachable) };
  // A certificate names a host, seldom a loopback address: curl asks for `localhost`, as the README's does.
  const named = reachable === '127.0.0.1' || reachable === '::1' ? 'localhost' : reachable;
  return { probeUrl: origin('https', reachable), url: origin('https', named), certFile: config.tls.certFile };
}

function banner({ url: gatewayUrl, certFile }: GatewayAddress): string {
  const config = gatewayConfig();
  const trust = certFile === undefined ? '' : ` --cacert ${certFile}`;
  const routes = config.routes.map((route) => {
    const methods = route.methods ? `${route.methods.join(',')} ` : '';
    const path = `${methods}${route.prefix}${route.exact ? '' : '/*'}`;
    const access = describeRouteAccess(route, config.consumers.length > 0);
    return `  ${path.padEnd(28)} -> ${route.service} ${route.upstreamPath || '/'}  (${access})`;
  });
  return [
    '',
    `Koa Gateway is up on ${gatewayUrl}`,
    `  ${`POST ${config.auth.loginPath}`.padEnd(28)} -> the gateway issues a token  (public)`,
    ...routes,
    '',
    'Try it:',
    `  TOKEN=$(curl -s${trust} -X POST ${gatewayUrl}${config.auth.loginPath} -H 'content-type: application/json' \\`,
    `    -d '{"email":"alice@example.com","password":"wonderland"}' | node -pe 'JSON.parse(require("fs").readFileSync(0)).token')`,
    `  curl -i${trust} ${gatewayUrl}/api/users/1 -H "authorization: Bearer $TOKEN"`,
    `  curl -i${trust} ${gatewayUrl}/api/v1/notifications -H "authorization: Bearer $TOKEN"   # REST -> gRPC`,
    '',
    'Ctrl-C stops all four processes.',
    '',
  ].join('\n');
}

async function main(): Promise<void> {
  for (const signal of STOP_SIGNALS) process.on(signal, () => void stop(0));
  for (const member of members) start(member);
  const address = gatewayAddress();
  if (await waitUntilReady(address.probeUrl, 20_000)) {
    process.stdout.write(banner(address));
  } else if (!stopping) {
    process.stderr.write('stack: the gateway did not become ready within 20 s; stopping\n');
    await stop(1);
  }
}

void main();
