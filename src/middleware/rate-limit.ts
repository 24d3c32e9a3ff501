import net from 'node:net';
import { trace } from '@opentelemetry/api';
import type { Redis } from 'ioredis';
import type { Context, Middleware } from 'koa';
import { atMostEvery, type Logger } from '../../otel/logger';
import { ATTR } from '../../otel/wire-names';
import { GatewayError, isGatewayError } from '../errors';
import { rateLimitDecisionCounters, type GatewayMetrics } from '../metrics';
import { createWindowCounter, memoryDriverSeconds, memoryWindowStore, type PrimaryStoreClient, type RateLimitWindows, type WindowCount, type WindowLeft } from '../rate-limit-store';

/** The state a memory window keeps per client (koa-ratelimit's driver, leases); `reset` is in seconds on its store's clock. */
export interface WindowEntry {
  reset: number;
}

/**
 * The memory driver's store. koa-ratelimit never deletes from its Map, so a stream of distinct client ids
 * would grow it forever; this one sweeps expired windows when full and then drops live ones until a tenth
 * of it is free. Freed by the sweep alone, a few expired windows made room for a few inserts, each next one
 * walked the whole table again (100,000 entries, ~1-2 ms) for clients that kept it just under full.
 *
 * Which live windows go: the least spent first (`spentOf`), the oldest among equals. Dropped oldest first, a client
 * that had spent its window (a guesser of passwords) pushed it out by opening a bound's worth of fresh ones, one
 * request from each of 100,000 networks (an IPv6 /48 holds 65,536 /64s), and started afresh; forgetting a window
 * with little spent forgives little. Now pushing out a spent window takes filling nine tenths of the table with
 * windows spent as far: the limit's worth of requests from each of those networks. Its cost, measured on 100,000
 * windows (a million inserts): 4-7 ms per make-room walk, one per 10,000 new clients, against 3 ms oldest first.
 */
export class BoundedWindowStore<T extends WindowEntry = WindowEntry> extends Map<string, T> {
  /**
   * `nowSeconds`: the clock its windows' `reset` is on; default the memory driver's (memoryDriverSeconds).
   * `spentOf`: how much of a window is spent (what forgetting it gives back); default none, the oldest go first.
   */
  constructor(
    private readonly maxEntries: number,
    private readonly nowSeconds: () => number = memoryDriverSeconds,
    private readonly spentOf?: (window: T) => number,
  ) {
    super();
  }

  override set(key: string, value: T): this {
    if (this.size >= this.maxEntries && !this.has(key)) this.makeRoom();
    return super.set(key, value);
  }

  private makeRoom(): void {
    const nowSeconds = this.nowSeconds();
    // One walk drops the expired windows and reads what the live ones have spent (without `spentOf`, 0 each: the
    // oldest go), noting the least and how many share it: a crowd of fresh windows needs no sort.
    const spent = new Float64Array(this.size);
    let live = 0;
    let least = Infinity;
    let sharingLeast = 0;
    for (const [key, entry] of this) {
      if (entry.reset < nowSeconds) {
        this.delete(key);
        continue;
      }
      const value = this.spentOf ? this.spentOf(entry) : 0;
      spent[live++] = value;
      if (value === least) sharingLeast++;
      else if (value < least) {
        least = value;
        sharingLeast = 1;
      }
    }
    // Room for a tenth more before the next walk: the least spent live windows go to make it, not one per insert.
    let excess = live - (this.maxEntries - Math.max(1, Math.floor(this.maxEntries / 10)));
    if (excess <= 0) return;
    // The excess-th least spent window's count: every window spent less goes, and of those spent just so, the oldest.
    const threshold = sharingLeast >= excess ? least : spent.slice(0, live).sort()[excess - 1]!;
    let spentAsFarLeft = excess;
    for (let i = 0; i < live; i++) if (spent[i]! < threshold) spentAsFarLeft--;
    let i = 0;
    for (const key of this.keys()) {
      const value = spent[i++]!;
      if (value < threshold || (value === threshold && spentAsFarLeft-- > 0)) {
        this.delete(key);
        if (--excess === 0) return;
      }
    }
  }
}

/**
 * Where windows are counted: per process (`windows` keeps them across config reloads), in the cluster primary
 * for every worker of this gateway (src/workers.ts), or shared by every replica through Redis.
 */
export type RateLimitStore =
  | { kind: 'memory'; maxTrackedClients: number; windows?: RateLimitWindows }
  | { kind: 'primary'; client: PrimaryStoreClient }
  | { kind: 'redis'; client: Redis; keyPrefix: string };

export interface RateLimiterOptions {
  /** Policy name, shown in `RateLimit-Policy`, logs and metrics, and part of the store key. */
  name: string;
  /**
   * Whose policy it is: a route's (`routes[].rateLimit`, named after the route) or the gateway's own (`default`,
   * `login`, `login-account`, `consumer-<id>`). Route windows are stored under `route:<name>`, so a route named
   * like one of the gateway's policies never counts with it (a route named `login` spent the login attempts).
   */
  owner: 'route' | 'gateway';
  max: number;
  windowMs: number;
  store: RateLimitStore;
  /** When the store cannot answer: `allow` (default) or `reject` with 503. */
  onStoreFailure?: 'allow' | 'reject';
  logger: Logger;
  /** Counts every decision (`gateway_rate_limit_decisions_total`) under this policy's name; none when metrics are off. */
  metrics?: GatewayMetrics;
  /** IPv6 clients are counted per network of this many bits (see `clientNetworkKey`). Default 64; 128 = per address. */
  ipv6PrefixLength?: number;
  /**
   * Shows this policy's window only on the answer it refuses (429, with `Retry-After`), never on one it admits.
   * Default false. For a window clients share with others they must learn nothing of: login per account is spent by
   * every attempt from anyone, and its `r` and `t` told any client how often, and since when, someone had tried to
   * log in as that user (one wrong guess sufficed to watch an account's logins; draft-ietf-httpapi-ratelimit-headers,
   * "Information disclosure": error responses counted against a quota let a client probe another user's traffic).
   */
  hiddenUntilRefused?: boolean;
}

export interface RateLimiter {
  readonly name: string;
  /**
   * Calls `next` when `key` is under its limit, throws `rate_limited` otherwise. `key` is who is limited:
   * by default the client's network (`clientNetworkKey` of `ctx.ip`); a caller may name another (an account).
   */
  check(ctx: Context, next: () => Promise<void>, key?: string): Promise<void>;
  /**
   * Throws `rate_limited` when `key`'s window has nothing left for one more request, counting nothing: for a budget
   * spent only by some requests (failed authentications) that must still stop the next one before it costs anything.
   * The requests of `key` that passed it and are not counted yet count as spent: one that passes holds its place
   * until `check` counts it (under any key: the caller's, once authenticated) or it calls the function returned,
   * which it must once it ends. A store that cannot answer lets it pass (the `check` that follows applies the
   * store-down policy).
   */
  refuseIfSpent(ctx: Context, key?: string): Promise<() => void>;
}

/** A policy checked for the current request: what the rate-limit fields say of it (`ctx.state.rateLimits`). */
export interface CheckedRateLimit {
  name: string;
  /**
   * Which policy it is, whatever its name: where its windows are stored (`route:<name>` for a route's). A route may be
   * named like one of the gateway's policies (`consumer-acme`); kept apart by name, the consumer's check replaced the
   * route's in the fields, and a 429 said Retry-After 10 to a client the route then refused for a minute more.
   */
  storeName: string;
  /** Its `RateLimit-Policy` item. */
  policy: string;
  windowSeconds: number;
  count: WindowCount;
}

/** How often a store outage is logged while it lasts, ms. */
const STORE_FAILURE_LOG_INTERVAL_MS = 10_000;

/**
 * Places let go that a request waits through in refuseIfSpent before it is refused for now (Retry-After 1): others
 * may take each place first, and its wait stays bounded however busy its network is.
 */
const MOST_WAITS_FOR_A_PLACE = 10;

/** A refusal's count of a window with nothing left for the request (`reset`: when to come back, by default the window's end). */
function spentCount(window: WindowLeft, reset = window.reset): WindowCount {
  return { admitted: false, remaining: 0, total: window.total, reset };
}

/**
 * Times in a row refuseIfSpent asks the store again because a place was let go while it asked: each of those asks
 * is sent after a count, so this bounds only a network whose requests end one after another without pause.
 */
const MOST_STALE_PEEKS = 5;

/** A key's requests that passed refuseIfSpent and are not counted yet, and those waiting for one of their places. */
interface HeldPlaces {
  count: number;
  /** Woken with the window when it is spent, else to look again. */
  waiting: ((spent: WindowLeft | undefined) => void)[];
  /** Requests asking the store about this key now: the record stays while they do, for `released` to be read. */
  peeking: number;
  /** Places let go so far (each once its request was counted in the store). */
  released: number;
}

/** Whether nothing is held, waited for or asked about under a key: its record may go. */
const unused = (held: HeldPlaces) => held.count === 0 && held.waiting.length === 0 && held.peeking === 0;

/**
 * One limit policy: a window per client counted in the store (koa-ratelimit's drivers, or the primary), the
 * `X-RateLimit-*` fields and the IETF `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers)
 * of every policy the request met, and an integer `Retry-After`. Exceeding the limit becomes a `rate_limited`
 * GatewayError (429). A store that fails is decided by `onStoreFailure`, logged once per interval and recorded on
 * the request's span.
 */
export function createRateLimiter(options: RateLimiterOptions): RateLimiter {
  const { store, logger } = options;
  const windowSeconds = Math.ceil(options.windowMs / 1000);
  const policy = `"${options.name}";q=${options.max};w=${windowSeconds}`;
  const onStoreFailure = options.onStoreFailure ?? 'allow';
  const ipv6PrefixLength = options.ipv6PrefixLength ?? 64;
  // Where its windows are, in every store. The gateway's own keep their bare names (none starts with `route:`),
  // so their counts in Redis carry over an upgrade; a route's start afresh once under the new key.
  const storeName = options.owner === 'route' ? `route:${options.name}` : options.name;
  // The policy's identity for windows kept across reloads: an unchanged limit keeps its counts.
  const windowPolicy = `${storeName}|${options.max}|${options.windowMs}`;
  const counter = createWindowCounter(
    store.kind === 'memory' ? { kind: 'memory', db: store.windows?.for(windowPolicy, store.maxTrackedClients) ?? memoryWindowStore(store.maxTrackedClients) } : store,
    { storeName, windowPolicy, max: options.max, windowMs: options.windowMs },
  );
  const mayLogFailure = atMostEvery(STORE_FAILURE_LOG_INTERVAL_MS);
  const decided = options.metrics && rateLimitDecisionCounters(options.metrics, options.name);
  // Per key, the requests that passed refuseIfSpent and are not counted yet (their credential is being checked), and
  // those waiting for one of their places: each held place may still spend the window, so it counts as spent.
  // Checked against the store alone, every request that arrived while another's credential was checked passed: 60
  // forged provider tokens sent at once were all verified against a budget of 3. Per process: each replica sharing
  // a Redis store lets as many through.
  const places = new Map<string, HeldPlaces>();
  const heldKey = new WeakMap<Context, string>();
  const release = (ctx: Context) => {
    if (places.size === 0) return;
    const key = heldKey.get(ctx);
    if (key === undefined) return;
    heldKey.delete(ctx);
    const held = places.get(key)!;
    held.count--;
    held.released++;
    // A place is free: the first request waiting looks again.
    held.waiting.shift()?.(undefined);
    if (unused(held)) places.delete(key);
  };

  async function storeFailed(ctx: Context, next: () => Promise<void>, error: unknown): Promise<void> {
    const decision = onStoreFailure === 'allow' ? 'store_down_allowed' : 'store_down_rejected';
    trace.getActiveSpan()?.setAttribute(ATTR.rateLimitDecision, decision);
    decided?.[decision].inc();
    if (mayLogFailure()) {
      logger.warn('rate limit store failed', { policy: options.name, decision, error: error instanceof Error ? error.message : String(error) });
    }
    if (onStoreFailure === 'reject') {
      throw new GatewayError('rate_limit_unavailable', 'Rate limiting is unavailable; try again shortly.', { cause: error, headers: { 'Retry-After': '1' } });
    }
    await next();
  }

  function refuse(ctx: Context, count: WindowCount): never {
    const retryAfter = Math.max(1, recordCheck(ctx, { name: options.name, storeName, policy, windowSeconds, count }));
    trace.getActiveSpan()?.setAttribute(ATTR.rateLimitDecision, 'limited');
    decided?.limited.inc();
    throw new GatewayError('rate_limited', `Rate limit of ${options.max} requests per ${windowSeconds} s exceeded; retry in ${retryAfter} s.`, {
      headers: { 'Retry-After': String(retryAfter) },
    });
  }

  return {
    name: options.name,
    async check(ctx, next, key = clientNetworkKey(ctx.ip, ipv6PrefixLength)) {
      // Counted under another key (its caller's: it authenticated), a request never spends the window it holds a place
      // in, so the place goes now, not once this count is back from Redis: the network's other requests wait for it.
      if (places.size > 0 && heldKey.get(ctx) !== key) release(ctx);
      let count: WindowCount;
      try {
        count = await counter.take(key);
      } catch (error) {
        release(ctx);
        return storeFailed(ctx, next, error);
      }
      // Counted (or refused) under the key it held a place under: the store's count stands for it now.
      release(ctx);
      if (!count.admitted) refuse(ctx, count);
      decided?.allowed.inc();
      if (!options.hiddenUntilRefused) recordCheck(ctx, { name: options.name, storeName, policy, windowSeconds, count });
      await next();
    },
    async refuseIfSpent(ctx, key = clientNetworkKey(ctx.ip, ipv6PrefixLength)) {
      for (let waits = 0, stalePeeks = 0; ; ) {
        let held = places.get(key);
        if (!held) places.set(key, (held = { count: 0, waiting: [], peeking: 0, released: 0 }));
        held.peeking++;
        const releasedBefore = held.released;
        const window = await counter.peek(key).catch(() => undefined);
        held.peeking--;
        // A place let go while the store was asked was counted there before the ask or after it: its count is in the
        // answer or not, and it is no longer held either way. Taken as it came (Redis' answers come late, after the
        // counts of requests that ended meanwhile), requests sent at once had a fourth and fifth credential checked
        // against a budget of 3. Asked again, the answer is sent after those counts.
        if (held.released !== releasedBefore && stalePeeks++ < MOST_STALE_PEEKS) continue;
        // Read once the store answered: the requests that took a place while it was asked are among them.
        if (!window || window.left > held.count) {
          held.count++;
          heldKey.set(ctx, key);
          return () => release(ctx);
        }
        if (window.left === 0) {
          // Spent: so is it for those waiting, told without asking the store again.
          for (const wake of held.waiting.splice(0)) wake(window);
          if (unused(held)) places.delete(key);
          refuse(ctx, spentCount(window));
        }
        // What is left is all being checked. Waiting, not refused: a network's requests sent together, answered from
        // Redis at once, were refused for one another's places though each would have authenticated.
        if (waits++ === MOST_WAITS_FOR_A_PLACE) {
          if (unused(held)) places.delete(key);
          refuse(ctx, spentCount(window, Math.min(window.reset, Date.now() / 1000 + 1)));
        }
        const spent = await new Promise<WindowLeft | undefined>((resolve) => held.waiting.push(resolve));
        if (spent) refuse(ctx, spentCount(spent));
      }
    },
  };
}

/**
 * Who a client address is for rate limiting. IPv4: the address. IPv6: its network of `ipv6PrefixLength`
 * bits (`2001:db8:0:0:0:0:0:0/64`), because one host is routinely handed a whole /64 (RFC 6177) and could
 * otherwise take a fresh bucket per request. Canonical, so no spelling of an address (`2001:DB8::1`,
 * `2001:0db8:0:0::1`, a zone id, `[...]:port`) is a new bucket; IPv4-mapped IPv6 (`::ffff:192.0.2.1`, how a
 * dual-stack socket shows an IPv4 peer) is keyed as the IPv4 address, so a client cannot count twice.
 */
export function clientNetworkKey(address: string, ipv6PrefixLength: number): string {
  const ip = withoutPort(address.trim());
  if (net.isIPv4(ip)) return ip;
  // Not an address (a proxy wrote `unknown`, or anything else): keyed as sent, bounded so a long forged
  // value cannot bloat the store; values that share the first 64 characters share a bucket, which only limits more.
  if (!net.isIPv6(ip)) return `unparsed:${ip.slice(0, 64)}`;
  const groups = ipv6Groups(ip);
  const [g6 = 0, g7 = 0] = groups.slice(6);
  if (groups.slice(0, 5).every((group) => group === 0) && groups[5] === 0xffff) return `${g6 >> 8}.${g6 & 255}.${g7 >> 8}.${g7 & 255}`;
  const network = groups.map((group, index) => group & groupMask(ipv6PrefixLength - 16 * index));
  return `${network.map((group) => group.toString(16)).join(':')}/${ipv6PrefixLength}`;
}

/** `[2001:db8::1]:443` and `192.0.2.1:443` (some proxies write ports into X-Forwarded-For) without the port. */
function withoutPort(value: string): string {
  const bracketed = /^\[([^\]]*)\](?::\d+)?$/.exec(value);
  if (bracketed) return bracketed[1]!;
  const ipv4WithPort = /^(\d{1,3}(?:\.\d{1,3}){3}):\d+$/.exec(value);
  return ipv4WithPort ? ipv4WithPort[1]! : value;
}

/** The eight 16-bit groups of an address `net.isIPv6` accepted: zone id, `::` and a dotted IPv4 tail allowed. */
function ipv6Groups(ip: string): number[] {
  let text = ip.split('%')[0]!;
  const lastColon = text.lastIndexOf(':');
  const tail = text.slice(lastColon + 1);
  if (tail.includes('.')) {
    const [a = 0, b = 0, c = 0, d = 0] = tail.split('.').map(Number);
    text = `${text.slice(0, lastColon + 1)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', rest] = text.split('::');
  const parse = (part: string) => (part === '' ? [] : part.split(':').map((group) => parseInt(group, 16)));
  if (rest === undefined) return parse(head);
  const left = parse(head);
  const right = parse(rest);
  return [...left, ...Array<number>(8 - left.length - right.length).fill(0), ...right];
}

/** The mask of one 16-bit group of which `bits` leading bits belong to the network. */
function groupMask(bits: number): number {
  if (bits <= 0) return 0;
  if (bits >= 16) return 0xffff;
  return (0xffff << (16 - bits)) & 0xffff;
}

/**
 * Adds a policy to the request's and writes the rate-limit fields for all of them; returns the whole seconds until
 * the most restrictive one admits again (its Retry-After). With several (login per client and per account, a route
 * and a consumer), the fields of the one checked last said "7 left" to a client whose next request was refused:
 * `X-RateLimit-*` now describe the most restrictive (least remaining; of equals, the one that resets last), and
 * `RateLimit-Policy` / `RateLimit` list every policy, that one first (draft-ietf-httpapi-ratelimit-headers-08 and
 * later: both fields are lists, one item per policy). A `hiddenUntilRefused` policy is recorded only when it refuses.
 */
function recordCheck(ctx: Context, checked: CheckedRateLimit): number {
  const all = (ctx.state.rateLimits ??= []);
  const same = all.findIndex((each) => each.storeName === checked.storeName);
  if (same === -1) all.push(checked);
  else all[same] = checked;
  if (all.length > 1) all.sort((a, b) => a.count.remaining - b.count.remaining || b.count.reset - a.count.reset);
  const nowSeconds = Date.now() / 1000;
  // Whole seconds, rounded up (never early), and never more than the window: a reset rounded up to the second
  // (Redis's) made the first answer of a window say t=61 under w=60.
  const secondsLeft = (each: CheckedRateLimit) => Math.min(each.windowSeconds, Math.max(0, Math.ceil(each.count.reset - nowSeconds)));
  // Node's own getHeader/setHeader: Koa's ctx.set builds arrays and closures per call; these run on every request.
  // Names in lower case, as HTTP/2 sends them and as GitHub's and Cloudflare's APIs write these over HTTP/1.1
  // (names are case-insensitive, RFC 9110 5.1): setHeader keys its table by the lower-case name, and a name that
  // already is one is stored as it is, where a mixed-case one is lowered into a new string looked up in V8's
  // string table on every call (about half of setHeader's cost; five headers on every request).
  const { res } = ctx;
  const first = all[0]!;
  res.setHeader('x-ratelimit-limit', String(first.count.total));
  res.setHeader('x-ratelimit-remaining', String(first.count.remaining));
  res.setHeader('x-ratelimit-reset', String(Math.ceil(first.count.reset)));
  res.setHeader('ratelimit-policy', all.length === 1 ? first.policy : all.map((each) => each.policy).join(', '));
  res.setHeader('ratelimit', all.map((each) => `"${each.name}";r=${each.count.remaining};t=${secondsLeft(each)}`).join(', '));
  return secondsLeft(first);
}

export interface RouteRateLimitOptions {
  /** The limit of routes without their own. */
  fallback: RateLimiter;
  /** Limits of routes that have their own, by route name. */
  byRoute: ReadonlyMap<string, RateLimiter>;
  /** Routes whose limit counts the authenticated caller (`rateLimit.by` `user` / `consumer`): createCallerRateLimit checks them. */
  byCaller?: ReadonlySet<string>;
}

/** Answers a refused request with `refusal` (a GatewayError), after it spent what it must; it may throw 429 instead. */
export type Refuse = (ctx: Context, refusal: Error) => Promise<never>;

/** A refusal that spends nothing: where no rate limit is given (tests, the pieces used alone). */
export const refuseAtOnce: Refuse = async (_ctx, refusal) => {
  throw refusal;
};

/**
 * Refuses a request the gateway will not carry once it has spent its route's limit, or the default one (also for a
 * route limited by caller: the caller is not known, and a refusal is no failed authentication): a 404 to a path no
 * route or probe takes, a 405 to a method its route or probe does not (createRouteMatch, createProbeEndpoints), and
 * what the request-form guards refuse before any route is looked up (its request line, path, Host or header fields:
 * createRequestHeadCheck, createHttp2Requests, createPathGuard, createHostGuard, createClientHeaderPolicy). Those were
 * limited by nothing, as they are answered before the limits: a client scanning paths had every 404, or sending `//`
 * paths every 400, logged and traced, without end.
 */
export function createRefusalRateLimit(options: RouteRateLimitOptions): Refuse {
  const spend = async () => {};
  return async (ctx, refusal) => {
    const routeName = ctx.state.route?.name;
    const limiter = (routeName && !options.byCaller?.has(routeName) && options.byRoute.get(routeName)) || options.fallback;
    try {
      await limiter.check(ctx, spend);
    } catch (instead) {
      // Answered 429 (or 503, the store down), a refusal that closes its connection still does: nothing pipelined
      // behind a malformed head, or read as the body of an HTTP/1.0 one with Transfer-Encoding, may run next.
      const connection = isGatewayError(refusal) ? refusal.headers.Connection : undefined;
      if (connection !== undefined) ctx.set('Connection', connection);
      throw instead;
    }
    throw refusal;
  };
}

/**
 * Applies the matched route's limit (or the global one) before any token is verified. On a route limited by
 * caller, the caller is not known yet: requests that then fail authentication (401), or end before the caller's
 * limit counts them, are counted per client network instead, and a network that has used up that budget is
 * refused (429) before any credential is checked, until its window ends, so guessing credentials there stays
 * limited and forged tokens cost no crypto.
 */
export function createRouteRateLimit(options: RouteRateLimitOptions): Middleware {
  return async function limitRate(ctx, next) {
    const routeName = ctx.state.route?.name;
    const limiter = (routeName && options.byRoute.get(routeName)) || options.fallback;
    if (!routeName || !options.byCaller?.has(routeName)) return limiter.check(ctx, next);
    // A client network that spent its budget of failures is refused before its credential is checked: counting
    // the 401s alone turned a wrong guess's 401 into 429 but still let a right one through, and every forged
    // token still cost a signature check (and a JWKS fetch for an unknown key). Credentials being checked count
    // as spent until they are counted, so no more are checked at once than the budget has left.
    const letGo = await limiter.refuseIfSpent(ctx);
    // Every request spends a limit: one the caller's limit never counted (it failed authentication, or was answered
    // before it: two credentials' 400, `Max-Forwards: 0`'s OPTIONS) is counted per client network. Only the failed
    // authentications were, and a client sent any number of the others, token or none, never refused. The gateway's
    // own failures (a 503 while the identity provider's keys cannot be fetched) are not the client's to pay for.
    try {
      try {
        await next();
      } catch (error) {
        if (!ctx.state.callerCounted && isGatewayError(error) && error.status < 500) await limiter.check(ctx, async () => {});
        throw error;
      }
      if (!ctx.state.callerCounted) await limiter.check(ctx, async () => {});
    } finally {
      // Counted (check let its place go), or never to be (the gateway's own failure): its place is free.
      letGo();
    }
  };
}

/** Whom a caller-keyed limit counts: the API key's consumer, else the token's user (namespaced: ids of the two may coincide). */
function callerKey(ctx: Context): string | undefined {
  const { consumer, user } = ctx.state;
  if (consumer) return `consumer:${consumer.id}`;
  return user ? `user:${user.id}` : undefined;
}

export interface CallerRateLimitOptions {
  /** Limits of routes with `rateLimit.by` `user` or `consumer`, by route name. */
  byRoute: ReadonlyMap<string, RateLimiter>;
  /** Consumers' own limits (`consumers[].rateLimit`), by consumer id. */
  byConsumer: ReadonlyMap<string, RateLimiter>;
}

/**
 * After authentication: the route's limit per caller (one tenant behind a shared address is not limited with
 * its neighbours; one caller on many addresses is limited once), then the consumer's own limit over all
 * routes; neither window is spent by a request the other refuses. Undefined (not mounted) when neither is configured.
 */
export function createCallerRateLimit(options: CallerRateLimitOptions): Middleware | undefined {
  if (options.byRoute.size === 0 && options.byConsumer.size === 0) return undefined;
  return async function limitCallerRate(ctx, next) {
    const { route, consumer } = ctx.state;
    const consumerLimit = consumer && options.byConsumer.get(consumer.id);
    const inner = consumerLimit ? () => consumerLimit.check(ctx, next, `consumer:${consumer.id}`) : next;
    const routeLimit = route && options.byRoute.get(route.name);
    const caller = callerKey(ctx);
    if (routeLimit && caller) {
      ctx.state.callerCounted = true;
      if (!consumerLimit) return routeLimit.check(ctx, next, caller);
      // The consumer's window looked at first, counting nothing: a request it refuses spends none of the route's.
      // Counted first, the route's window ran out under requests never served (an outside review: 8 counted for 6
      // forwarded), and a consumer retrying after its 429 was then refused for the route's longer window.
      const release = await consumerLimit.refuseIfSpent(ctx, `consumer:${consumer.id}`);
      try {
        return await routeLimit.check(ctx, inner, caller);
      } finally {
        // Counted (the place let go with it) or refused by the route's limit: the place is not held past the request.
        release();
      }
    }
    return inner();
  };
}
