import { Http2ServerResponse } from 'node:http2';
import type { Request, Response } from 'koa';

/*
 * Why this file exists: koa/lib/context.js exposes `ctx.method`, `ctx.status`, `ctx.set(...)` and ~50 more through
 * the `delegates` package, which makes every getter, setter and method as a closure over ONE function literal
 * (`function(){ return this[target][name]; }`). All of those closures share one feedback vector, so the keyed load
 * `this[target][name]` sees every name and every receiver shape and goes megamorphic: a callgrind profile of the
 * gateway put ~23,500 instructions per request (of ~800k) in megamorphic keyed loads from delegates/index.js:71
 * alone. Below, each accessor is its own literal with its property name written out, so each keeps its own
 * feedback and its load stays a monomorphic named load.
 *
 * Semantics are delegates': getters return what the target returns, setters assign to the target, methods are
 * called on ctx.request / ctx.response and return what it returns. Methods take the parameters Koa's target
 * declares (none of those reads `arguments`, so dropping extra arguments is unobservable, and fixed parameters
 * stay cheaper than rest/spread in unoptimised code); the variadic ones (`accepts*`, `is`) pass every argument.
 * One shortcut: `set` of an object without array values calls Node's setHeader itself, as Koa's `set` ends up doing.
 * test/unit/koa-context-accessors.test.ts checks that every name Koa delegates is overridden here with the same
 * kind, target and arguments, so a Koa that delegates a new name fails a test instead of keeping the slow path.
 */

type HeaderValue = string | string[];
type HeaderField = string | Record<string, HeaderValue>;
type AttachmentOptions = Parameters<Response['attachment']>[1];

/**
 * Koa's response as koa/lib/response.js has it: @types/koa 3.0.3 lacks `has(field)` (delegated as `ctx.has`) and
 * splits `set` into overloads that a pass-through of either form cannot call.
 */
type KoaResponse = Response & {
  has(field: string): boolean;
  set(field: HeaderField, value?: HeaderValue): void;
};

/** What the accessors read through; `this` is a Koa context (an `Object.create(app.context)`). */
interface DelegationTargets {
  request: Request;
  response: KoaResponse;
}

/** koa/lib/context.js `delegate(proto, 'response')`, in Koa's order. */
const responseAccessors: ThisType<DelegationTargets> & object = {
  attachment(filename?: string, options?: AttachmentOptions) { return this.response.attachment(filename, options); },
  redirect(url: string) { return this.response.redirect(url); },
  remove(field: string) { return this.response.remove(field); },
  vary(field: string | string[]) { return this.response.vary(field); },
  has(field: string) { return this.response.has(field); },
  set(field: HeaderField, value?: HeaderValue) {
    // An object of single values, as koa-ratelimit sets its three headers on every request: Koa's set would build an
    // entries array, a pair per header and two closures; Node's setHeader in the same order is all it comes to.
    if (typeof field === 'object' && field !== null && !this.response.headerSent && hasOnlySingleValues(field)) {
      const { res } = this.response;
      for (const name of Object.keys(field)) res.setHeader(name, field[name]!);
      return undefined;
    }
    return this.response.set(field, value);
  },
  append(field: string, value: HeaderValue) { return this.response.append(field, value); },
  flushHeaders() { return this.response.flushHeaders(); },
  back(alt?: string) { return this.response.back(alt); },
  get status() { return this.response.status; },
  set status(value: Response['status']) { this.response.status = value; },
  get message() { return this.response.message; },
  set message(value: Response['message']) { this.response.message = value; },
  get body() { return this.response.body; },
  set body(value: Response['body']) { this.response.body = value; },
  get length() { return this.response.length; },
  set length(value: Response['length']) { this.response.length = value; },
  get type() { return this.response.type; },
  set type(value: Response['type']) { this.response.type = value; },
  get lastModified() { return this.response.lastModified; },
  set lastModified(value: Response['lastModified']) { this.response.lastModified = value; },
  get etag() { return this.response.etag; },
  set etag(value: Response['etag']) { this.response.etag = value; },
  get headerSent() { return this.response.headerSent; },
  get writable() { return this.response.writable; },
};

/** koa/lib/context.js `delegate(proto, 'request')`, in Koa's order. */
const requestAccessors: ThisType<DelegationTargets> & object = {
  acceptsLanguages(...args: Parameters<Request['acceptsLanguages']>) { return this.request.acceptsLanguages(...args); },
  acceptsEncodings(...args: Parameters<Request['acceptsEncodings']>) { return this.request.acceptsEncodings(...args); },
  acceptsCharsets(...args: Parameters<Request['acceptsCharsets']>) { return this.request.acceptsCharsets(...args); },
  accepts(...args: Parameters<Request['accepts']>) { return this.request.accepts(...args); },
  get(field: string) { return this.request.get(field); },
  is(...args: Parameters<Request['is']>) { return this.request.is(...args); },
  get querystring() { return this.request.querystring; },
  set querystring(value: Request['querystring']) { this.request.querystring = value; },
  get idempotent() { return this.request.idempotent; },
  // Koa's request has no `idempotent` or `socket` setter. delegates/index.js is sloppy-mode code, so its
  // assignment is silently dropped; a plain assignment here (strict mode) would throw. Reflect.set drops it too.
  set idempotent(value: Request['idempotent']) { Reflect.set(this.request, 'idempotent', value); },
  get socket() { return this.request.socket; },
  set socket(value: Request['socket']) { Reflect.set(this.request, 'socket', value); },
  get search() { return this.request.search; },
  set search(value: Request['search']) { this.request.search = value; },
  get method() { return this.request.method; },
  set method(value: Request['method']) { this.request.method = value; },
  get query() { return this.request.query; },
  set query(value: Request['query']) { this.request.query = value; },
  get path() { return this.request.path; },
  set path(value: Request['path']) { this.request.path = value; },
  get url() { return this.request.url; },
  set url(value: Request['url']) { this.request.url = value; },
  get accept() { return this.request.accept; },
  set accept(value: Request['accept']) { this.request.accept = value; },
  get origin() { return this.request.origin; },
  get href() { return this.request.href; },
  get subdomains() { return this.request.subdomains; },
  get protocol() { return this.request.protocol; },
  get host() { return this.request.host; },
  get hostname() { return this.request.hostname; },
  get URL() { return this.request.URL; },
  get header() { return this.request.header; },
  get headers() { return this.request.headers; },
  get secure() { return this.request.secure; },
  get stale() { return this.request.stale; },
  get fresh() { return this.request.fresh; },
  get ips() { return this.request.ips; },
  get ip() { return this.request.ip; },
};

/** No value is an array: Koa's `set` then passes every value to setHeader as it is (it only unwraps or refuses arrays). */
function hasOnlySingleValues(fields: Record<string, HeaderValue>): boolean {
  for (const name of Object.keys(fields)) if (Array.isArray(fields[name])) return false;
  return true;
}

/**
 * Defines, as own properties of `context`, a direct accessor or method for every name Koa's context delegates to
 * `ctx.request` / `ctx.response` (same kind, same target, same property attributes as delegates'). Pass an app's
 * own `app.context` (an `Object.create` of Koa's shared context prototype); Koa's prototype itself is left alone,
 * so other apps in the process (the admin listener) are unaffected.
 */
export function installDirectAccessors(context: object): void {
  Object.defineProperties(context, Object.getOwnPropertyDescriptors(responseAccessors));
  Object.defineProperties(context, Object.getOwnPropertyDescriptors(requestAccessors));
}

/** What Koa's request getters read: its app's settings and Node's request. */
interface KoaRequestSource {
  app: { proxy: boolean };
  req: { headers: Record<string, string | string[] | undefined>; httpVersionMajor: number };
}

/**
 * koa/lib/request.js `host` (3.3.0) without its array per call: Koa splits the header on commas into an array,
 * trims every piece and keeps the first; read by the tracing, the cache and the proxy on every request, that was
 * ~3k instructions per request. Same answer for every header value: the text before the first comma, trimmed
 * (`String.prototype.trim` and Koa's `.map(v => v.trim())` are one function), then Koa's userinfo rule.
 */
const fasterRequestAccessors: ThisType<KoaRequestSource> & object = {
  get host() {
    const { headers } = this.req;
    // Koa's `this.get(name)` is `req.headers[name] || ''`.
    let host = (this.app.proxy && headers['x-forwarded-host']) || '';
    if (!host) {
      if (this.req.httpVersionMajor >= 2) host = headers[':authority'] || '';
      if (!host) host = headers.host || '';
    }
    if (!host) return '';
    const text = String(host);
    const comma = text.indexOf(',');
    let first = (comma === -1 ? text : text.slice(0, comma)).trim();
    // Host header may contain userinfo (e.g., "user@host"), which is invalid per RFC 7230: Koa keeps URL's host.
    if (first.includes('@')) {
      try {
        first = new URL(`http://${first}`).host;
      } catch {
        return '';
      }
    }
    return first;
  },
};

/** Defines the request getters above as own properties of `request` (an app's own `app.request`, not Koa's prototype). */
export function installFasterRequestAccessors(request: object): void {
  Object.defineProperties(request, Object.getOwnPropertyDescriptors(fasterRequestAccessors));
}

/** What Koa's `response.length` setter reads: Node's response. */
interface KoaResponseSource {
  res: { hasHeader(name: string): boolean; setHeader(name: string, value: unknown): unknown; headersSent: boolean };
}

/**
 * `response.length` as koa/lib/response.js (3.3.0) sets it, `if (!this.has('Transfer-Encoding')) this.set('Content-Length',
 * n)`, without `set`'s array of entries, its `map` and `forEach` closures per call: Koa's body setter runs it for every
 * Buffer or string body (a cache hit's among them, ~4k instructions). An array goes to Koa's own setter (its
 * single-value rule); the getter is Koa's.
 */
function fasterResponseAccessors(koaLength: PropertyDescriptor): PropertyDescriptorMap {
  return {
    length: {
      configurable: true,
      enumerable: koaLength.enumerable ?? false,
      get: koaLength.get,
      set(this: KoaResponseSource, value: unknown) {
        if (Array.isArray(value)) return void koaLength.set!.call(this, value);
        // Koa's order: Transfer-Encoding first (`has`), then `set`'s own check that the headers are not sent yet.
        if (this.res.hasHeader('Transfer-Encoding') || this.res.headersSent) return;
        this.res.setHeader('Content-Length', value);
      },
    },
  };
}

/** Defines the response accessors above as own properties of `response` (an app's own `app.response`, not Koa's prototype). */
export function installFasterResponseAccessors(response: object): void {
  let proto: object | null = response;
  let koaLength: PropertyDescriptor | undefined;
  while (proto !== null && koaLength === undefined) {
    koaLength = Object.getOwnPropertyDescriptor(proto, 'length');
    proto = Object.getPrototypeOf(proto) as object | null;
  }
  if (koaLength?.get === undefined || koaLength.set === undefined) throw new Error("Koa's response has no length accessor");
  Object.defineProperties(response, fasterResponseAccessors(koaLength));
}

/** What Koa's `response.writable` reads: Node's response of either protocol. */
interface WritableSource {
  res: { writableEnded: boolean; socket?: { writable: boolean } | null };
}

/**
 * `response.writable` (koa/lib/response.js 3.3.0: not ended, and its socket writable) made to mean the same over
 * HTTP/2: whether the client can still be answered. On an HTTP/2 response Koa's socket is a proxy that reads the
 * stream's writable side, and Node ends that side as a HEAD request arrives (its answer carries no DATA). Koa's
 * `respond` took every HEAD over HTTP/2 for a client gone and ended it at once, skipping what it does for a HEAD
 * (Content-Length of the body it would have sent, RFC 9110 9.3.2: the fields a GET would get) and for a 204 or
 * 304 (no Content-Type or length): a HEAD the gateway answered itself (a probe, a 404, a 401, a 429) came without
 * Content-Length over HTTP/2 only. The stream's own state says whether it can still carry an answer.
 */
const http2AwareWritable: PropertyDescriptorMap = {
  writable: {
    configurable: true,
    enumerable: false,
    get(this: WritableSource) {
      const { res } = this;
      if (res.writableEnded) return false;
      if (res instanceof Http2ServerResponse) return !res.stream.closed && !res.stream.destroyed;
      // Koa's own rule for HTTP/1 (no socket: a response not yet attached to one, still writable).
      return res.socket ? res.socket.writable : true;
    },
  },
};

/** Defines `writable` above as an own property of `response` (an app's own `app.response`, not Koa's prototype). */
export function installHttp2AwareWritable(response: object): void {
  Object.defineProperties(response, http2AwareWritable);
}
