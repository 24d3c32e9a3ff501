import fc from 'fast-check';
import { parseConfig, type GatewayConfig } from '../../src/config';
import { pathProblem } from '../../src/middleware/path-guard';
import { compileRoutes, routeKey, type CompiledRoute, type RouteMatch, type RouteTable } from '../../src/routes';
import { createUpstreamPools } from '../../src/upstream-pool';
import { shippedConfigFile } from '../helpers/test-config';

/** Fixed seed and bounded runs: the same cases on every run, failures reproducible. */
const PROPERTY_RUNS = { seed: 20261201, numRuns: 400 } as const;

function tableOf(config: GatewayConfig): RouteTable {
  return compileRoutes(config, createUpstreamPools(config.services));
}

describe('route table', () => {
  const file = shippedConfigFile();
  (file.routes as unknown[]).push({ name: 'orders-admin', prefix: '/api/orders/admin', service: 'orders', upstreamPath: '/admin/orders', timeoutMs: 1234 });
  (file.routes as unknown[]).push({ name: 'root', prefix: '/api/root', service: 'orders', upstreamPath: '' });
  (file.routes as unknown[]).push({ name: 'root-get', prefix: '/api/root-get', service: 'orders', upstreamPath: '', methods: ['GET'] });
  // A gRPC route's paths are its proto's HTTP rules; its calls never reach a service's HTTP /internal.
  (file.routes as unknown[]).push({ name: 'ops', prefix: '/api/ops', service: 'notifications', upstreamPath: '', grpc: { proto: 'proto/notifications.proto', service: 'koagateway.notifications.v1.Notifications' } });
  const config = parseConfig(file);
  const table = tableOf(config);
  const matched = (path: string, method = 'GET') => {
    const match = table.match(path, method);
    return match?.kind === 'matched' ? (match as RouteMatch) : undefined;
  };

  it.each([
    { desc: 'an exact route refining a prefix for its method', method: 'GET', path: '/api/users', route: 'users-directory', upstream: '/users' },
    { desc: 'HEAD as GET on the exact route', method: 'HEAD', path: '/api/users', route: 'users-directory', upstream: '/users' },
    { desc: 'the exact route with a trailing slash', method: 'GET', path: '/api/users/', route: 'users-directory', upstream: '/users/' },
    { desc: 'the exact route in another case', method: 'GET', path: '/API/Users', route: 'users-directory', upstream: '/users' },
    { desc: 'the exact route with encoded letters', method: 'GET', path: '/api/%75sers', route: 'users-directory', upstream: '/users' },
    { desc: 'a path below the prefix', method: 'GET', path: '/api/users/1', route: 'users', upstream: '/users/1' },
    { desc: 'a path below the prefix, prefix in another case', method: 'GET', path: '/Api/USERS/1', route: 'users', upstream: '/users/1' },
    { desc: 'the longest prefix first', method: 'GET', path: '/api/orders/admin/7', route: 'orders-admin', upstream: '/admin/orders/7' },
    { desc: 'the longest prefix in another case', method: 'GET', path: '/api/orders/ADMIN/7', route: 'orders-admin', upstream: '/admin/orders/7' },
    { desc: 'the longest prefix with encoded letters', method: 'GET', path: '/api/orders/%61dmin', route: 'orders-admin', upstream: '/admin/orders' },
    { desc: 'the shorter prefix otherwise', method: 'GET', path: '/api/orders/7', route: 'orders', upstream: '/orders/7' },
    { desc: 'an exact route', method: 'POST', path: '/api/auth/register', route: 'register', upstream: '/users' },
    { desc: 'encoded bytes kept as sent', method: 'GET', path: '/api/users/john%20doe', route: 'users', upstream: '/users/john%20doe' },
    { desc: 'a format suffix on a route to the service root', method: 'GET', path: '/api/root.json', route: 'root', upstream: '/.json' },
    { desc: 'a format suffix and a trailing slash on a route to the service root', method: 'GET', path: '/api/root.json/', route: 'root', upstream: '/.json/' },
    { desc: 'a route to the service root', method: 'GET', path: '/api/root', route: 'root', upstream: '/' },
    { desc: 'below a route to the service root', method: 'GET', path: '/api/root/x', route: 'root', upstream: '/x' },
  ])('matches $desc', ({ path, method, route, upstream }) => {
    const match = matched(path, method);
    expect(match?.route.name).toBe(route);
    expect(match?.upstreamPath).toBe(upstream);
  });

  // A route to a service's root passed `/internal/credentials/verify` on, signed: a password check without the
  // login's limits.
  it.each([
    '/api/root/internal/credentials/verify',
    '/api/root/INTERNAL/credentials/verify',
    '/api/root/%69nternal/notifications',
    '/api/root/internal',
    '/api/root/internal/',
    '/api/root/internal.json',
  ])('routes %s, under the services\' /internal, nowhere', (path) => {
    expect(table.match(path, 'POST')).toBeUndefined();
  });

  it.each(['/api/root/internals', '/api/root/x/internal', '/api/root/internal-docs'])('still routes %s, which is not under /internal', (path) => {
    expect(matched(path, 'POST')?.route.name).toBe('root');
  });

  // The method was judged first: a 405 with Allow, where every other method got 404.
  it('routes a path under /internal nowhere for a method the route does not take either', () => {
    expect(table.match('/api/root-get/internal/credentials/verify', 'POST')).toBeUndefined();
    expect(table.match('/api/root-get/internal/credentials/verify', 'GET')).toBeUndefined();
  });

  it('leaves a gRPC route to its proto, /internal paths and upstream paths included', () => {
    expect(matched('/api/ops/internal/v1/stats')?.upstreamPath).toBe('/internal/v1/stats');
    const grpcUnderInternal = shippedConfigFile();
    (grpcUnderInternal.routes as unknown[]).push({ name: 'ops', prefix: '/api/ops', service: 'notifications', upstreamPath: '/internal/v1', grpc: { proto: 'proto/notifications.proto', service: 'koagateway.notifications.v1.Notifications' } });
    expect(() => parseConfig(grpcUnderInternal)).not.toThrow();
  });

  it.each(['/internal', '/internal/credentials', '/Internal/notifications', '/INTERNAL'])('refuses a route whose upstreamPath is %s', (upstreamPath) => {
    const withInternal = shippedConfigFile();
    (withInternal.routes as unknown[]).push({ name: 'inside', prefix: '/api/inside', service: 'users', upstreamPath });
    expect(() => parseConfig(withInternal)).toThrow(/must not be under \/internal/);
  });

  it.each([
    { desc: 'a longer first segment', path: '/api/usersX/1' },
    { desc: 'a shorter prefix', path: '/api/user' },
    { desc: 'below an exact route', path: '/api/auth/register/extra' },
    { desc: 'the root', path: '/' },
    { desc: 'another spelling of the login path', path: '/api/auth/login/' },
    { desc: 'another case of the login path', path: '/API/auth/login' },
    { desc: 'another case of /health', path: '/Health' },
    // The gateway's own paths with a format suffix, first dot of the last segment on.
    { desc: '/health with a format suffix', path: '/health.json' },
    { desc: '/health with two suffixes', path: '/health.v1.json' },
  ])('does not match $desc', ({ path }) => {
    expect(table.match(path, 'GET')).toBeUndefined();
    expect(table.owner(path)).toBeUndefined();
  });

  it('leaves the login path to the gateway with a format suffix too, under a route that covers it', () => {
    const covering = shippedConfigFile();
    (covering.routes as unknown[]).push({ name: 'auth-area', prefix: '/api/auth', service: 'users', upstreamPath: '/auth' });
    const withAuthArea = tableOf(parseConfig(covering));
    expect(withAuthArea.owner('/api/auth/other.json')?.name).toBe('auth-area');
    for (const path of ['/api/auth/login', '/api/auth/login.json', '/api/auth/login.v1.json']) {
      expect([path, withAuthArea.match(path, 'POST')]).toEqual([path, undefined]);
      expect([path, withAuthArea.owner(path)]).toEqual([path, undefined]);
    }
  });

  it.each([
    { desc: 'a method the exact admin route does not take', method: 'POST', path: '/api/users', allowed: ['GET', 'HEAD'] },
    { desc: 'the same with a trailing slash', method: 'DELETE', path: '/api/users/', allowed: ['GET', 'HEAD'] },
    { desc: 'GET on a POST-only route', method: 'GET', path: '/api/auth/register', allowed: ['POST'] },
    { desc: 'HEAD on a POST-only route', method: 'HEAD', path: '/api/auth/register', allowed: ['POST'] },
  ])('answers $desc with the owner route\'s methods, not a weaker route', ({ path, method, allowed }) => {
    const match = table.match(path, method);
    expect(match?.kind).toBe('method_not_allowed');
    expect(match && 'allowed' in match ? [...match.allowed].sort() : undefined).toEqual([...allowed].sort());
  });

  it('derives per-route timeouts, deadlines, roles, and keeps the service origin only', () => {
    expect(matched('/api/orders/admin')!.route.timeoutMs).toBe(1234);
    expect(matched('/api/orders')!.route.timeoutMs).toBe(10_000);
    expect(matched('/api/orders')!.route.deadlineMs).toBe(config.proxy.deadlineMs);
    expect(matched('/api/users/1')!.route.pool.health().map((instance) => instance.origin)).toEqual(['http://127.0.0.1:4001']);
    expect([...matched('/api/users')!.route.roles!]).toEqual(['admin']);
    expect(matched('/api/users/1')!.route.forwardAuthorization).toBe(false);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Properties: every spelling of a request gets the decision of its canonical form, or is refused.

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;
/** Few, short, overlapping segments, so generated routes nest and collide often. */
const SEGMENTS = ['api', 'users', 'admin', 'a', 'b', 'orders', 'internal'] as const;

/** What a request is subject to: which route (and so auth, roles, limits), or which refusal. */
type Decision = { kind: 'matched'; route: string } | { kind: 'method_not_allowed'; route: string; allowed: string[] } | { kind: 'not_found' };

function decide(table: RouteTable, path: string, method: string): Decision {
  const match = table.match(path, method);
  if (!match) return { kind: 'not_found' };
  if (match.kind === 'matched') return { kind: 'matched', route: match.route.name };
  return { kind: 'method_not_allowed', route: match.route.name, allowed: [...match.allowed].sort() };
}

/**
 * The rule, written independently of the table's implementation: of the routes whose prefix segments are a
 * leading run of the path's segments (all of them for an exact route), compared case-insensitively, the one
 * with the most segments owns the path, an exact route before a prefix route of the same length.
 */
function oracleOwner(routes: readonly CompiledRoute[], canonicalSegments: readonly string[]): CompiledRoute | undefined {
  const covering = routes.filter((route) => {
    const prefix = route.prefix.toLowerCase().split('/').slice(1);
    if (route.exact ? prefix.length !== canonicalSegments.length : prefix.length > canonicalSegments.length) return false;
    return prefix.every((segment, index) => segment === canonicalSegments[index]);
  });
  covering.sort((a, b) => b.prefix.split('/').length - a.prefix.split('/').length || Number(b.exact) - Number(a.exact));
  return covering[0];
}

/** A canonical request: lower-case plain segments, no trailing slash. */
const canonicalRequest = fc.record({
  segments: fc.array(fc.constantFrom(...SEGMENTS), { minLength: 1, maxLength: 4 }),
  method: fc.constantFrom(...METHODS),
});

/** One way of spelling a path differently. Some are harmless (must keep the decision), some must be refused. */
type Spelling =
  | { kind: 'case'; flips: boolean[] }
  | { kind: 'encode'; picks: boolean[]; upperHex: boolean }
  | { kind: 'trailing_slash' }
  | { kind: 'double_slash'; at: number }
  | { kind: 'matrix'; at: number }
  | { kind: 'dot_segment'; at: number; twoDots: boolean; encoded: boolean }
  | { kind: 'encoded_slash'; at: number };

const spelling: fc.Arbitrary<Spelling> = fc.oneof(
  fc.record({ kind: fc.constant('case' as const), flips: fc.array(fc.boolean(), { minLength: 40, maxLength: 40 }) }),
  fc.record({ kind: fc.constant('encode' as const), picks: fc.array(fc.boolean(), { minLength: 40, maxLength: 40 }), upperHex: fc.boolean() }),
  fc.record({ kind: fc.constant('trailing_slash' as const) }),
  fc.record({ kind: fc.constant('double_slash' as const), at: fc.nat(5) }),
  fc.record({ kind: fc.constant('matrix' as const), at: fc.nat(5) }),
  fc.record({ kind: fc.constant('dot_segment' as const), at: fc.nat(5), twoDots: fc.boolean(), encoded: fc.boolean() }),
  fc.record({ kind: fc.constant('encoded_slash' as const), at: fc.nat(5) }),
);

function respell(segments: string[], spellings: readonly Spelling[]): string {
  let parts = [...segments];
  let trailing = false;
  let charIndex = 0;
  for (const change of spellings) {
    const at = (n: number) => n % parts.length;
    switch (change.kind) {
      case 'case':
        parts = parts.map((part) => [...part].map((char) => (change.flips[charIndex++ % 40] ? char.toUpperCase() : char)).join(''));
        break;
      case 'encode':
        // Only unreserved letters are encoded here; a part that is already encoded is left as it is.
        parts = parts.map((part) =>
          part.includes('%') || part === '' ? part : [...part].map((char) => (change.picks[charIndex++ % 40] ? `%${char.charCodeAt(0).toString(16)[change.upperHex ? 'toUpperCase' : 'toLowerCase']()}` : char)).join(''),
        );
        break;
      case 'trailing_slash':
        trailing = true;
        break;
      case 'double_slash':
        parts.splice(at(change.at), 0, '');
        break;
      case 'matrix':
        parts[at(change.at)] += ';jsessionid=1';
        break;
      case 'dot_segment': {
        const dots = change.twoDots ? (change.encoded ? '%2e%2E' : '..') : change.encoded ? '%2e' : '.';
        // `x/..` undoes itself; `.` alone is a no-op: both leave the canonical path unchanged for a normalizer.
        parts.splice(at(change.at), 0, ...(change.twoDots ? ['x', dots] : [dots]));
        break;
      }
      case 'encoded_slash':
        parts[at(change.at)] += '%2F';
        break;
    }
  }
  return `/${parts.join('/')}${trailing ? '/' : ''}`;
}

function checkSpellings(table: RouteTable, segments: string[], method: string, spellings: Spelling[], asHead: boolean): void {
  const canonical = `/${segments.join('/')}`;
  const variant = respell(segments, spellings);
  const variantMethod = asHead && method === 'GET' ? 'HEAD' : method;
  if (pathProblem(variant) !== undefined) return; // refused with 400 before any route: allowed
  expect({ variant, method: variantMethod, decision: decide(table, variant, variantMethod) }).toEqual({ variant, method: variantMethod, decision: decide(table, canonical, method) });
  // And the service is sent the same resource, whatever the spelling.
  const canonicalMatch = table.match(canonical, method);
  const variantMatch = table.match(variant, variantMethod);
  if (canonicalMatch?.kind === 'matched' && variantMatch?.kind === 'matched') {
    expect(routeKey(variantMatch.upstreamPath)).toBe(routeKey(canonicalMatch.upstreamPath));
  }
}

/** Route tables the schema accepts: overlapping prefixes, exact refinements, method subsets, roles. */
const generatedConfig: fc.Arbitrary<GatewayConfig> = fc
  .uniqueArray(
    fc.record({
      segments: fc.array(fc.constantFrom(...SEGMENTS), { minLength: 1, maxLength: 3 }),
      exact: fc.boolean(),
      methods: fc.option(fc.subarray([...METHODS].filter((m) => m !== 'HEAD'), { minLength: 1 }), { nil: undefined }),
      auth: fc.constantFrom('required' as const, 'public' as const),
      admin: fc.boolean(),
    }),
    { minLength: 1, maxLength: 8, selector: (route) => `${route.segments.join('/')}|${route.exact}` },
  )
  .map((routes) =>
    parseConfig({
      services: { users: { url: 'http://127.0.0.1:4001' }, other: { url: 'http://127.0.0.1:4002' } },
      routes: routes.map((route, index) => ({
        name: `r${index}`,
        prefix: `/${route.segments.join('/')}`,
        service: index % 2 ? 'users' : 'other',
        upstreamPath: `/up${index}`,
        exact: route.exact,
        auth: route.auth,
        ...(route.methods ? { methods: route.methods } : {}),
        ...(route.admin && route.auth === 'required' ? { roles: ['admin'] } : {}),
      })),
    }),
  );

describe('route decisions (property-based)', () => {
  const shipped = tableOf(parseConfig(shippedConfigFile()));

  it('gives every spelling of a request to the shipped routes its canonical decision, or refuses it', () => {
    fc.assert(
      fc.property(canonicalRequest, fc.array(spelling, { maxLength: 4 }), fc.boolean(), ({ segments, method }, spellings, asHead) => {
        checkSpellings(shipped, segments, method, spellings, asHead);
      }),
      PROPERTY_RUNS,
    );
  });

  it('gives every spelling its canonical decision for generated route tables too', () => {
    fc.assert(
      fc.property(generatedConfig, canonicalRequest, fc.array(spelling, { maxLength: 4 }), fc.boolean(), (config, { segments, method }, spellings, asHead) => {
        checkSpellings(tableOf(config), segments, method, spellings, asHead);
      }),
      PROPERTY_RUNS,
    );
  });

  it('lets the most specific covering route decide every method, never a weaker one', () => {
    fc.assert(
      fc.property(generatedConfig, canonicalRequest, (config, { segments, method }) => {
        const table = tableOf(config);
        const owner = oracleOwner(table.routes, segments);
        const decision = decide(table, `/${segments.join('/')}`, method);
        if (!owner) return expect(decision).toEqual({ kind: 'not_found' });
        expect(decision.kind === 'not_found' ? undefined : decision.route).toBe(owner.name);
        // HEAD is GET for every rule; any other method the owner lacks is 405, not a fall-through.
        const takes = !owner.methods || owner.methods.has(method === 'HEAD' ? 'GET' : method);
        expect(decision.kind).toBe(takes ? 'matched' : 'method_not_allowed');
      }),
      PROPERTY_RUNS,
    );
  });

  // A route whose upstream path is empty (the service's root) sent a suffixed path on as `.json`: no target at all,
  // undici refused it, and the refusal was counted against the instance (three such requests ejected it).
  it('sends every request it matches a target that starts with `/`, suffixed or not, whatever the upstream path', () => {
    fc.assert(
      fc.property(
        generatedConfig,
        canonicalRequest,
        fc.constantFrom('', '.json', '.v1.json', '%2Ejson'),
        fc.boolean(),
        fc.boolean(),
        (config, { segments, method }, suffix, trailingSlash, emptyUpstream) => {
          const routes = emptyUpstream ? config.routes.map((route) => ({ ...route, upstreamPath: '' })) : config.routes;
          const table = tableOf({ ...config, routes });
          const match = table.match(`/${segments.join('/')}${suffix}${trailingSlash ? '/' : ''}`, method);
          if (match?.kind === 'matched') expect(match.upstreamPath.startsWith('/')).toBe(true);
          // Never the services' own endpoints, in any spelling.
          if (match?.kind === 'matched') expect(routeKey(match.upstreamPath) === '/internal' || routeKey(match.upstreamPath).startsWith('/internal/')).toBe(false);
        },
      ),
      PROPERTY_RUNS,
    );
  });

  it('applies the same auth, roles and limits to HEAD as to GET on every route', () => {
    fc.assert(
      fc.property(generatedConfig, canonicalRequest, (config, { segments }) => {
        const table = tableOf(config);
        const path = `/${segments.join('/')}`;
        expect(decide(table, path, 'HEAD')).toEqual(decide(table, path, 'GET'));
      }),
      PROPERTY_RUNS,
    );
  });
});
