import http from 'node:http';
import { inspect, isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import Koa from 'koa';
import { installDirectAccessors, installFasterRequestAccessors, installFasterResponseAccessors } from '../../src/koa-context-accessors';
import { listen, type TestServer } from '../helpers/servers';

type AnyFunction = (this: unknown, ...args: unknown[]) => unknown;
type Target = 'request' | 'response';
type Kind = 'getter' | 'setter' | 'access' | 'method';

/** One name koa/lib/context.js hands to `delegates`, found by looking at Koa's context, not by a list of ours. */
interface Delegation {
  name: string;
  kind: Kind;
  target: Target;
}

// Koa's own modules (untyped by @types/koa): the shared context prototype, and what it delegates to.
const koaContextProto = require('koa/lib/context') as object;
const koaTargetProtos: Record<Target, object> = {
  request: require('koa/lib/request') as object,
  response: require('koa/lib/response') as object,
};

/** The source of the three function literals `delegates` makes every getter, setter and method from. */
const delegatesSource = (() => {
  type Delegator = { method(name: string): Delegator; access(name: string): Delegator };
  const delegates = require('delegates') as (proto: object, target: string) => Delegator;
  const sample: Record<string, unknown> = {};
  delegates(sample, 'target').method('m').access('a');
  const accessor = Object.getOwnPropertyDescriptor(sample, 'a');
  return { getter: String(accessor?.get), setter: String(accessor?.set), method: String(sample.m) };
})();

function hasGetter(kind: Kind): boolean {
  return kind === 'getter' || kind === 'access';
}
function hasSetter(kind: Kind): boolean {
  return kind === 'setter' || kind === 'access';
}

function kindOf(descriptor: PropertyDescriptor | undefined): Kind | undefined {
  if (!descriptor) return undefined;
  if (typeof descriptor.value === 'function') return 'method';
  if (descriptor.get && descriptor.set) return 'access';
  if (descriptor.get) return 'getter';
  if (descriptor.set) return 'setter';
  return undefined;
}

/** What reached a stand-in ctx.request / ctx.response when a getter, setter or method ran against it. */
interface Probe {
  target?: Target;
  thisWasTarget?: boolean;
  received?: unknown[];
  returned?: unknown;
  threw?: string;
}

/**
 * Runs one getter, setter or method of a context as `ctx.<name>` on a stand-in ctx whose `request` and `response`
 * record which of them was used, with which `this`, and which value or arguments reached it.
 */
function probe(name: string, use: 'get' | 'set' | 'call', fn: AnyFunction, args: unknown[]): Probe {
  const seen: Probe = {};
  const standIn = (target: Target): object => {
    const object = {};
    const record = (self: unknown, received?: unknown[]) => Object.assign(seen, { target, thisWasTarget: self === object, received });
    Object.defineProperty(object, name, use === 'call'
      ? { value(this: unknown, ...received: unknown[]) { record(this, received); return `${target}.${name}()`; } }
      : {
        get(this: unknown) { record(this); return `${target}.${name}`; },
        set(this: unknown, value: unknown) { record(this, [value]); },
      });
    return object;
  };
  const ctx = { request: standIn('request'), response: standIn('response') };
  try {
    if (use === 'get') seen.returned = fn.call(ctx);
    else if (use === 'set') fn.call(ctx, args[0]); // what a setter returns is not observable through `=`
    else seen.returned = fn.apply(ctx, args);
  } catch (error) {
    seen.threw = String(error);
  }
  return seen;
}

/** Every name Koa's context prototype delegates, with its kind and target (Koa 3.3: 47 names). */
function koaDelegations(): Delegation[] {
  const delegations: Delegation[] = [];
  for (const name of Object.getOwnPropertyNames(koaContextProto)) {
    const descriptor = Object.getOwnPropertyDescriptor(koaContextProto, name);
    const getter = String(descriptor?.get) === delegatesSource.getter;
    const setter = String(descriptor?.set) === delegatesSource.setter;
    const method = typeof descriptor?.value === 'function' && String(descriptor.value) === delegatesSource.method;
    const kind: Kind | undefined = method ? 'method' : getter && setter ? 'access' : getter ? 'getter' : setter ? 'setter' : undefined;
    if (!kind || !descriptor) continue;
    const [use, fn] = method ? ['call', descriptor.value] as const : getter ? ['get', descriptor.get] as const : ['set', descriptor.set] as const;
    const { target } = probe(name, use, fn as AnyFunction, ['value']);
    if (!target) throw new Error(`cannot tell which object Koa's ctx.${name} delegates to`);
    delegations.push({ name, kind, target });
  }
  return delegations;
}

/**
 * The arguments to pass to a delegated method so that all the Koa target can see arrive: as many as it declares,
 * and three more when it takes any number (a rest parameter or `arguments`).
 */
function argumentsFor({ name, target }: Delegation): string[] {
  const koaMethod: unknown = Reflect.get(koaTargetProtos[target], name);
  const source = typeof koaMethod === 'function' ? String(koaMethod) : '';
  const takesAnyNumber = source === '' || source.slice(0, source.indexOf('{')).includes('...') || /\barguments\b/.test(source);
  const count = (typeof koaMethod === 'function' ? koaMethod.length : 0) + (takesAnyNumber ? 3 : 0);
  return Array.from({ length: count }, (_, index) => `argument ${index}`);
}

const delegations = koaDelegations();
const acceleratedContext = Object.create(koaContextProto) as object;
installDirectAccessors(acceleratedContext);

describe('installDirectAccessors: the names it covers', () => {
  it('finds the delegations on Koa 3.3 context (the detection is not vacuous)', () => {
    const found = Object.fromEntries(delegations.map(({ name, kind, target }) => [name, `${kind} of ${target}`]));
    expect(found).toMatchObject({
      method: 'access of request', ip: 'getter of request', accepts: 'method of request', is: 'method of request',
      status: 'access of response', set: 'method of response', headerSent: 'getter of response', socket: 'access of request',
    });
    expect(delegations.length).toBeGreaterThanOrEqual(47);
  });

  it.each(delegations)('overrides ctx.$name ($kind of ctx.$target) with its own $kind', ({ name, kind }) => {
    const ours = Object.getOwnPropertyDescriptor(acceleratedContext, name);
    const koas = Object.getOwnPropertyDescriptor(koaContextProto, name);
    expect(kindOf(ours)).toBe(kind);
    expect({ enumerable: ours?.enumerable, configurable: ours?.configurable, writable: ours?.writable })
      .toEqual({ enumerable: koas?.enumerable, configurable: koas?.configurable, writable: koas?.writable });
    for (const fn of [ours?.get, ours?.set, ours?.value]) {
      if (fn) expect(String(fn)).not.toBe(String(koas?.get ?? koas?.set ?? koas?.value));
    }
  });

  it('makes every accessor and method from its own function literal (none shares a feedback vector)', () => {
    const sources = delegations.flatMap(({ name }) => {
      const ours = Object.getOwnPropertyDescriptor(acceleratedContext, name);
      return [ours?.get, ours?.set, ours?.value].filter((fn): fn is AnyFunction => typeof fn === 'function').map(String);
    });
    expect(new Set(sources).size).toBe(sources.length);
  });

  it.each(delegations)('ctx.$name reaches the same target with the same value or arguments as Koa\'s', (delegation) => {
    const { name, kind } = delegation;
    const ours = Object.getOwnPropertyDescriptor(acceleratedContext, name);
    const koas = Object.getOwnPropertyDescriptor(koaContextProto, name);
    if (hasGetter(kind)) expect(probe(name, 'get', ours?.get as AnyFunction, [])).toEqual(probe(name, 'get', koas?.get as AnyFunction, []));
    if (hasSetter(kind)) {
      const value = { assigned: name };
      expect(probe(name, 'set', ours?.set as AnyFunction, [value])).toEqual(probe(name, 'set', koas?.set as AnyFunction, [value]));
    }
    if (kind === 'method') {
      const args = argumentsFor(delegation);
      expect(probe(name, 'call', ours?.value as AnyFunction, args)).toEqual(probe(name, 'call', koas?.value as AnyFunction, args));
    }
  });

  it('leaves Koa\'s shared context prototype and other apps alone', () => {
    installDirectAccessors(new Koa().context);
    expect(String(Object.getOwnPropertyDescriptor(koaContextProto, 'method')?.get)).toBe(delegatesSource.getter);
    expect(String(Object.getOwnPropertyDescriptor(koaContextProto, 'set')?.value)).toBe(delegatesSource.method);
    expect(Object.getOwnPropertyNames(new Koa().context)).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Over real HTTP: a Koa app with the accessors, compared with Koa's own delegates.

/** One HTTP/1.1 request as sent, `Host` included. */
interface SentRequest {
  method: string;
  path: string;
  headers: http.OutgoingHttpHeaders;
  body?: string;
}

interface Reply {
  status: number;
  statusMessage: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

function send(server: TestServer, { method, path, headers, body }: SentRequest): Promise<Reply> {
  const { hostname, port } = new URL(server.url);
  return new Promise((resolve, reject) => {
    const request = http.request({ host: hostname, port: Number(port), method, path, headers, agent: false, setHost: false }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        const { date: _date, ...rest } = response.headers;
        resolve({ status: response.statusCode ?? 0, statusMessage: response.statusMessage ?? '', headers: rest, body: Buffer.concat(chunks).toString() });
      });
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end(body);
  });
}

type ProxyMode = 'off' | 'on' | 'one hop';

async function startApp(proxy: ProxyMode, accessors: boolean, handle: Koa.Middleware): Promise<TestServer> {
  const app = new Koa({ proxy: proxy !== 'off', maxIpsCount: proxy === 'one hop' ? 1 : 0 });
  if (accessors) installDirectAccessors(app.context);
  app.use(handle);
  return listen(app.callback());
}

type Outcome = { value: unknown } | { threw: string };

function outcomeOf(run: () => unknown): Outcome {
  try {
    return { value: run() };
  } catch (error) {
    return { threw: String(error) };
  }
}

/** A value two separate requests can be compared by: no sockets, URL and Date objects by their text. */
function comparable(outcome: Outcome, ctx: Koa.Context): Outcome {
  if (!('value' in outcome)) return outcome;
  const { value } = outcome;
  if (value === ctx.req.socket) return { value: '<the request socket>' };
  if (value instanceof URL) return { value: `URL ${value.href}` };
  if (value instanceof Date) return { value: `Date ${value.toISOString()}` };
  if (value !== null && typeof value === 'object' && !Buffer.isBuffer(value)) {
    const proto: unknown = Object.getPrototypeOf(value);
    if (proto !== Object.prototype && proto !== Array.prototype && proto !== null) return { value: `<${value.constructor.name}>` };
  }
  return outcome;
}

/** A read-only call of a delegated method: name and arguments. */
type Call = [name: string, args: unknown[]];

/** Read-only calls of the request-side and `has` methods; `get` also for every header the request carried. */
function readOnlyCalls(headerNames: string[]): Call[] {
  return [
    ...[...headerNames, ...headerNames.map((header) => header.toUpperCase()), 'Referrer', 'referer', 'X-Absent'].map((header): Call => ['get', [header]]),
    ['is', []], ['is', ['json']], ['is', ['json', 'urlencoded']], ['is', ['text/*', 'application/json', 'html']], ['is', [['image/*', 'multipart']]],
    ['accepts', []], ['accepts', ['html']], ['accepts', ['json', 'html', 'text']], ['accepts', [['png', 'json']]],
    ['acceptsEncodings', []], ['acceptsEncodings', ['gzip', 'br', 'identity']], ['acceptsEncodings', [['br', 'deflate']]],
    ['acceptsCharsets', []], ['acceptsCharsets', ['utf-8', 'iso-8859-1']],
    ['acceptsLanguages', []], ['acceptsLanguages', ['en', 'fr', 'de-CH']], ['acceptsLanguages', [['fr-CH', 'en-GB']]],
    ['has', ['Content-Type']], ['has', ['x-absent']],
  ];
}

interface ReadReport {
  compared: number;
  mismatches: string[];
}

const readReports = new Map<string, ReadReport>();
let nextReportId = 0;

/**
 * Reads every delegated getter twice in the same request, through the accessors (`ctx.x`) and through Koa's own
 * delegate (`Reflect.get(koaContextProto, 'x', ctx)`), and makes every read-only call both ways.
 */
async function compareReads(ctx: Koa.Context): Promise<void> {
  const respondEtag = ctx.request.get('x-respond-etag');
  if (respondEtag) {
    ctx.response.status = 200;
    ctx.response.etag = respondEtag;
  }
  const report: ReadReport = { compared: 0, mismatches: [] };
  const compare = (what: string, ours: () => unknown, koas: () => unknown) => {
    const [a, b] = [outcomeOf(ours), outcomeOf(koas)];
    report.compared += 1;
    const same = 'value' in a && 'value' in b ? Object.is(a.value, b.value) || isDeepStrictEqual(a.value, b.value) : isDeepStrictEqual(a, b);
    if (!same) report.mismatches.push(`${what}: ${inspect(a, { depth: 1 })} != ${inspect(b, { depth: 1 })}`);
  };
  for (const { name, kind } of delegations) {
    if (hasGetter(kind)) compare(`ctx.${name}`, () => Reflect.get(ctx, name), () => Reflect.get(koaContextProto, name, ctx));
  }
  const headerNames = ctx.req.rawHeaders.filter((_, index) => index % 2 === 0);
  for (const [name, args] of readOnlyCalls(headerNames)) {
    compare(`ctx.${name}(${inspect(args)})`, () => (Reflect.get(ctx, name) as AnyFunction).apply(ctx, args), () => (Reflect.get(koaContextProto, name) as AnyFunction).apply(ctx, args));
  }
  readReports.set(ctx.request.get('x-report-id'), report);
  ctx.response.status = 204;
}

interface ReadCase extends SentRequest {
  desc: string;
  proxy: ProxyMode;
}

const forwarded = { 'x-forwarded-for': '203.0.113.7, 198.51.100.2, 192.0.2.1', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'public.example.com:8443' };
const negotiation = {
  accept: 'text/html, application/json;q=0.9, */*;q=0.1',
  'accept-encoding': 'gzip, br;q=0.5, *;q=0',
  'accept-language': 'fr-CH, fr;q=0.9, en;q=0.8',
  'accept-charset': 'utf-8, iso-8859-1;q=0.5',
};

const readCases: ReadCase[] = [
  { desc: 'a plain GET', proxy: 'off', method: 'GET', path: '/', headers: { host: 'gateway.test' } },
  { desc: 'a path, a repeated query key and a Host with a port', proxy: 'off', method: 'GET', path: '/api/users/42?expand=orders&tag=a&tag=b', headers: { host: 'api.gateway.test:8443' } },
  { desc: 'X-Forwarded-* with proxy off (ignored)', proxy: 'off', method: 'GET', path: '/p?q=1', headers: { host: 'gateway.test', ...forwarded } },
  { desc: 'X-Forwarded-* with proxy on (believed)', proxy: 'on', method: 'GET', path: '/p?q=1', headers: { host: 'gateway.test', ...forwarded } },
  { desc: 'X-Forwarded-For cut to one trusted hop', proxy: 'one hop', method: 'GET', path: '/', headers: { host: 'gateway.test', ...forwarded } },
  { desc: 'X-Forwarded-Proto with a list, proxy on', proxy: 'on', method: 'GET', path: '/', headers: { host: 'gateway.test', 'x-forwarded-proto': 'https, http' } },
  { desc: 'subdomains of a deep host', proxy: 'off', method: 'GET', path: '/', headers: { host: 'a.b.c.example.com' } },
  { desc: 'an IPv6 Host', proxy: 'off', method: 'GET', path: '/', headers: { host: '[::1]:8080' } },
  { desc: 'an IP Host (no subdomains)', proxy: 'off', method: 'GET', path: '/', headers: { host: '192.0.2.10:81' } },
  { desc: 'a JSON POST with Accept-* lists', proxy: 'off', method: 'POST', path: '/orders', headers: { host: 'gateway.test', 'content-type': 'application/json; charset=utf-8', ...negotiation }, body: '{"a":1}' },
  { desc: 'a urlencoded PUT', proxy: 'off', method: 'PUT', path: '/form', headers: { host: 'gateway.test', 'content-type': 'application/x-www-form-urlencoded' }, body: 'a=1' },
  { desc: 'a HEAD request', proxy: 'on', method: 'HEAD', path: '/', headers: { host: 'gateway.test', ...negotiation } },
  { desc: 'a DELETE (idempotent)', proxy: 'off', method: 'DELETE', path: '/x', headers: { host: 'gateway.test' } },
  { desc: 'an OPTIONS with a path of *', proxy: 'off', method: 'OPTIONS', path: '*', headers: { host: 'gateway.test' } },
  { desc: 'a PATCH (not idempotent)', proxy: 'off', method: 'PATCH', path: '/x', headers: { host: 'gateway.test', 'content-type': 'text/plain' }, body: 'x' },
  { desc: 'a conditional GET that is fresh', proxy: 'off', method: 'GET', path: '/', headers: { host: 'gateway.test', 'if-none-match': '"v1"', 'x-respond-etag': '"v1"' } },
  { desc: 'a conditional GET that is stale', proxy: 'off', method: 'GET', path: '/', headers: { host: 'gateway.test', 'if-none-match': '"v0"', 'x-respond-etag': '"v1"' } },
  { desc: 'Referer, and the same header twice', proxy: 'off', method: 'GET', path: '/', headers: { host: 'gateway.test', referer: 'http://gateway.test/from', 'x-twice': ['a', 'b'] } },
  { desc: 'an absolute-form request target', proxy: 'off', method: 'GET', path: 'http://other.test:9/x/y?z=1', headers: { host: 'gateway.test' } },
  { desc: 'an empty query string and encoded path', proxy: 'off', method: 'GET', path: '/a%20b/%C3%A9?', headers: { host: 'gateway.test' } },
];

describe('installDirectAccessors: reads over HTTP equal Koa\'s own delegates', () => {
  const servers = {} as Record<ProxyMode, TestServer>;

  beforeAll(async () => {
    for (const mode of ['off', 'on', 'one hop'] as const) servers[mode] = await startApp(mode, true, compareReads);
  });
  afterAll(async () => {
    await Promise.all(Object.values(servers).map((server) => server.close()));
  });

  async function readReport(proxy: ProxyMode, request: SentRequest): Promise<ReadReport & { status: number }> {
    const id = String(nextReportId++);
    const reply = await send(servers[proxy], { ...request, headers: { ...request.headers, 'x-report-id': id } });
    const report = readReports.get(id);
    readReports.delete(id);
    return { status: reply.status, compared: report?.compared ?? 0, mismatches: report?.mismatches ?? ['no report'] };
  }

  const getterCount = delegations.filter(({ kind }) => hasGetter(kind)).length;

  it.each(readCases)('$desc', async ({ proxy, method, path, headers, body }) => {
    const report = await readReport(proxy, { method, path, headers, body });
    expect(report.mismatches).toEqual([]);
    expect(report.status).toBe(204);
    expect(report.compared).toBeGreaterThan(getterCount);
  });

  it('holds for generated methods, paths, queries, hosts, X-Forwarded-* and headers', async () => {
    const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,5}[a-z0-9])?$/);
    const host = fc.tuple(fc.array(label, { minLength: 1, maxLength: 4 }), fc.option(fc.integer({ min: 1, max: 65535 }), { nil: undefined }))
      .map(([labels, port]) => labels.join('.') + (port === undefined ? '' : `:${port}`));
    const segment = fc.stringMatching(/^([A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-F]{2}){0,8}$/);
    const queryPart = fc.stringMatching(/^([A-Za-z0-9._~!$'()*+,;:@/?-]|%[0-9A-F]{2}){0,6}$/);
    const query = fc.option(fc.array(fc.tuple(queryPart, fc.option(queryPart, { nil: undefined })), { maxLength: 4 })
      .map((pairs) => `?${pairs.map(([key, value]) => (value === undefined ? key : `${key}=${value}`)).join('&')}`), { nil: '' });
    const path = fc.tuple(fc.array(segment, { maxLength: 4 }), query).map(([segments, search]) => `/${segments.join('/')}${search}`);
    const headerName = fc.stringMatching(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}$/).map((name) => `X-${name}`);
    const headerValue = fc.stringMatching(/^[\x21-\x7e]([\x20-\x7e]{0,24}[\x21-\x7e])?$/);
    const optional = <T>(arbitrary: fc.Arbitrary<T>) => fc.option(arbitrary, { nil: undefined });
    const request = fc.record({
      proxy: fc.constantFrom<ProxyMode>('off', 'on', 'one hop'),
      method: fc.constantFrom('GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH'),
      path,
      host,
      forwardedFor: optional(fc.array(fc.ipV4(), { minLength: 1, maxLength: 3 }).map((ips) => ips.join(', '))),
      forwardedProto: optional(fc.constantFrom('http', 'https', 'https, http', 'wss')),
      forwardedHost: optional(host),
      accept: optional(fc.constantFrom(negotiation.accept, 'application/json', '*/*', 'image/png;q=0.5, text/*')),
      acceptEncoding: optional(fc.constantFrom(negotiation['accept-encoding'], 'identity', 'deflate, gzip;q=0')),
      acceptLanguage: optional(fc.constantFrom(negotiation['accept-language'], 'en-GB', '*')),
      contentType: optional(fc.constantFrom('application/json', 'text/plain; charset=utf-8', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'image/png')),
      referer: optional(fc.constantFrom('http://gateway.test/back', 'https://elsewhere.test/')),
      extra: fc.array(fc.tuple(headerName, headerValue), { maxLength: 4 }),
    });

    await fc.assert(
      fc.asyncProperty(request, async (generated) => {
        const headers: http.OutgoingHttpHeaders = { host: generated.host };
        const optionalHeaders: [string, string | undefined][] = [
          ['x-forwarded-for', generated.forwardedFor], ['x-forwarded-proto', generated.forwardedProto], ['x-forwarded-host', generated.forwardedHost],
          ['accept', generated.accept], ['accept-encoding', generated.acceptEncoding], ['accept-language', generated.acceptLanguage],
          ['content-type', generated.contentType], ['referer', generated.referer],
        ];
        for (const [name, value] of [...optionalHeaders, ...generated.extra]) if (value !== undefined) headers[name] = value;
        const body = generated.contentType && generated.method !== 'GET' && generated.method !== 'HEAD' ? 'body' : undefined;
        const report = await readReport(generated.proxy, { method: generated.method, path: generated.path, headers, body });
        expect(report.mismatches).toEqual([]);
        expect(report.compared).toBeGreaterThan(getterCount);
      }),
      { seed: 20260417, numRuns: 60 },
    );
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Effects: the same assignments and calls on a ctx with the accessors and on plain Koa, compared by what each
// request ends up as (every delegated getter, the response headers) and by the reply on the wire.

type Operation = { assign: string; value: unknown } | { call: string; args: unknown[] };

interface EffectCase {
  desc: string;
  operations: Operation[];
  headers?: http.OutgoingHttpHeaders;
}

const assign = (name: string, value: unknown): Operation => ({ assign: name, value });
const call = (name: string, ...args: unknown[]): Operation => ({ call: name, args });

const effectCases: EffectCase[] = [
  { desc: 'a status', operations: [assign('status', 201)] },
  { desc: '204, which drops the body', operations: [assign('body', 'dropped'), assign('status', 204)] },
  { desc: 'an out-of-range status (refused)', operations: [assign('status', 99), assign('status', 1000)] },
  { desc: 'a non-integer status (refused)', operations: [assign('status', '200'), assign('status', 200.5)] },
  { desc: 'a message', operations: [assign('status', 200), assign('message', 'Fine Indeed')] },
  { desc: 'a string body', operations: [assign('body', 'hello')] },
  { desc: 'an HTML body', operations: [assign('body', '<p>hi</p>')] },
  { desc: 'a Buffer body and its length', operations: [assign('body', Buffer.from('bytes')), assign('length', 5)] },
  { desc: 'a JSON body', operations: [assign('body', { a: 1, b: [true, null] })] },
  { desc: 'a body set then cleared', operations: [assign('body', 'x'), assign('body', null)] },
  { desc: 'types by name, extension, full type, and removed', operations: [assign('type', 'json'), assign('type', '.html'), assign('type', 'text/plain; charset=ascii'), assign('type', 'png'), assign('type', '')] },
  { desc: 'an unknown type', operations: [assign('body', 'x'), assign('type', 'nonsense')] },
  { desc: 'Last-Modified from a Date and from a string', operations: [assign('lastModified', new Date(Date.UTC(2015, 9, 21, 7, 28))), assign('lastModified', 'Wed, 21 Oct 2015 07:28:00 GMT')] },
  { desc: 'ETags strong, weak and bare', operations: [assign('etag', 'abc'), assign('etag', 'W/"abc"'), assign('etag', '"quoted"')] },
  { desc: 'the getter-only headerSent and writable (not assignable)', operations: [assign('headerSent', true), assign('writable', false)] },
  { desc: 'set with one value, several values, a number, and an object', operations: [call('set', 'X-One', '1'), call('set', 'X-Many', ['a', 'b']), call('set', 'X-Num', 5), call('set', { 'X-A': '1', 'X-B': ['2', '3'] })] },
  { desc: 'set with an invalid header value (refused by Node)', operations: [call('set', 'X-Bad', 'a\r\nb')] },
  { desc: 'append to a header, and to an absent one', operations: [call('set', 'X-A', '1'), call('append', 'X-A', '2'), call('append', 'X-A', ['3', '4']), call('append', 'Link', '<a>')] },
  { desc: 'remove a header, and an absent one', operations: [call('set', 'X-A', '1'), call('remove', 'x-a'), call('remove', 'X-Absent')] },
  { desc: 'vary by one field, a list, and *', operations: [call('vary', 'Origin'), call('vary', ['Accept', 'origin']), call('vary', '*')] },
  { desc: 'has before and after set, any case', operations: [call('has', 'X-A'), call('set', 'x-a', '1'), call('has', 'X-A'), call('has', 'x-a')] },
  { desc: 'attachment with a name, with options, and bare', operations: [call('attachment', 'report.pdf'), call('attachment', 'résumé final.txt', { type: 'inline' }), call('attachment')] },
  { desc: 'redirect to a path (text)', operations: [call('redirect', '/login')] },
  { desc: 'redirect to a URL (HTML, accepted)', headers: { accept: 'text/html' }, operations: [call('redirect', 'https://example.com/a b?c=d')] },
  { desc: 'redirect after a 301 status', operations: [assign('status', 301), call('redirect', '/moved')] },
  { desc: 'back to a same-origin Referer', headers: { referer: 'http://gateway.test/from' }, operations: [call('back')] },
  { desc: 'back from a foreign Referer to the alternative', headers: { referer: 'https://elsewhere.test/' }, operations: [call('back', '/alt')] },
  { desc: 'back without a Referer', operations: [call('back')] },
  { desc: 'flushHeaders, then a set that is ignored', operations: [call('set', 'X-Early', '1'), assign('status', 200), call('flushHeaders'), call('set', 'X-Late', '1'), call('set', { 'X-Late-Object': '1', 'X-Late-Number': 2 }), call('remove', 'X-Early')] },
  { desc: 'set of an object naming one header twice, in two cases: the later wins', operations: [call('set', { 'X-A': '1', 'x-a': '2', 'X-Count': 3 })] },
  { desc: 'request method', operations: [assign('method', 'POST'), assign('method', 'patch')] },
  { desc: 'request url', operations: [assign('url', '/elsewhere?x=1&x=2')] },
  { desc: 'request path (keeps the query)', operations: [assign('path', '/p/q'), assign('path', '/p/q')] },
  { desc: 'request query from an object', operations: [assign('query', { a: '1', b: ['2', '3'] })] },
  { desc: 'request querystring and search', operations: [assign('querystring', 'a=1&b=2'), assign('search', '?s=1'), assign('search', '')] },
  { desc: 'request accept (the negotiator)', operations: [assign('accept', { marker: 'replaced' })] },
  { desc: 'the getter-only idempotent and socket (silently not assigned)', operations: [assign('idempotent', false), assign('socket', null)] },
];

const pendingEffects = new Map<string, Operation[]>();
const effectReports = new Map<string, { outcomes: (Outcome & { headers: http.OutgoingHttpHeaders })[]; state: Record<string, unknown> }>();
let nextEffectId = 0;

/** Applies a case's operations the way application code does (`ctx.x = v`, `ctx.x(...)`), then records the state. */
function applyOperations(label: string): Koa.Middleware {
  return async function applyOperations(ctx) {
    const id = ctx.request.get('x-case');
    // The response headers after each operation too: a later operation may overwrite an earlier one's effect.
    const outcomes = (pendingEffects.get(id) ?? []).map((operation) => ({
      ...comparable(outcomeOf(() => ('assign' in operation
        ? Reflect.set(ctx, operation.assign, operation.value)
        : (Reflect.get(ctx, operation.call) as AnyFunction).apply(ctx, operation.args))), ctx),
      headers: ctx.res.getHeaders(),
    }));
    const state: Record<string, unknown> = {};
    for (const { name, kind } of delegations) {
      if (hasGetter(kind)) state[name] = comparable(outcomeOf(() => Reflect.get(koaContextProto, name, ctx)), ctx);
    }
    state['response headers'] = ctx.res.getHeaders();
    state['status line'] = [ctx.res.statusCode, ctx.res.statusMessage];
    effectReports.set(`${label} ${id}`, { outcomes, state });
  };
}

describe('installDirectAccessors: assignments and calls have Koa\'s effects', () => {
  let withAccessors: TestServer;
  let plainKoa: TestServer;

  beforeAll(async () => {
    withAccessors = await startApp('off', true, applyOperations('accessors'));
    plainKoa = await startApp('off', false, applyOperations('koa'));
  });
  afterAll(async () => {
    await Promise.all([withAccessors.close(), plainKoa.close()]);
  });

  async function effectsOf(operations: Operation[], headers: http.OutgoingHttpHeaders = {}) {
    const id = String(nextEffectId++);
    pendingEffects.set(id, operations);
    const request = { method: 'GET', path: '/start?from=test', headers: { host: 'gateway.test', ...headers, 'x-case': id } };
    const [accessorsReply, koaReply] = [await send(withAccessors, request), await send(plainKoa, request)];
    pendingEffects.delete(id);
    const result = (label: string, reply: Reply) => ({ reply, ...effectReports.get(`${label} ${id}`) });
    return { accessors: result('accessors', accessorsReply), koa: result('koa', koaReply) };
  }

  it.each(effectCases)('$desc', async ({ operations, headers }) => {
    const { accessors, koa } = await effectsOf(operations, headers);
    expect(accessors.outcomes).toHaveLength(operations.length);
    expect(accessors).toEqual(koa);
  });

  it('holds for generated header operations, statuses, bodies, types and messages', async () => {
    const headerName = fc.oneof(
      fc.stringMatching(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,10}$/).map((name) => `X-${name}`),
      fc.constantFrom('Content-Type', 'Vary', 'Link', 'Set-Cookie', 'Cache-Control', 'ETag', 'x-a', 'X-A'),
    );
    const headerValue = fc.stringMatching(/^[\x21-\x7e]([\x20-\x7e]{0,20}[\x21-\x7e])?$/);
    const values = fc.oneof(headerValue, fc.array(headerValue, { maxLength: 3 }));
    const operation: fc.Arbitrary<Operation> = fc.oneof(
      fc.tuple(headerName, values).map(([name, value]) => call('set', name, value)),
      fc.dictionary(headerName, values, { maxKeys: 3, noNullPrototype: true }).map((fields) => call('set', fields)),
      fc.tuple(headerName, values).map(([name, value]) => call('append', name, value)),
      headerName.map((name) => call('remove', name)),
      fc.oneof(headerName, fc.array(headerName, { maxLength: 3 })).map((fields) => call('vary', fields)),
      headerName.map((name) => call('has', name)),
      fc.oneof(fc.integer({ min: 200, max: 599 }), fc.constantFrom(0, 99, 1000)).map((status) => assign('status', status)),
      fc.oneof(fc.string({ maxLength: 20 }), fc.constant(null), fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ maxLength: 5 }), { maxKeys: 2, noNullPrototype: true }))
        .map((body) => assign('body', body)),
      fc.constantFrom('json', 'html', '.png', 'text/plain; charset=utf-8', 'nonsense', '').map((type) => assign('type', type)),
      fc.stringMatching(/^[\x20-\x7e]{0,20}$/).map((message) => assign('message', message)),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(operation, { minLength: 1, maxLength: 6 }), async (operations) => {
        const { accessors, koa } = await effectsOf(operations);
        expect(accessors.outcomes).toHaveLength(operations.length);
        expect(accessors).toEqual(koa);
      }),
      { seed: 20260418, numRuns: 40 },
    );
  });

  it('the tables above assign every delegated setter and call every delegated method', () => {
    const assigned = new Set(effectCases.flatMap(({ operations }) => operations.flatMap((operation) => ('assign' in operation ? [operation.assign] : []))));
    const called = new Set([
      ...effectCases.flatMap(({ operations }) => operations.flatMap((operation) => ('call' in operation ? [operation.call] : []))),
      ...readOnlyCalls(['Host']).map(([name]) => name),
    ]);
    expect(delegations.filter(({ kind }) => hasSetter(kind)).map(({ name }) => name).filter((name) => !assigned.has(name))).toEqual([]);
    expect(delegations.filter(({ kind }) => kind === 'method').map(({ name }) => name).filter((name) => !called.has(name))).toEqual([]);
  });
});

describe("the faster request.host: Koa's answer for every Host, X-Forwarded-Host and :authority", () => {
  const koaRequestProto = koaTargetProtos.request;
  const fasterRequest = Object.create(koaRequestProto) as object;
  installFasterRequestAccessors(fasterRequest);

  /** Koa's request (as `app.request` is built) and ours over one app and Node request. */
  function hostOf(proto: object, proxy: boolean, httpVersionMajor: number, headers: Record<string, string>): string | { threw: string } {
    const request = Object.assign(Object.create(proto) as object, { app: { proxy }, req: { headers, httpVersionMajor } }) as unknown as { host: string };
    try {
      return request.host;
    } catch (error) {
      return { threw: (error as Error).name };
    }
  }

  // Values that reach the branches: commas, white space around them, userinfo (valid and not), IPv6, empty parts.
  const piece = fc.oneof(
    fc.constantFrom('example.com', 'a.example:8080', '[::1]:3000', 'user@host', 'user:pw@host:81', '@', 'a@[bad', ' ', '\t', '', ',', ' , ', '\u00a0', '\ufeff'),
    fc.string({ maxLength: 6 }),
  );
  const headerValue = fc.array(piece, { maxLength: 4 }).map((pieces) => pieces.join(''));

  it('is the same as Koa 3.3 for generated headers, with and without proxy trust, over HTTP/1.1 and HTTP/2', () => {
    fc.assert(
      fc.property(fc.boolean(), fc.constantFrom(1, 2), fc.option(headerValue), fc.option(headerValue), fc.option(headerValue), (proxy, major, host, forwarded, authority) => {
        const headers: Record<string, string> = {};
        if (host !== null) headers.host = host;
        if (forwarded !== null) headers['x-forwarded-host'] = forwarded;
        if (authority !== null) headers[':authority'] = authority;
        expect(hostOf(fasterRequest, proxy, major, headers)).toEqual(hostOf(koaRequestProto, proxy, major, headers));
      }),
      { seed: 20261203, numRuns: 2000 },
    );
  });

  it.each([
    ['a.example, b.example', 'a.example'],
    ['  a.example  ,b', 'a.example'],
    ['user@a.example:81', 'a.example:81'],
    ['a@[bad', ''],
    ['', ''],
  ])('Host %j reads as %j', (host, expected) => {
    expect(hostOf(fasterRequest, false, 1, { host })).toBe(expected);
    expect(hostOf(koaRequestProto, false, 1, { host })).toBe(expected);
  });
});

describe("the faster response.length setter: Koa's effect for every value and response state", () => {
  const koaResponseProto = koaTargetProtos.response;
  const fasterResponse = Object.create(koaResponseProto) as object;
  installFasterResponseAccessors(fasterResponse);

  /** A Node response as far as Koa's length setter and getter reach it: its headers, whether they were sent. */
  function effectOf(proto: object, initial: Record<string, string>, headersSent: boolean, value: unknown): { headers: Record<string, unknown>; threw?: string; length?: unknown } {
    const headers: Record<string, unknown> = { ...initial };
    const res = {
      headersSent,
      hasHeader: (name: string) => name.toLowerCase() in headers,
      getHeader: (name: string) => headers[name.toLowerCase()],
      getHeaders: () => ({ ...headers }),
      setHeader: (name: string, given: unknown) => {
        if (given === undefined) throw Object.assign(new TypeError('invalid value'), { code: 'ERR_HTTP_INVALID_HEADER_VALUE' });
        headers[name.toLowerCase()] = given;
      },
      removeHeader: (name: string) => delete headers[name.toLowerCase()],
    };
    const response = Object.assign(Object.create(proto) as object, { res, _body: undefined }) as unknown as { length: unknown };
    try {
      response.length = value;
    } catch (error) {
      return { headers, threw: (error as Error).name };
    }
    return { headers, length: response.length };
  }

  it('sets, keeps or refuses Content-Length as Koa 3.3 does', () => {
    fc.assert(
      fc.property(
        fc.constantFrom<Record<string, string>>({}, { 'transfer-encoding': 'chunked' }, { 'content-length': '7' }, { 'content-type': 'text/plain' }),
        fc.boolean(),
        fc.oneof(fc.nat(), fc.constantFrom('12', '', undefined, null, 1.5, -1), fc.array(fc.nat(), { maxLength: 2 })),
        (initial, headersSent, value) => {
          expect(effectOf(fasterResponse, initial, headersSent, value)).toEqual(effectOf(koaResponseProto, initial, headersSent, value));
        },
      ),
      { seed: 20261203, numRuns: 500 },
    );
  });
});
