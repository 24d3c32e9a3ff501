import { hash } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { trace } from '@opentelemetry/api';
import type { Context, Middleware } from 'koa';
import type { Counter } from 'prom-client';
import { atMostEvery, type Logger } from '../../otel/logger';
import { ATTR, CACHE_RESULTS, dashedSpelling, HEADER, isGatewayOwnedHeader, isLookAlikeName, METRIC_LABEL, type CacheResult } from '../../otel/wire-names';
import { forwardedOrigin, heardByService } from '../cache-forwarded-origin';
import { createNamedResources } from '../cache-named-resources';
import type { StaleResource } from '../cache-invalidations';
import { satisfiesConditional } from '../conditional-request';
import { GatewayError, isGatewayError } from '../errors';
import { ownedRequestHeader, type RouteHeaderRules } from '../header-rules';
import type { GatewayMetrics } from '../metrics';
import { CLIENT_ONLY_FIELDS, type BackgroundFetches } from '../cache-background-fetch';
import { cacheKey, currentAge, hasValidator, isFresh, mayRevalidateInBackground, namesStored, parseCacheControl, requestHeaderValue, resourceKey, selectsStored, storability, validatorsOf, varyNames, type CachedResponse, type ResponseTap, type RouteCacheConfig } from '../response-cache';
import type { Revalidation } from '../response-cache';
import type { CacheKey, FetchStart, ResponseStore } from '../response-store';
import type { RouteTable } from '../routes';
import { clientLeft, responseClosed } from '../response-closed';
import { endToEndHeaders, forwardedHost, forwardsAuthorization, varyOf, type UnderscoreHeaderPolicy } from '../upstream-headers';

export interface ResponseCacheOptions {
  /** The `cache` of each route that has one, by route name. */
  routes: ReadonlyMap<string, RouteCacheConfig>;
  /**
   * Each of those routes' configuration as its answers are made under (its service, upstream path, request
   * rules, cache settings), as a digest: part of every variant, so a reload that changes it, or a replica that
   * runs another config, never meets the copies a shared store (Redis) kept under the old one; not of the
   * resource, so a write through either drops both's copies.
   */
  keyScopes: ReadonlyMap<string, string>;
  /** The gateway's routes: a write's answer may name (`Location`, `Content-Location`) a resource of another path it changed. */
  routeTable: Pick<RouteTable, 'match'>;
  /**
   * The routes with a cache of each service, by service: a write through any route of a service changes what every
   * cached route of it stores at the same upstream target (`/api/v1/x` and `/api/x` both forwarded to `/x`). Default:
   * each cached route alone, as its own service.
   */
  cachedRoutesOfService?: ReadonlyMap<string, readonly string[]>;
  store: ResponseStore;
  /** Response header naming the result (`X-Cache`). */
  statusHeader: string;
  /** Largest body stored, bytes. */
  maxEntryBytes: number;
  /** Longest a miss waits for another request's fetch of the same key before fetching its own, ms (`cache.lockTimeoutMs`). */
  lockTimeoutMs: number;
  /** Each route's header rules: cached copies get the response rules per request, and `Vary` on a rewritten request header is not trusted. */
  headerRules: ReadonlyMap<string, RouteHeaderRules>;
  /** Client header names with `_` (config `headersWithUnderscores`): under `allow` they reach the service. */
  underscores: UnderscoreHeaderPolicy;
  logger: Logger;
  /** Counts lookups by result (`gateway_cache_lookups_total`); none when metrics are off. */
  metrics?: GatewayMetrics;
  /**
   * Where a stale copy is fetched again while it answers under the service's `stale-while-revalidate` (RFC 5861 3):
   * requests of the cache's own through the proxy (src/cache-background-fetch.ts). Without it the directive is not
   * acted on: such a copy is fetched in the foreground, as any stale one.
   */
  background?: BackgroundFetches;
  now?: () => number;
}

/** Methods that do not change the resource (RFC 9110 9.2.1); any other invalidates what is stored for it. */
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);

/** The request directive `only-if-cached` in a Cache-Control list. */
const ONLY_IF_CACHED = /(?:^|[\s,])only-if-cached(?=$|[\s,])/i;

/**
 * The answer to `only-if-cached` when no stored answer can serve the request, whatever the reason (nothing
 * stored, or a request the cache passes by: a write, a body, a Range, an unverified credential): 504 and never
 * a trip to the service (RFC 9111 5.2.1.7).
 */
const notCached = () => new GatewayError('not_cached', 'No stored answer can serve this request, and it said Cache-Control: only-if-cached.');

/**
 * The names a request's look-alike headers stand for with `-` (`accept_language` and `accept.language` are
 * `accept-language`), or undefined when it has none. CGI, PHP, Rack and WSGI read either spelling as the same
 * header (HTTP_ACCEPT_LANGUAGE; isLookAlikeName).
 */
function underscoreTwins(headers: IncomingHttpHeaders): Set<string> | undefined {
  let twins: Set<string> | undefined;
  for (const name in headers) if (isLookAlikeName(name)) (twins ??= new Set()).add(dashedSpelling(name));
  return twins;
}

/**
 * How a fetch its waiters waited for ended: the service's answer went out (and was stored, or not); no answer went out
 * (an error, a stale stand-in); or its client left before any answer, the exchange given up for it (`abandoned`).
 */
type FetchOutcome = 'answered' | 'failed' | 'abandoned';

/**
 * Failures after which a write may still have been done by the service: it timed out or the connection failed
 * after the request may have reached it, or it answered something the gateway would not forward. Not those that
 * kept the request from it (a refused connection, no healthy or free instance).
 */
const WRITE_MAY_HAVE_HAPPENED: ReadonlySet<string> = new Set(['upstream_timeout', 'upstream_reset', 'upstream_bad_response']);

/**
 * Keys whose last answer the service would not let be stored, remembered at most this long, s (and no longer than
 * the route's ttlSeconds), and at most this many: their misses are not held behind one another (Varnish's
 * hit-for-miss). Without it, every burst of requests for an answer never stored (no-store, private, Set-Cookie)
 * queued behind one of them, and took two trips to the service instead of one.
 */
const NOT_STORED_MEMORY_SECONDS = 120;
const MAX_NOT_STORED_KEYS = 4096;

/** The fetch's outcome, or `waited too long` once `ms` passed first (its timer cleared either way). */
function atMost(done: Promise<FetchOutcome>, ms: number): Promise<FetchOutcome | 'waited too long'> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<'waited too long'>((resolve) => (timer = setTimeout(resolve, ms, 'waited too long')));
  return Promise.race([done, bound]).finally(() => clearTimeout(timer));
}

/** How often a write answered while a stored copy may be left is logged, ms (the metric counts every one). */
const INVALIDATION_WARNING_INTERVAL_MS = 10_000;

/** Request fields that make a request conditional (RFC 9110 13.1): its answer is the service's, not a revalidation's. */
const CONDITIONAL_FIELDS = ['if-none-match', 'if-modified-since', 'if-match', 'if-unmodified-since', 'if-range'];

/**
 * A response's headers as a stored copy keeps them. Not kept: framing (Koa frames the copy), the age (computed per
 * answer), what a service echoed of this request's own telemetry, which would otherwise label every later answer
 * with this request's id, and of the identity and signature the gateway sent it (`x-user-*`, `x-gateway-*`,
 * `x-consumer-*`: never passed to a client, src/middleware/proxy.ts responseHeaders). RFC 9110 6.6.1: a response without Date gets the time it was received, kept with
 * it; left out, each answer from the copy said it was made just now while its Age said otherwise.
 */
function keptHeaders(headers: Record<string, string | string[] | undefined>, now: number): Record<string, string | string[]> {
  const { 'content-length': _length, age: _age, [HEADER.requestId]: _id, [HEADER.traceresponse]: _trace, ...rest } = endToEndHeaders(headers, isGatewayOwnedHeader);
  rest.date ??= new Date(now).toUTCString();
  return rest;
}

/**
 * Where a response whose service's `Vary` lists `names` is also kept: its key's variant with the values the
 * storing request had of them (RFC 9111 4.1, as nginx's secondary key). Kept under its key alone, one variant
 * replaced the other: clients alternating `Accept-Encoding: gzip` and none took every answer from the service.
 */
/**
 * A `Vary`-named request header's value as an entry keeps it: a digest, compared for equality only. Kept as sent, a
 * `Vary: Authorization` or `Vary: Cookie` entry put the caller's token or session cookie into the store (Redis) in
 * plain text for the entry's life, where every other part of a key is hashed (cacheKey).
 */
function varyDigest(value: string | null): string | null {
  return value === null ? null : hash('sha256', value, 'base64url');
}

function varyKey(key: CacheKey, names: readonly string[], values: readonly (string | null)[]): CacheKey {
  return { resource: key.resource, variant: cacheKey([key.variant, ...names.flatMap((name, index) => [name, values[index] ?? null])]) };
}

/**
 * Stores a response under its key (the variant a lookup finds first) and, when it varies, under its vary key too,
 * where a request with the same values finds it once another variant took the key.
 */
function storeVariant(store: ResponseStore, routeName: string, key: CacheKey, entry: CachedResponse, since: FetchStart): Promise<unknown> {
  if (entry.vary.length === 0) return store.set(routeName, key, entry, since);
  return Promise.all([store.set(routeName, key, entry, since), store.set(routeName, varyKey(key, entry.vary, entry.varyValues), entry, since)]);
}

/**
 * A service's answers that are errors a stale copy may stand in for under stale-if-error, as much as no answer
 * at all (RFC 5861 4: "any situation that would result in a 500, 502, 503, or 504 HTTP response status code").
 */
const STALE_IF_ERROR_STATUSES: ReadonlySet<number> = new Set([500, 502, 503, 504]);

/** A stored copy's response headers in the order written, values as given to setHeader (Age apart). */
interface WrittenHeaders {
  names: string[];
  values: (string | string[])[];
}

/** The lifetime of an answer not stored (or no longer to be). */
const NO_LIFETIME = { lifetimeSeconds: 0, initialAgeSeconds: 0, staleIfErrorSeconds: 0, staleWhileRevalidateSeconds: 0 };

/** Response headers a 304 repeats from the stored response (RFC 9110 15.4.5). */
const NOT_MODIFIED_HEADERS = ['cache-control', 'content-location', 'date', 'etag', 'expires', 'vary', 'last-modified'];

/**
 * The response cache of routes with `cache` (mounted only when one has it). A GET or HEAD whose fresh copy
 * is stored is answered from it (`HIT`, 304 to a matching conditional request); otherwise the proxy forwards
 * it (`MISS`) and, as it streams the answer to the client, the cache keeps a copy when RFC 9111 and the
 * route allow (src/response-cache.ts `storability`). Concurrent misses for one key wait for the first one's
 * answer instead of all reaching the service. Other requests on the route are `BYPASS`; a stale copy stands
 * in for a service that cannot be reached, or that answers 500, 502, 503 or 504, while its `stale-if-error`
 * allows (`STALE`), and answers at once while its `stale-while-revalidate` allows (`STALE`), fetched again in the
 * background. A stale copy with a validator is revalidated: the service's 304 refreshes it and the client gets it
 * (`REVALIDATED`). A HEAD's 200 refreshes the stale GET copy it could have been answered with (RFC 9111 4.3.5).
 *
 * A client's own `Cache-Control: no-cache` / `max-age=0` is not obeyed: it would let any client send every
 * request through to the service. Clients that want to check freshness send a conditional request. A
 * client's `no-store` is: its answer is not stored (a stored one may still answer it).
 */
export function createResponseCache(options: ResponseCacheOptions): Middleware {
  const { store, logger } = options;
  // Written in lower case, as the rate-limit fields are (src/middleware/rate-limit.ts says why).
  const statusHeader = options.statusHeader.toLowerCase();
  const statusValues = Object.fromEntries(CACHE_RESULTS.map((result) => [result, result.toUpperCase()])) as Record<CacheResult, string>;
  const now = options.now ?? Date.now;
  const namedResources = createNamedResources({ routeTable: options.routeTable, cachedRoutes: options.routes });
  /**
   * What a write to `upstreamTarget` on `route`'s service changes, as each cached route of that service stores it.
   * Only the route written through was dropped: a copy stored through another route to the same resource (a
   * versioned alias) answered the write's client with what it had just replaced.
   */
  const writtenResources = (route: NonNullable<Context['state']['route']>, upstreamTarget: string): StaleResource[] => {
    const names = options.cachedRoutesOfService?.get(route.service) ?? (options.routes.has(route.name) ? [route.name] : []);
    return names.map((name) => ({ route: name, resource: resourceKey(name, upstreamTarget) }));
  };
  /** Misses under way by key, with their resource: a write to it lets later requests fetch their own. */
  const inFlight = new Map<string, { resource: string; done: Promise<FetchOutcome> }>();
  /** Keys whose answer was last refused by the service's own say, until when (ms): their misses do not wait on one another. */
  const notStoredUntil = new Map<string, number>();
  const rememberNotStored = (flightKey: string, policy: RouteCacheConfig) => {
    notStoredUntil.delete(flightKey);
    if (notStoredUntil.size >= MAX_NOT_STORED_KEYS) notStoredUntil.delete(notStoredUntil.keys().next().value!);
    notStoredUntil.set(flightKey, now() + Math.min(policy.ttlSeconds, NOT_STORED_MEMORY_SECONDS) * 1000);
  };
  const knownNotStored = (flightKey: string) => (notStoredUntil.get(flightKey) ?? 0) > now();
  const counters = new Map<string, Record<CacheResult, Counter.Internal | undefined>>();
  const invalidationFailures = new Map<string, Counter.Internal | undefined>();
  for (const name of options.routes.keys()) {
    const labels = { [METRIC_LABEL.routeName]: name };
    options.metrics?.cacheInvalidationFailures.inc(labels, 0);
    invalidationFailures.set(name, options.metrics?.cacheInvalidationFailures.labels(labels));
    const byResult = {} as Record<CacheResult, Counter.Internal | undefined>;
    for (const result of CACHE_RESULTS) {
      const labels = { [METRIC_LABEL.routeName]: name, [METRIC_LABEL.cacheResult]: result };
      options.metrics?.cacheLookups.inc(labels, 0);
      byResult[result] = options.metrics?.cacheLookups.labels(labels);
    }
    counters.set(name, byResult);
  }

  /** Says how the cache answered, everywhere; `counted: false` leaves the metric to the caller (a miss may end stale). */
  const record = (ctx: Context, routeName: string, result: CacheResult, counted = true) => {
    ctx.state.cache = result;
    // Node's setHeader, not Koa's ctx.set (arrays and closures per call): this runs on every cached route's request.
    ctx.res.setHeader(statusHeader, statusValues[result]);
    trace.getActiveSpan()?.setAttribute(ATTR.cache, result);
    if (counted) counters.get(routeName)?.[result]?.inc();
  };

  const mayWarnOfInvalidation = atMostEvery(INVALIDATION_WARNING_INTERVAL_MS);
  /**
   * Drops what is stored for a resource a write changed. A copy that may be left (the store failed, the other
   * workers did not confirm in time) is counted and logged, never an error: the write itself succeeded.
   */
  const dropStoredCopies = async (routeName: string, resource: string) => {
    // A fetch under way may have read the resource before the write: requests from now on do not wait for its
    // answer (which the store refuses, FetchStart), they fetch their own.
    for (const [flightKey, flight] of inFlight) if (flight.resource === resource) inFlight.delete(flightKey);
    const left = await store.invalidate(routeName, resource);
    if (left === undefined) return;
    invalidationFailures.get(routeName)?.inc();
    if (!mayWarnOfInvalidation()) return;
    logger.warn('response cache: a write was answered before its invalidation reached every copy', { route: routeName, reason: left });
  };

  /**
   * Each stored copy's headers as written to clients, when that is the same for every request: the route's response
   * rules only remove names (none writes a value taken from the request) and the gateway's CORS policy is not
   * applied. Made on the copy's first hit instead of on every one (a copy of the headers, the rules' ~12 names
   * looked up: ~3k instructions per hit). Copies a store hands out anew per read (Redis) are not kept.
   */
  const writtenHeaders = new WeakMap<CachedResponse, WrittenHeaders>();
  const headersToWrite = (ctx: Context, entry: CachedResponse, rules: RouteHeaderRules | undefined): WrittenHeaders => {
    const perRequest = ctx.state.corsApplied === true || rules?.responseWrites === true;
    if (!perRequest) {
      const known = writtenHeaders.get(entry);
      if (known !== undefined) return known;
    }
    const headers: Record<string, string | string[] | number | undefined> = { ...entry.headers };
    // A copy in Redis may come from a gateway from before keptHeaders left the names the gateway owns out (a rolling
    // deploy's old replicas still write them): every caller got the identity and signature a service echoed.
    for (const name in headers) if (isGatewayOwnedHeader(name)) delete headers[name];
    if (ctx.state.corsApplied) {
      // As the proxy does: the gateway's CORS policy, not the service's.
      for (const name of Object.keys(headers)) if (name.startsWith('access-control-')) delete headers[name];
    }
    // As the proxy does: Vary keeps the names the gateway's answer varies on (Origin for CORS, the route's varyHeaders).
    const gatewayVary = ctx.response.get('vary');
    if (gatewayVary !== '') {
      const vary = varyOf(gatewayVary, entry.headers.vary);
      if (vary) headers.vary = vary;
    }
    rules?.response?.(headers, ctx);
    const written: WrittenHeaders = { names: [], values: [] };
    for (const name in headers) {
      const value = headers[name];
      if (value === undefined) continue;
      written.names.push(name);
      written.values.push(typeof value === 'number' ? String(value) : value);
    }
    if (!perRequest && store.kind === 'memory') writtenHeaders.set(entry, written);
    return written;
  };

  /** Answers from a stored copy. */
  const serve = (ctx: Context, entry: CachedResponse, result: 'hit' | 'stale' | 'revalidated', rules: RouteHeaderRules | undefined, counted = true) => {
    const { names, values } = headersToWrite(ctx, entry, rules);
    const age = String(Math.floor(currentAge(entry, now())));
    // A 304 to a client's own conditions, from a copy answered as it is (fresh, or within a stale window).
    const notModified = entry.status === 200 && result !== 'revalidated' && satisfiesConditional(ctx.req.headers, entry);
    const res = ctx.res;
    let ageWritten = false;
    for (let i = 0; i < names.length; i++) {
      const name = names[i]!;
      if (notModified && !NOT_MODIFIED_HEADERS.includes(name) && name !== 'age') continue;
      const value = name === 'age' ? ((ageWritten = true), age) : values[i]!;
      // A repeated header (an array) through Koa's ctx.set, which refuses several values of a single-value header.
      if (typeof value === 'string') res.setHeader(name, value);
      else ctx.set(name, value);
    }
    // Not stored (computed per answer), so written last, as before the copy's own headers were kept ready.
    if (!ageWritten) res.setHeader('age', age);
    record(ctx, ctx.state.route!.name, result, counted);
    if (notModified) {
      ctx.status = 304;
      return;
    }
    ctx.status = entry.status;
    // Koa frames it (Content-Length) and leaves the body out for HEAD.
    ctx.body = entry.body;
    // Koa labels a Buffer application/octet-stream: a copy says what the service said, and nothing it did not.
    if (entry.headers['content-type'] === undefined) ctx.remove('content-type');
  };

  /**
   * A stored copy the service confirmed, its headers updated by the confirming answer's (a 304's, RFC 9111 4.3.4, or
   * a HEAD's 200, 4.3.5: all but Content-Length; the proxy made its URLs public), stored again with its new
   * lifetime. When the updated headers forbid storing it (`no-store`, `private`, `Set-Cookie`, a `Vary` of other
   * names), the stored copies of the resource go instead; when only this request's credentials do, they stay.
   */
  const refreshStored = async (revalidated: Revalidated): Promise<CachedResponse> => {
    const { routeName, key, since, entry, policy, sharedCredentialed, storable } = revalidated;
    const headers = { ...entry.headers, ...keptHeaders(revalidated.notModified, now()) };
    // The confirming answer's Age is the refreshed copy's age as the service answered (RFC 9111 4.2.3, 4.3.4): not
    // stored (computed per answer) but counted. Left out, a 304 from a cache in front of the service that said
    // `Age: 90` with `max-age=100` kept the copy fresh for 100 s, not 10.
    const verdict = storability({ status: entry.status, headers: { ...headers, age: revalidated.notModified.age }, sharedCredentialed, defaultTtlSeconds: policy.ttlSeconds, now: now(), requestedAt: revalidated.requestedAt });
    const vary = varyNames(headers.vary);
    const sameVary = vary.length === entry.vary.length && vary.every((name, index) => name === entry.vary[index]);
    const lifetime = verdict.store ? verdict : NO_LIFETIME;
    const refreshed: CachedResponse = { ...entry, headers, storedAt: now(), storedAtMonotonicMs: performance.now(), lifetimeSeconds: lifetime.lifetimeSeconds, initialAgeSeconds: lifetime.initialAgeSeconds, staleIfErrorSeconds: lifetime.staleIfErrorSeconds, staleWhileRevalidateSeconds: lifetime.staleWhileRevalidateSeconds };
    // A request with credentials refused as `credentialed, not public` is this request's matter, as on a miss: the
    // copy stays for others (dropped, any client with a cookie purged the resource's copies on each revalidation).
    const thisRequestOnly = !verdict.store && verdict.reason === 'credentialed, not public';
    if (verdict.store && sameVary) {
      if (storable) await storeVariant(store, routeName, key, refreshed, since);
    } else if (!(thisRequestOnly && sameVary)) await dropStoredCopies(routeName, key.resource);
    return refreshed;
  };

  /**
   * Fetches a stale copy again while it answers under stale-while-revalidate, as a request of the cache's own
   * (options.background): one per key at a time, which misses of the key wait on as on any fetch under way. With the
   * copy's validator it is a revalidation, and a 304 refreshes the copy. One that fails stores nothing: the copy
   * answers on until its window ends (the next request within it tries again), then a request fetches in the
   * foreground. None starts while the background fetches are at their bound: the copy still answers.
   */
  const fetchInBackground = (trigger: Context, fetch: BackgroundFetch) => {
    const { routeName, policy, key, flightKey, stale, sharedCredentialed, rules } = fetch;
    let since: FetchStart | undefined;
    let revalidated: Revalidated | undefined;
    let stored = () => Promise.resolve();
    let finished!: (outcome: FetchOutcome) => void;
    const flight = { resource: key.resource, done: new Promise<FetchOutcome>((resolve) => (finished = resolve)) };
    const started = options.background!.start(trigger, async () => {
      since = await store.fetchStarting(routeName, key.resource);
      const requestedAt = now();
      const settled = (outcome?: 'stored' | 'not stored') => {
        if (outcome === 'not stored') rememberNotStored(flightKey, policy);
        else if (outcome === 'stored') notStoredUntil.delete(flightKey);
      };
      // The fetch's own request, not the trigger's, is what the service heard: a Vary naming a field it leaves out
      // (the client's If-None-Match) must key the answer as given without it.
      const heard = (name: string) => (CLIENT_ONLY_FIELDS.includes(name) ? null : fetch.heard(name));
      const capture = captureResponse({ store, routeName, key, since, requestedAt, policy, storable: true, sharedCredentialed, maxEntryBytes: options.maxEntryBytes, rules, heard, twinned: fetch.twinned, now, settled });
      stored = capture.stored;
      const revalidation: Revalidation | undefined = hasValidator(stale.headers)
        ? {
            headers: validatorsOf(stale),
            notModified: (answer) => {
              if (!selectsStored(stale, answer)) return false;
              revalidated = { routeName, key, since: since!, requestedAt, entry: stale, notModified: answer, policy, sharedCredentialed, storable: true, rules };
              return true;
            },
          }
        : undefined;
      return { responseTap: capture.tap, revalidation };
    }, async (outcome) => {
      try {
        await stored();
        if (revalidated) await refreshStored(revalidated);
      } finally {
        // A write may have let a later request start a fetch of its own under this key.
        if (inFlight.get(flightKey) === flight) inFlight.delete(flightKey);
        finished(outcome.ok ? 'answered' : 'failed');
        // Awaited: a shutdown waits for the fetch until the store let go of what it kept for it (Redis).
        if (since) await store.fetchEnded(routeName, key.resource, since);
      }
    });
    // Set before the fetch can end: `settle` above runs no sooner than the fetch's first await.
    if (started) inFlight.set(flightKey, flight);
  };

  /** Answers from a stored copy the service's 304 confirmed (refreshStored): this client gets it whatever is stored. */
  const answerRevalidated = async (ctx: Context, revalidated: Revalidated) => {
    serve(ctx, await refreshStored(revalidated), 'revalidated', revalidated.rules, false);
  };

  /**
   * Runs a write and drops the copies it makes stale once it succeeded (or may have): `own`, and the resources its
   * answer names (Location, Content-Location; src/cache-named-resources.ts). RFC 9111 4.4: once an unsafe request to a
   * resource succeeded, what was stored for it is out of date. The proxy sends the answer before next() returns, so it
   * holds it until the copies are dropped wherever another request may read them (Redis, the other workers): a
   * client that wrote, then read through another worker or replica, got the copy from before its write.
   */
  const invalidatingWrite = async (ctx: Context, next: () => Promise<unknown>, route: NonNullable<Context['state']['route']>, own: readonly StaleResource[]) => {
    let invalidation: Promise<unknown> | undefined;
    const invalidate = (locations: readonly string[]) => {
      if (invalidation) return invalidation;
      const named = namedResources({ protocol: ctx.protocol, host: forwardedHost(ctx), path: ctx.path, route }, locations).filter((each) => !own.some((mine) => mine.route === each.route && mine.resource === each.resource));
      return (invalidation = Promise.all([...own, ...named].map((each) => dropStoredCopies(each.route, each.resource))));
    };
    ctx.state.holdResponse = (status, locations) => (status < 400 ? invalidate(locations) : undefined);
    try {
      await next();
    } catch (error) {
      // The service may have done a write whose answer never came whole: a client that retries or reads next
      // must not read the copy from before it (and, seeing its order missing, order again).
      if (isGatewayError(error) && WRITE_MAY_HAVE_HAPPENED.has(error.code)) await invalidate([]);
      throw error;
    }
    // An answer the proxy did not hold (none reached it): the locations as it went out. None at all: the client
    // left while the service had the request, which it may still have done.
    if (ctx.status < 400 || !ctx.res.headersSent) await invalidate([ctx.response.get('location'), ctx.response.get('content-location')].filter(Boolean));
  };

  return async function cacheResponses(ctx, next) {
    const route = ctx.state.route;
    if (!route) return next();
    const policy = options.routes.get(route.name);
    if (!policy) {
      // A route without a cache still writes to what a cached route of its service holds, and its answer names it
      // (an exact POST-only route refining a cached prefix route: `POST /api/orders` answered 201 with the Location
      // of an order whose 404 the prefix route stored). It invalidated nothing, and that 404 went on answering.
      if (SAFE_METHODS.has(ctx.method)) return next();
      return invalidatingWrite(ctx, next, route, writtenResources(route, upstreamTargetOf(ctx)));
    }
    const { req } = ctx;
    const headers = req.headers;
    const method = ctx.method;
    // A request header as the service hears it: none when it stops at this hop (hop-by-hop, or named in the
    // request's `Connection`). Keyed by what the client sent, `Accept-Language: fr` with `Connection:
    // accept-language` would store the answer to no language as the French one.
    const heard = heardByService(headers);
    // The resource: what the service is asked for, the route and the upstream path and query, however spelt
    // (resourceKey). A successful write drops every stored variant of it (RFC 9111 4.4), however the requests that
    // stored them were forwarded and spelt it and whichever configuration of the route they were stored under.
    const upstreamTarget = upstreamTargetOf(ctx);
    const resource = resourceKey(route.name, upstreamTarget);
    const cacheControl = requestHeaderValue(headers['cache-control']);
    const onlyIfCached = cacheControl !== null && ONLY_IF_CACHED.test(cacheControl);
    if (!SAFE_METHODS.has(method)) {
      record(ctx, route.name, 'bypass');
      // A client that asked for a stored answer only gets none rather than a trip to the service (RFC 9111 5.2.1.7).
      if (onlyIfCached) throw notCached();
      return invalidatingWrite(ctx, next, route, writtenResources(route, upstreamTarget));
    }
    // The copies are told apart by the route's varyHeaders: so must a cache in front be (a CDN, a browser), or it gave
    // the `fr` answer to `en` clients (an outside review). Named in Vary on every answer, stored or not.
    if (policy.varyHeaders.length > 0) ctx.vary(policy.varyHeaders);
    const forwardedCredential = route.forwardAuthorization && headers[HEADER.authorization] !== undefined && !ctx.state.user && !ctx.state.consumer;
    // Under `headersWithUnderscores: allow`, `accept_language` (and `accept.language`) reaches the service, which may
    // answer by it as by Accept-Language. How a server merges the spellings (first, last, joined) is its own, so a request with a look-alike
    // twin of a header the answer varies on (the route's varyHeaders, a Vary name) is never answered from a copy
    // nor stored: keyed on `Accept-Language` alone, it would store its answer as the one for its `-` value.
    const twins = options.underscores === 'allow' ? underscoreTwins(headers) : undefined;
    const twinned = (name: string) => twins?.has(name) ?? false;
    // Only GET fills an entry and only GET and HEAD read one: the key has no method, so a TRACE (which a
    // service echoes, or answers 405) must neither be answered with the GET copy nor become it. A body, a range
    // or a credential the gateway did not verify (passed on to the service) all make the answer something the
    // key cannot describe.
    if (
      (method !== 'GET' && method !== 'HEAD') ||
      Number(headers['content-length'] ?? 0) > 0 ||
      headers['transfer-encoding'] !== undefined ||
      headers.range !== undefined ||
      forwardedCredential ||
      (twins && policy.varyHeaders.some((name) => twinned(name.toLowerCase())))
    ) {
      record(ctx, route.name, 'bypass');
      if (onlyIfCached) throw notCached();
      return next();
    }

    const rules = options.headerRules.get(route.name);
    // The whole identity the service is told (X-User-Id, -Role, -Email): a user whose role changed gets new answers.
    const { user, consumer } = ctx.state;
    // And the token itself where the service reads it (forwardAuthorization): it may answer by what the gateway does
    // not tell it (the token's scopes, the client it was issued to), so one token's answer is not another's.
    const token = forwardsAuthorization(headers, route.forwardAuthorization) && !rules?.replacedRequestHeaders.has(HEADER.authorization) ? heard(HEADER.authorization) : null;
    const caller = user ? ['user', user.id, user.role, user.email, token] : consumer ? ['consumer', consumer.id, token] : undefined;
    // A cookie the service sees may be a session of its own: shared under one key only if the service says public.
    // A rule that adds a cookie still passes the client's on.
    const cookie = heard('cookie') !== null && !rules?.replacedRequestHeaders.has('cookie');
    const sharedCredentialed = policy.scope === 'public' ? caller !== undefined || cookie : caller === undefined && cookie;
    const scopeKey = policy.scope === 'user' ? (caller ?? ['anonymous']) : ['shared'];
    // The variant: everything else the service's answer may depend on that the gateway controls or forwards. The
    // route as configured (a replica on another config asks the service otherwise, so keeps copies of its own). The
    // public origin it forwards as X-Forwarded-Host/-Proto/-Port and a trusted proxy's X-Forwarded-Prefix,
    // Forwarded, X-Forwarded-Server, ... (a service may build links from them), the caller's scope and the route's
    // varyHeaders. Never a header the service is not told about or the gateway removes (X-Original-URL, untrusted
    // X-Forwarded-*): those cannot change the answer, so they cannot poison it either.
    const variant = cacheKey([
      // The target byte for byte: another spelling of the resource is another variant, never a wrong answer.
      upstreamTarget,
      options.keyScopes.get(route.name) ?? null,
      ...forwardedOrigin(ctx, heard),
      ...scopeKey,
      ...policy.varyHeaders.map((name) => heard(name.toLowerCase())),
    ]);
    const key: CacheKey = { resource, variant };
    // Not a copy varying on a look-alike name either (captureResponse stores none; a replica of an earlier version may have).
    const matches = (entry: CachedResponse) => entry.vary.every((name, index) => varyDigest(heard(name)) === entry.varyValues[index] && !twinned(name) && !isLookAlikeName(name));
    const lookup = async (): Promise<CachedResponse | undefined> => {
      const latest = await store.get(route.name, key);
      if (!latest || matches(latest)) return latest;
      if (latest.vary.length === 0) return undefined;
      // Another variant was stored last: this request's own, if stored, is under its values of the names Vary lists.
      const own = await store.get(route.name, varyKey(key, latest.vary, latest.vary.map((name) => varyDigest(heard(name)))));
      return own && matches(own) ? own : undefined;
    };

    let entry = await lookup();
    if (entry && isFresh(entry, now())) return serve(ctx, entry, 'hit', rules);
    // What misses under way and refused answers are found by: a hit needs neither.
    const flightKey = `${key.resource} ${key.variant}`;
    // RFC 5861 3: within the service's stale-while-revalidate the stale copy answers at once, and one fetch of the
    // cache's own (none while another fetch of the key is under way) gets the next one. False when it may not.
    const answeredStale = (copy: CachedResponse | undefined): boolean => {
      if (!copy || !options.background || !mayRevalidateInBackground(copy, now())) return false;
      serve(ctx, copy, 'stale', rules);
      if (!inFlight.has(flightKey)) fetchInBackground(ctx, { routeName: route.name, policy, key, flightKey, stale: copy, sharedCredentialed, rules, heard, twinned });
      return true;
    };
    if (answeredStale(entry)) return;
    let pending = inFlight.get(flightKey);
    const waitSince = performance.now();
    while (pending) {
      // Another request is fetching this very answer: wait for it rather than asking the service again. Its answer
      // is read from the store, which keeps none a write invalidated after that fetch started.
      logger.debug('response cache: waiting for a fetch in flight', { route: route.name });
      // Its deadline counts from here only when the fetch it waited for failed (nginx's proxy_cache_lock_timeout
      // bounds the wait alone): one the service answered in time, but with nothing this request can use (another
      // Vary variant, an answer not stored), leaves it a whole exchange of its own, or a healthy service answering
      // in over half the deadline would get its waiters a 504 for a timeout that never happened.
      // Bounded (cache.lockTimeoutMs, nginx's proxy_cache_lock_timeout): a fetch that answers at once but streams for
      // minutes (a feed, a long export) is over only at its end, and every miss of the key waited that long for its
      // first byte, then fetched on its own for a whole deadline more. Past the bound the waiter fetches its own answer.
      const outcome = await atMost(pending.done, Math.max(0, waitSince + options.lockTimeoutMs - performance.now()));
      // Not when the fetch was given up for its client: the service did not fail, and the waiter that takes it over
      // gets a whole deadline (its wait was bounded already); counted from the wait, it and every waiter behind it
      // were 504 from a healthy service (a review).
      if (outcome === 'failed') ctx.state.upstreamWaitSince = waitSince;
      // Read again, with no fallback to the copy read before the wait: a write while it lasted dropped that copy, and
      // it was refreshed by this HEAD's 200 or served as a stale stand-in for this request's own error.
      entry = await lookup();
      if (entry && isFresh(entry, now())) return serve(ctx, entry, 'hit', rules);
      // A copy stale as it was stored (the service took longer than its max-age) answers within stale-while-revalidate
      // as before the wait: each waiter went to the service again, twice the wait for a copy it could have had.
      if (answeredStale(entry)) return;
      // The fetch was given up because its client left: the first waiter back fetches in its place (it finds no fetch
      // under way and starts one, in the same turn), and the others wait for that one, within what is left of the
      // bound. Each went to the service on its own: one client's reset of its stream let 59 waiters through at once
      // (an outside review; nginx's proxy_cache_lock hands the lock on likewise).
      pending = outcome === 'abandoned' ? inFlight.get(flightKey) : undefined;
    }

    if (onlyIfCached) {
      record(ctx, route.name, 'miss');
      throw notCached();
    }
    record(ctx, route.name, 'miss', false);
    let release = (_outcome: FetchOutcome) => {};
    /** The service's 304 to this request's revalidation of the stored copy, with what refreshing it takes. */
    let revalidated: Revalidated | undefined;
    let stored = () => Promise.resolve();
    /** The service answered with an error the stale copy stands in for. */
    let standIn = false;
    const staleCopy = entry;
    if (staleCopy && staleCopy.staleIfErrorSeconds > 0) {
      const mayStandIn = () => currentAge(staleCopy, now()) < staleCopy.lifetimeSeconds + staleCopy.staleIfErrorSeconds;
      ctx.state.staleStandsIn = (status) => (standIn = STALE_IF_ERROR_STATUSES.has(status) && mayStandIn());
    }
    // Once the answer is stored or known never to be: the store lets go of what it kept for this fetch.
    let fetchEnded = () => {};
    // HEAD answers carry no body to keep: forwarded as they are; a GET fills the entry HEAD then uses.
    if (method === 'GET' && !inFlight.has(flightKey) && !knownNotStored(flightKey)) {
      // Waiters are let go as soon as the answer is stored or known not to be, or once this request's own
      // client stops keeping up (the service is paused for it): a slow reader must not stall them.
      let finished!: (outcome: FetchOutcome) => void;
      const flight = { resource, done: new Promise<FetchOutcome>((resolve) => (finished = resolve)) };
      inFlight.set(flightKey, flight);
      release = (outcome) => {
        // A write may have let a later request start a fetch of its own under this key.
        if (inFlight.get(flightKey) === flight) inFlight.delete(flightKey);
        finished(outcome);
        release = () => {};
      };
    }
    try {
      // A GET's answer may be stored, a HEAD's may refresh the copy it could have been answered with.
      const copy = entry;
      if (method === 'GET' || (method === 'HEAD' && copy)) {
        // Before the service is asked: a write the store hears of after this keeps this answer out.
        const since = await store.fetchStarting(route.name, resource);
        fetchEnded = () => void store.fetchEnded(route.name, resource, since);
        // The one request directive obeyed: `no-store` (RFC 9111 5.2.1.5) only keeps this client's answer out.
        const storable = !parseCacheControl(headers['cache-control']).noStore;
        // RFC 9111 4.2.3's request_time: the answer's age counts the time it took.
        const requestedAt = now();
        if (method === 'HEAD' && copy) {
          // RFC 9111 4.3.5: a HEAD's 200 tells what a GET would get now. The stored GET copy it could have been answered
          // with takes its headers and lifetime, as from a 304, while they describe the same content (its ETag,
          // Last-Modified and Content-Length); otherwise the copies go, and the next GET fetches the content anew.
          let updated: Promise<unknown> | undefined;
          ctx.state.responseTap = {
            start(status, answer) {
              if (status !== 200) return;
              updated = describesOtherContent(copy, answer)
                ? dropStoredCopies(route.name, resource)
                : refreshStored({ routeName: route.name, key, since, requestedAt, entry: copy, notModified: answer, policy, sharedCredentialed, storable, rules });
            },
            data() {},
            clientBackedUp() {},
            end() {},
          };
          stored = async () => void (await updated);
        } else {
          const settled = (outcome?: 'stored' | 'not stored') => {
            if (outcome === 'not stored') rememberNotStored(flightKey, policy);
            else if (outcome === 'stored') notStoredUntil.delete(flightKey);
            release('answered');
          };
          const capture = captureResponse({ store, routeName: route.name, key, since, requestedAt, policy, storable, sharedCredentialed, maxEntryBytes: options.maxEntryBytes, rules, heard, twinned, now, settled });
          ctx.state.responseTap = capture.tap;
          stored = capture.stored;
          // A stale copy with a validator: the service is asked whether it is still current (RFC 9111 4.3.1), and a 304
          // refreshes it instead of the whole answer coming again. Not for a request with conditions of its own: the
          // service answers those (a 304 of its then goes to the client that asked for it).
          const stale = entry;
          const ownConditions = CONDITIONAL_FIELDS.some((name) => headers[name] !== undefined);
          if (stale && hasValidator(stale.headers) && !ownConditions) {
            ctx.state.revalidation = {
              headers: validatorsOf(stale),
              notModified: (answer) => {
                if (!selectsStored(stale, answer)) return false;
                revalidated = { routeName: route.name, key, since, requestedAt, entry: stale, notModified: answer, policy, sharedCredentialed, storable, rules };
                return true;
              },
            };
          } else if (stale && ownConditions) {
            // The service's 304 to the client's own conditions goes to the client as it is, and freshens the stored
            // copy when it names it (RFC 9111 4.3.4): left stale, every conditional request (a browser's, once it
            // holds the ETag) went on to the service for as long as the copy was kept.
            let freshened: Promise<unknown> | undefined;
            const tap = capture.tap;
            ctx.state.responseTap = {
              ...tap,
              start(status, answer) {
                if (status === 304 && namesStored(stale, answer)) {
                  freshened = refreshStored({ routeName: route.name, key, since, requestedAt, entry: stale, notModified: answer, policy, sharedCredentialed, storable, rules });
                }
                tap.start(status, answer);
              },
            };
            stored = async () => void (await Promise.all([capture.stored(), freshened]));
          }
        }
      }
      await next();
      if (standIn) {
        serve(ctx, staleCopy!, 'stale', rules, false);
        release('answered');
        return;
      }
      await stored();
      if (revalidated) {
        await answerRevalidated(ctx, revalidated);
        release('answered');
        return;
      }
    } catch (error) {
      // The service could not be reached: a stale copy it allowed to stand in (stale-if-error) answers instead, to
      // HEAD as to GET (RFC 5861 names no method; HEAD is GET without the content, RFC 9110 9.3.2). So it does for
      // the service's own 500, 502, 503 and 504 (ctx.state.staleStandsIn, above).
      const stale = entry;
      if (stale && !ctx.res.headersSent && isGatewayError(error) && error.code.startsWith('upstream_') && currentAge(stale, now()) < stale.lifetimeSeconds + stale.staleIfErrorSeconds) {
        serve(ctx, stale, 'stale', rules, false);
        return;
      }
      throw error;
    } finally {
      // The client left before its answer was whole (before the head, or in the body: a service sending its head at
      // once and its body slowly let every waiter through when the client left one byte later): the fetch was given
      // up for it. Else no answer of the service's went out (an error, a stale stand-in): the fetch failed. A release
      // already made (the copy stored, the client fallen behind) stands. clientLeft tells a client's reset or close (an
      // HTTP/2 stream reset reports itself finished, not ended) from an answer the gateway cut itself (a deadline):
      // taken for a client leaving, that cut made its waiters take the fetch over one after another, each cut.
      const left = responseClosed(ctx) && clientLeft(ctx);
      release(left ? 'abandoned' : ctx.res.headersSent ? 'answered' : 'failed');
      counters.get(route.name)?.[ctx.state.cache!]?.inc();
      // The proxy returns once its exchange is over, so the answer is handed to the store (stored) or never will be.
      void stored().then(fetchEnded, fetchEnded);
    }
  };
}

/** What fetching a stale copy again in the background takes (fetchInBackground). */
interface BackgroundFetch {
  routeName: string;
  policy: RouteCacheConfig;
  key: CacheKey;
  flightKey: string;
  stale: CachedResponse;
  sharedCredentialed: boolean;
  rules: RouteHeaderRules | undefined;
  heard: (name: string) => string | null;
  twinned: (name: string) => boolean;
}

/**
 * Whether a HEAD's 200 describes other content than a stored GET copy (RFC 9111 4.3.5): a copy that is not a 200
 * (a 200 does not confirm a stored 404 or redirect: refreshed, the 404 was served with the 200's lifetime while the
 * service said the resource existed), a validator it carries (ETag, Last-Modified) that the copy does not have, or
 * a Content-Length other than the copy's.
 */
function describesOtherContent(entry: CachedResponse, answer: Record<string, string | string[] | undefined>): boolean {
  if (entry.status !== 200) return true;
  for (const name of ['etag', 'last-modified']) {
    const received = requestHeaderValue(answer[name]);
    if (received !== null && received !== requestHeaderValue(entry.headers[name])) return true;
  }
  const length = requestHeaderValue(answer['content-length']);
  return length !== null && Number(length) !== entry.body.length;
}

/** A stale copy the service's 304 confirmed, and what storing it again takes. */
interface Revalidated {
  routeName: string;
  key: CacheKey;
  since: FetchStart;
  /** When the revalidation went to the service, ms. */
  requestedAt: number;
  entry: CachedResponse;
  /** The 304's headers. */
  notModified: Record<string, string | string[] | undefined>;
  policy: RouteCacheConfig;
  sharedCredentialed: boolean;
  /** False when the client asked for its answer not to be stored. */
  storable: boolean;
  rules: RouteHeaderRules | undefined;
}

interface CaptureOptions {
  store: ResponseStore;
  routeName: string;
  key: CacheKey;
  /** Where the resource's invalidations stood as the request went to the service. */
  since: FetchStart;
  /** When the request went to the service, ms. */
  requestedAt: number;
  policy: RouteCacheConfig;
  /** False when the client asked for its answer not to be stored. */
  storable: boolean;
  sharedCredentialed: boolean;
  maxEntryBytes: number;
  rules: RouteHeaderRules | undefined;
  /** A request header's value as the service heard it (null: it did not). */
  heard: (name: string) => string | null;
  /** Whether the request has a `_` twin of the header that reaches the service (the answer must not be stored if it varies on it). */
  twinned: (name: string) => boolean;
  now: () => number;
  /**
   * Called once it is clear whether the answer is stored (`stored`: handed to the store), or is not by what the
   * service sent and would not be if asked again (`not stored`), or neither (this client's no-store, a credential
   * the next request may not carry, a status that may pass: 5xx, 429), or once the client backs up.
   */
  settled: (outcome?: 'stored' | 'not stored') => void;
}

/**
 * Statuses not stored that say nothing of the next request's answer: one that may pass (5xx, 429: coalescing
 * matters most while the service struggles) or that answers this request's own conditions (304, 412). A refusal
 * for this request's own sake (its credential, a `_` twin) says nothing either; any other would be made again.
 */
function isPassingStatus(status: number): boolean {
  return status >= 500 || status === 429 || status === 304 || status === 412;
}

/** Copies the service's response as the proxy forwards it, and stores it at the end when it may be stored. */
function captureResponse(options: CaptureOptions): { tap: ResponseTap; stored: () => Promise<void> } {
  const { policy } = options;
  let chunks: Buffer[] | undefined;
  let bytes = 0;
  let pending: Promise<void> | undefined;
  let status = 0;
  let kept: Record<string, string | string[]> = {};
  let lifetime = NO_LIFETIME;
  let vary: string[] = [];
  /**
   * When the response arrived (its head), ms: its age counts from then (RFC 9111 4.2.3's response_time), not from
   * the end of its body. Counted from the end, an answer streamed over 30 s with max-age=10 was a HIT 30 s past
   * its freshness, each answer from it saying 30 s younger than it was.
   */
  let receivedAt = 0;
  /** The same moment on the monotonic clock (CachedResponse.storedAtMonotonicMs). */
  let receivedAtMonotonic = 0;

  const tap: ResponseTap = {
    start(responseStatus, headers) {
      receivedAt = options.now();
      receivedAtMonotonic = performance.now();
      const verdict = storability({ status: responseStatus, headers, sharedCredentialed: options.sharedCredentialed, defaultTtlSeconds: policy.ttlSeconds, now: receivedAt, requestedAt: options.requestedAt });
      vary = varyNames(headers.vary);
      // The service saw the gateway's value of these, not the client's: comparing the client's would be wrong. So
      // it is for a name whose `_` or `.` twin the request carries: the service may have read that one instead. And
      // for a name spelt with `_` or `.` (`Vary: X_Api_Version`): CGI, PHP, Rack and WSGI read the client's
      // `X-Api-Version` as that header, whatever `headersWithUnderscores` says, and no one spelling of the request could key it.
      const varyTrusted = !vary.some((name) => ownedRequestHeader(name) !== undefined || options.rules?.rewrittenRequestHeaders.has(name) || options.twinned(name) || isLookAlikeName(name));
      const tooLarge = Number(headers['content-length'] ?? 0) > options.maxEntryBytes;
      if (!verdict.store || !varyTrusted || tooLarge) {
        const lasting = !(verdict.store === false && verdict.reason === 'credentialed, not public') && !isPassingStatus(responseStatus) && !vary.some(options.twinned);
        return options.settled(lasting ? 'not stored' : undefined);
      }
      if (!options.storable) return options.settled();
      kept = keptHeaders(headers, receivedAt);
      status = responseStatus;
      lifetime = verdict;
      chunks = [];
    },
    data(chunk) {
      if (!chunks) return;
      bytes += chunk.length;
      if (bytes <= options.maxEntryBytes) return void chunks.push(chunk);
      chunks = undefined;
      options.settled('not stored');
    },
    clientBackedUp() {
      // The copy now arrives only as fast as this client reads it: waiters fetch their own instead of
      // hanging on a reader that may never drain (the copy is still stored if it completes).
      options.settled();
    },
    end() {
      if (!chunks) return;
      const entry: CachedResponse = {
        status,
        headers: kept,
        body: Buffer.concat(chunks, bytes),
        storedAt: receivedAt,
        storedAtMonotonicMs: receivedAtMonotonic,
        ...lifetime,
        vary,
        varyValues: vary.map((name) => varyDigest(options.heard(name))),
      };
      chunks = undefined;
      pending = storeVariant(options.store, options.routeName, options.key, entry, options.since).then(() => undefined).finally(() => options.settled('stored'));
    },
  };
  return { tap, stored: () => pending ?? Promise.resolve() };
}

/** What the service is asked for: the route's upstream path and the request's query as sent. */
function upstreamTargetOf(ctx: Context): string {
  return ctx.querystring ? `${ctx.state.upstreamPath}?${ctx.querystring}` : ctx.state.upstreamPath!;
}
