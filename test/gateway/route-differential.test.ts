import net from 'node:net';
import Router from '@koa/router';
import fc from 'fast-check';
import Koa from 'koa';
import { HEADER } from '../../otel/wire-names';
import { createGateway } from '../../src/gateway';
import { listen, memoryLogger, type TestServer } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';
import { signToken } from '../helpers/tokens';

/**
 * The gateway against the services' own routers, black-box: what a request is decided as at the gateway (route,
 * auth, roles) against what a Koa + @koa/router service makes of the target it is sent. The three services here
 * route as the real ones do (@koa/router defaults: any case, a trailing slash ignored, parameters decoded), after
 * resolving the path as a URL parser would (dot segments, encoded ones too, and backslashes), add the paths a client
 * must never reach through a route that does not own them (`/internal/*`), and record which of their routes each
 * request reached. Targets are generated from spellings a probe would try (percent-encoding in
 * either case, dot segments, overlong UTF-8, `;`, backslashes, encoded `?` and `#`, fragments, double slashes,
 * Kelvin signs, long paths), sent byte for byte on raw sockets, each by a user and by an admin:
 * - what the user reaches is never the admin-only listing (`GET /users`) nor an internal path, and always a path
 *   under the upstream path of the service's own routes;
 * - a target that reaches the listing for the admin is refused to the user with 403 (the gateway decided it as the
 *   admin-only route), never forwarded for the user as something else.
 */

/** Which route of which service a request reached, as that service's router matched it. */
interface Reached {
  service: string;
  method: string;
  url: string;
  /** The router's path pattern, or undefined when none matched (the service's 404). */
  route: string | undefined;
  requestId: string;
}

/** A service's router as the real ones route (services/users/app.ts, ...), behind URL normalisation, with paths no public route owns. */
function recordingService(name: string, reached: Reached[], routes: string[]): Koa {
  const router = new Router();
  for (const path of routes) {
    router.all(path, (ctx) => {
      reached.push({ service: name, method: ctx.method, url: ctx.url, route: path, requestId: ctx.get(HEADER.requestId) });
      ctx.body = { ok: true };
    });
  }
  router.all('/internal/{*rest}', (ctx) => {
    reached.push({ service: name, method: ctx.method, url: ctx.url, route: '/internal/{*rest}', requestId: ctx.get(HEADER.requestId) });
    ctx.body = { internal: true };
  });
  const app = new Koa();
  // The path as a normalising stack in front of the router reads it (a sidecar, a framework that resolves the
  // URL first): WHATWG URL parsing resolves dot segments, plain and encoded, and reads `\` as `/`.
  app.use((ctx, next) => {
    ctx.path = new URL(`http://service.invalid${ctx.path}`).pathname;
    return next();
  });
  app.use(router.routes());
  app.use((ctx) => {
    reached.push({ service: name, method: ctx.method, url: ctx.url, route: undefined, requestId: ctx.get(HEADER.requestId) });
    ctx.status = 404;
  });
  return app;
}

/** Writes one request byte for byte on a fresh connection; resolves with the status code (0 without an answer). */
function sendRaw(origin: string, head: string): Promise<number> {
  const { hostname, port } = new URL(origin);
  return new Promise((resolve) => {
    const socket = net.connect(Number(port), hostname, () => socket.write(head));
    let text = '';
    socket.setEncoding('latin1');
    socket.setTimeout(5000, () => socket.destroy());
    socket.on('data', (chunk: string) => (text += chunk));
    socket.on('error', () => {});
    socket.on('close', () => resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0)));
  });
}

/** Spellings of the first segments of the shipped routes' prefixes, plain and disguised. */
const API = ['api', 'API', 'Api', '%61pi', 'ap%49', '%41%50%49'];
const SERVICE = ['users', 'USERS', '%75sers', 'user%73', 'uSeRs', 'users.json', 'users%2ejson', 'usersx', 'orders', 'ORDERS', '%6frders', 'notifications', 'auth', 'v1', 'internal'];
/** What may follow: ordinary segments, and pieces a probe splices in (many of them refused with 400, as they must be). */
const ORDINARY = ['1', '2', 'abc', 'register', 'login', 'users', 'orders', 'internal', 'x.json', '%31', 'a%20b', '%e2%84%aa', '~', '*', '@', '-', '_'];
const DOTS = ['.', '..', '%2e', '%2E%2e', '.%2e', '%2e.', '%c0%ae', '%c0%ae%c0%ae', '%e0%80%ae', '%252e%252e', '..;', '..%00', '..%20', '...'];
const HOSTILE = ['%2f', '%2F', '%5c', '\\', '%00', '%0a', '%3f', '%23', ';', ';x=1', '%3b', '', '%20', '%09', '%c2%a0', '.json', '%ef%bc%8f', '%25', '%2561', 'A'.repeat(2100), ':', '%3a', '&', '='];
const TAILS = ['', '', '?a=1', '?/../internal/credentials/verify', '#x', '#/../../internal', '?%3f', '?a=%2f..%2f'];

const segment = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...ORDINARY) },
  { weight: 2, arbitrary: fc.constantFrom(...DOTS) },
  { weight: 2, arbitrary: fc.constantFrom(...HOSTILE) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom(...ORDINARY), fc.constantFrom(...DOTS, ...HOSTILE)).map(([a, b]) => a + b) },
);
const target = fc
  .tuple(fc.constantFrom(...API), fc.constantFrom(...SERVICE), fc.array(segment, { maxLength: 3 }), fc.boolean(), fc.constantFrom(...TAILS))
  .map(([api, service, rest, trailingSlash, tail]) => `/${[api, service, ...rest].join('/')}${trailingSlash ? '/' : ''}${tail}`);
const method = fc.constantFrom('GET', 'HEAD', 'POST', 'DELETE', 'OPTIONS');

/** The routes each real service has, under its upstream path, that a user may reach. */
const USER_REACHABLE: Record<string, (reached: Reached) => boolean> = {
  // POST /users is registration (the public register route); GET and HEAD of /users are the admin-only listing.
  users: ({ route, method: verb }) => route === undefined || route.startsWith('/users/') || (route === '/users' && verb !== 'GET' && verb !== 'HEAD'),
  orders: ({ route }) => route === undefined || route.startsWith('/orders'),
  notifications: ({ route }) => route === undefined || route.startsWith('/notifications'),
};

describe('the gateway’s route decisions against the services’ routers (generated targets)', () => {
  const reached: Reached[] = [];
  let services: TestServer[];
  let gateway: TestServer;
  let user: string;
  let admin: string;

  beforeAll(async () => {
    services = await Promise.all([
      listen(recordingService('users', reached, ['/users', '/users/:id', '/users/:id/{*rest}']).callback()),
      listen(recordingService('orders', reached, ['/orders', '/orders/:id', '/orders/:id/{*rest}']).callback()),
      listen(recordingService('notifications', reached, ['/notifications', '/notifications/{*rest}']).callback()),
    ]);
    const [users, orders, notifications] = services.map((service) => service.url) as [string, string, string];
    const config = testConfig({ users, orders, notifications }, {}, { RATE_LIMIT_MAX: '1000000' });
    gateway = await listen(createGateway(config, { logger: memoryLogger('gateway').logger, metrics: false }).callback());
    user = await signToken({ subject: '2', claims: { role: 'user', email: 'bob@example.com' } });
    admin = await signToken({ subject: '1', claims: { role: 'admin', email: 'alice@example.com' } });
  });
  afterAll(async () => {
    await gateway?.close();
    await Promise.all((services ?? []).map((service) => service.close()));
  });

  let requests = 0;
  async function sendAs(token: string, verb: string, path: string): Promise<{ status: number; reached: Reached[] }> {
    const requestId = `differential-${++requests}`;
    const { host } = new URL(gateway.url);
    const status = await sendRaw(gateway.url, `${verb} ${path} HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer ${token}\r\n${HEADER.requestId}: ${requestId}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
    return { status, reached: reached.filter((request) => request.requestId === requestId) };
  }

  it('forwards no target to a route of a service the gateway did not decide it for, for a user or an admin', async () => {
    const seen = { forwarded: 0, refused: 0 };
    await fc.assert(
      fc.asyncProperty(target, method, async (path, verb) => {
        const asUser = await sendAs(user, verb, path);
        const asAdmin = await sendAs(admin, verb, path);
        // One request reached at most one service, and only a path its own routes serve a user.
        expect({ path, verb, reached: asUser.reached.filter((request) => !USER_REACHABLE[request.service]!(request)) }).toEqual({ path, verb, reached: [] });
        expect(asUser.reached.length).toBeLessThanOrEqual(1);
        // Nothing reaches an internal path, whoever asks.
        expect({ path, verb, internal: asAdmin.reached.filter((request) => request.route?.startsWith('/internal')) }).toEqual({ path, verb, internal: [] });
        // What the admin's request reached as the listing, the user's was refused as the admin-only route.
        if (asAdmin.reached.some((request) => request.service === 'users' && request.route === '/users' && (verb === 'GET' || verb === 'HEAD'))) {
          expect({ path, verb, status: asUser.status, reached: asUser.reached.length }).toEqual({ path, verb, status: 403, reached: 0 });
        }
        if (asUser.reached.length > 0) seen.forwarded++;
        else seen.refused++;
      }),
      { seed: 61, numRuns: 1000 },
    );
    // The generator reaches both sides: enough targets are forwarded for the property to say something.
    expect(seen.forwarded).toBeGreaterThan(100);
    expect(seen.refused).toBeGreaterThan(100);
  }, 120_000);
});
