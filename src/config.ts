import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import path from 'node:path';
import { z } from 'zod';
import { hideUrlPasswords } from '../otel/redact-url';
import { FIELD_NAME_TOKEN, HTTP_METHODS } from '../otel/wire-names';
import { nestedAtMost } from './json-depth';
import { duplicateJsonKey } from './json-duplicate-keys';
import { serviceOrigin } from './service-origin';
import { headerRulesSchema, ownedRequestHeader, ownedResponseHeader } from './header-rules';
import { cacheSettingsSchema, routeCacheSchema } from './response-cache';
import { keyMaterialProblem, SERVICE_KEY_PATTERN, SIGNING_KEY_MIN_LENGTH } from './gateway-signature';

/**
 * The gateway's one configuration: a JSON file (routes as data) overlaid with environment variables,
 * checked by one schema at startup, then frozen and trusted. This is the only module that reads
 * `process.env` for the gateway. A bad value stops startup with one line naming the key, rule and value.
 */

/**
 * Secrets that were published (the development default of earlier versions): anyone can mint tokens with
 * them, so they are refused in every environment, not only in production.
 */
export const PUBLISHED_JWT_SECRETS: readonly string[] = ['dev-only-insecure-jwt-secret-change-me'];

const TRUSTED_RANGE_RULE =
  'must not be broader than an IPv4 /8 (10.0.0.0/8) or an IPv6 /7 (fc00::/7), nor reach every IPv4 client through IPv4-mapped addresses (::ffff:0:0/96): such a range trusts clients to name their own address; list your proxies';

/** The 128 bits of an IPv6 address (`::ffff:10.0.0.1` too). */
function ipv6Bits(address: string): bigint {
  // The URL parser writes every IPv6 address as hex groups, compressed at most once (`[::ffff:a00:1]`).
  const host = new URL(`http://[${address}]`).hostname.slice(1, -1);
  const [head = [], tail] = host.split('::').map((part) => part.split(':').filter(Boolean));
  const groups = tail === undefined ? head : [...head, ...Array<string>(8 - head.length - tail.length).fill('0'), ...tail];
  return groups.reduce((bits, group) => (bits << 16n) | BigInt(parseInt(group, 16)), 0n);
}

/** `::ffff:0:0`, the start of the IPv4-mapped block (RFC 4291 2.5.5.2). */
const IPV4_MAPPED = 0xffffn << 32n;

/**
 * Whether a `trustedProxies` range trusts so many addresses that it is no list of proxies: an IPv4 range broader than
 * a /8 (10.0.0.0/8, the largest private network), an IPv6 one broader than a /7 (fc00::/7, every private address;
 * 2000::/3 is every public one), or an IPv6 one whose IPv4-mapped part is broader than an IPv4 /8. net.BlockList
 * matches an IPv4-mapped rule against IPv4 peers too, so `::ffff:0:0/96` or `::/1` trusted every IPv4 client, as the
 * refused `0.0.0.0/0` would.
 */
function tooBroadToTrust(entry: string): boolean {
  const [address = '', prefixText] = entry.split('/');
  if (prefixText === undefined) return false;
  const prefix = Number(prefixText);
  if (isIP(address) === 4) return prefix < 8;
  if (prefix < 7) return true;
  // Covers IPv4-mapped addresses when its first min(prefix, 96) bits are those of the mapped block.
  const shift = BigInt(128 - Math.min(prefix, 96));
  return ipv6Bits(address) >> shift === IPV4_MAPPED >> shift && prefix - 96 < 8;
}

/** Most worker processes `workers` accepts. */
export const MAX_WORKERS = 64;
const WORKERS_RULE = `must be an integer from 1 to ${MAX_WORKERS} or "auto"`;

/** The client timeouts of every listener the gateway opens (config `server`), as runServer and listenInternal take them. */
export function clientTimeouts(server: { headersTimeoutMs: number; requestTimeoutMs: number; keepAliveTimeoutMs: number }): { headersMs: number; requestMs: number; keepAliveMs: number } {
  return { headersMs: server.headersTimeoutMs, requestMs: server.requestTimeoutMs, keepAliveMs: server.keepAliveTimeoutMs };
}

export { HTTP_METHODS };

/** Standard response fields (RFC 9110, 9111, 6265) a `cache.statusHeader` must not be. */
const HTTP_RESPONSE_FIELDS: ReadonlySet<string> = new Set([
  'age', 'allow', 'cache-control', 'connection', 'content-disposition', 'content-encoding', 'content-language', 'content-length', 'content-location',
  'content-range', 'content-type', 'date', 'etag', 'expires', 'last-modified', 'location', 'retry-after', 'server', 'set-cookie', 'trailer',
  'transfer-encoding', 'vary', 'www-authenticate', 'strict-transport-security',
]);

/** A path prefix: absolute, plain segments only, no trailing slash (except the root itself). */
const pathPrefix = z
  .string()
  .regex(/^(\/[A-Za-z0-9._~-]+)+$/, 'must be an absolute path of plain segments without a trailing slash')
  .refine((p) => !p.split('/').some((s) => s === '.' || s === '..'), 'must not contain dot segments');

/**
 * Whether a service path, as routing keys it (src/routes.ts routeKey: decoded, lower case), is one of the services'
 * own endpoints: `/internal` and below (user-service's credential check, notification-service's intake), which only
 * the gateway and other services call. No route reaches one: the login's limits guard the credential check only
 * because no client gets to it another way.
 */
export function isServiceInternal(key: string): boolean {
  return key === '/internal' || key.startsWith('/internal/') || key.startsWith('/internal.');
}

/** Where a route sends its requests on the service: its root (`""`) or a path prefix (not under `/internal` for an HTTP route: crossFieldRules). */
const upstreamPath = z.union([z.literal(''), pathPrefix]);

/**
 * A path clients are routed by: a path prefix none of whose segments ends in `.`, since the gateway refuses every
 * request path with such a segment (400 bad_path: Windows and IIS strip the dot), so a route at `/api/v1.` could
 * never be reached.
 */
const routedPath = pathPrefix.refine((p) => !p.split('/').some((segment) => segment.endsWith('.')), 'must not have a segment ending in "." (requests to such a path are refused with 400 bad_path)');

/** An address or host name to listen on (`0.0.0.0`, `::`, `127.0.0.1`, `localhost`): one that names none fails here, not at listen. */
const listenHost = z.string().refine((value) => isIP(value) !== 0 || /^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(value), 'must be an IP address or a host name');

/** proxy.hideUpstreamHeaders by default: what names the software, its version or the host behind the gateway. */
const DEFAULT_HIDDEN_UPSTREAM_HEADERS = ['server', 'x-powered-by', 'x-aspnet-version', 'x-aspnetmvc-version', 'x-backend-server'] as const;

/**
 * Node's timers hold at most 2^31 - 1 ms (~24.8 days): a longer one fires after 1 ms (TimeoutOverflowWarning),
 * so "practically never" would time every request out at once. Every duration in ms is bounded by it.
 */
export const MAX_TIMER_MS = 2_147_483_647;
const TIMER_RULE = `must be at most ${MAX_TIMER_MS} ms (Node's longest timer, ~24.8 days)`;

/** Shortest `services.<name>.keepalive.timeMs`, ms: gRPC's own floor for client keepalive (gRFC A8). */
export const MIN_GRPC_KEEPALIVE_TIME_MS = 10_000;

/**
 * HTTP/2 keepalive on a service's gRPC channels (gRFC A8, https://github.com/grpc/proposal/blob/master/A8-client-side-keepalive.md):
 * a PING every `timeMs` while a call is open (also while none is, with `withoutCalls`); an instance that does not
 * answer one within `timeoutMs` has its connection dropped, and its open calls fail UNAVAILABLE (503) at once, not
 * at their deadline. Without it an instance that vanished without a FIN or RST (a network drop, a host powered
 * off) costs every call on its channel a whole deadline, until the kernel gives up on the connection (minutes).
 * Off by default because servers limit pings: gRPC's C++ and Go servers allow one per 5 minutes unless told
 * otherwise (`grpc.http2.min_ping_interval_without_data_ms`, Go's `keepalive.EnforcementPolicy.MinTime`), and
 * without calls none at all (`PermitWithoutStream`); beyond, they close the connection with GOAWAY
 * ENHANCE_YOUR_CALM "too_many_pings", failing the calls on it. Turn it on with the service's limits set to match.
 */
const grpcKeepaliveSchema = z.strictObject({
  /** Time between pings, ms (`grpc.keepalive_time_ms`). At least 10 s. */
  timeMs: z.int().min(MIN_GRPC_KEEPALIVE_TIME_MS, `must be at least ${MIN_GRPC_KEEPALIVE_TIME_MS} ms: servers refuse more frequent pings`).max(MAX_TIMER_MS, TIMER_RULE),
  /** How long a ping waits for its answer before the connection is dropped, ms (`grpc.keepalive_timeout_ms`). Default 20 s. */
  timeoutMs: z.int().min(1000, 'must be at least 1000 ms: a shorter wait drops live connections on a busy network').max(MAX_TIMER_MS, TIMER_RULE).default(20_000),
  /** Ping also while no call is open (`grpc.keepalive_permit_without_calls`), so a dead idle connection is found before a call is put on it. Default false. */
  withoutCalls: z.boolean().default(false),
});
export type GrpcKeepalive = Readonly<z.output<typeof grpcKeepaliveSchema>>;

/** The gateway-wide limit when the config names none: 100 requests per client per minute. */
const DEFAULT_RATE_LIMIT = { max: 100, windowMs: 60_000 } as const;

const rateLimitSchema = z.strictObject({
  /** Requests allowed per client per window. */
  max: z.int().positive(),
  /** Window length, ms. */
  windowMs: z.int().min(1000, 'must be at least 1000 ms: a shorter window lets any rate through').max(MAX_TIMER_MS, TIMER_RULE),
  /**
   * What to do when the shared store (Redis) cannot answer within `rateLimit.redisTimeoutMs`: `allow` the
   * request (availability first, the default) or `reject` it with 503 (protection first).
   */
  onStoreFailure: z.enum(['allow', 'reject']).optional(),
});

/**
 * A route's own limit: as `rateLimit`, plus who is counted. `ip` (default): the client's network, checked
 * before authentication. `user` / `consumer`: the authenticated caller (a token's user, an API key's consumer;
 * a caller authenticated the other way is counted by the identity it has), checked after authentication, so
 * one tenant behind a shared NAT address is not limited with its neighbours and one caller on many addresses
 * is limited once. On such a route, requests that fail authentication are counted per client network.
 */
const routeRateLimitSchema = rateLimitSchema.extend({
  by: z.enum(['ip', 'user', 'consumer']).default('ip'),
});

/** Ways a caller can prove who it is on a route: a bearer JWT, or an API key of a declared consumer. */
export const AUTH_METHODS = ['jwt', 'apiKey'] as const;
// The rules of the unions below: without them a value of neither kind was refused as "Invalid input", which
// names no rule (README: a bad value stops startup naming the key, the rule and the value).
const ROUTE_AUTH_RULE = `must be "required", "public" or { "methods": [${AUTH_METHODS.map((method) => `"${method}"`).join(', ')}] } (one or both)`;
const SERVICE_URLS_RULE = 'must be an http(s) URL, or a non-empty list of them';
export type AuthMethod = (typeof AUTH_METHODS)[number];

/**
 * An API-key holder, declared as data (`consumers` or the file `consumersFile` names). Keys are stored as
 * SHA-256 hashes only (`npm run apikey` prints a new key and its hash); see src/consumers.ts for why an
 * unsalted fast hash is right for random 256-bit keys.
 */
const consumerSchema = z.strictObject({
  /** Reaches services as `X-Consumer-Id`; in logs and spans. */
  id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/, 'must be 1-64 letters, digits, ".", "_", ":" or "-"'),
  /** Checked against route `roles`, like a token's role. */
  role: z.string().regex(/^[A-Za-z0-9._:-]{1,64}$/, 'must be 1-64 letters, digits, ".", "_", ":" or "-"'),
  keys: z
    .array(
      z.strictObject({
        /** `sha256:` and the 64 lower-case hex digits of SHA-256 of the key. */
        hash: z.string().regex(/^sha256:[0-9a-f]{64}$/, 'must be "sha256:" and 64 lower-case hex digits (npm run apikey prints one)'),
        /** A revoked key is refused (401) like an unknown one. Default false. */
        revoked: z.boolean().default(false),
        /** A label for operators (`ci-2026`); never sent anywhere. */
        note: z.string().max(200).optional(),
      }),
    )
    .nonempty(),
  /** This consumer's own limit over all routes (counted per consumer, after the route's). */
  rateLimit: rateLimitSchema.optional(),
});

const CORS_HEADER_RULE = 'must be a header name (letters, digits and !#$%&\'*+.^_`|~-), one per entry';

const corsSchema = z
  .strictObject({
    /** Allowed origins, exact (`https://app.example.com`), or `*` (only without credentials). */
    origins: z
      .array(
        z
          .string()
          .regex(/^(\*|https?:\/\/[^/\s]+)$/, 'must be * or an origin like https://app.example.com')
          // Compared byte for byte with the Origin a browser sends, which is serialized (lower-case host, no default
          // port, no userinfo, punycode): `https://App.example.com` or `https://app.example.com:443` matched no request.
          .refine((origin) => origin === '*' || !URL.canParse(origin) || new URL(origin).origin === origin, 'must be written as browsers send Origin: a lower-case host, no default port, no userinfo'),
      )
      .nonempty(),
    methods: z.array(z.enum(HTTP_METHODS)).nonempty().default(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE']),
    // Header names (or `*`): they are joined into the Access-Control-Allow-/-Expose-Headers fields, and a CR, LF or
    // space in one made Node refuse the field, so every cross-origin request (preflight or not) was a 500.
    /** Request headers a browser may send. */
    // `idempotency-key` and `idempotent-replayed`: order-service's retry-safe POST, from a browser too.
    headers: z.array(z.string().regex(FIELD_NAME_TOKEN, CORS_HEADER_RULE)).default(['authorization', 'content-type', 'x-request-id', 'idempotency-key']),
    /** Response headers a browser script may read. */
    exposeHeaders: z.array(z.string().regex(FIELD_NAME_TOKEN, CORS_HEADER_RULE)).default(['x-request-id', 'traceresponse', 'retry-after', 'ratelimit', 'ratelimit-policy', 'location', 'link', 'idempotent-replayed']),
    /** How long a browser may cache a preflight answer, s. Default 600; at most a day (Firefox's own cap, Chromium's is 2 h). */
    maxAgeSeconds: z.int().min(0).max(86_400).default(600),
    /** Allow cookies / Authorization from browsers (`Access-Control-Allow-Credentials`). Default false. */
    credentials: z.boolean().default(false),
  })
  .refine((cors) => !(cors.credentials && cors.origins.includes('*')), { message: '"*" cannot be combined with credentials', path: ['origins'] })
  // With credentials a browser reads `Access-Control-Expose-Headers: *` as a header named `*` (Fetch): no header
  // would be exposed, while the config said every one. (`headers: ["*"]` is answered with the names asked for.)
  .refine((cors) => !(cors.credentials && cors.exposeHeaders.includes('*')), { message: '"*" cannot be combined with credentials: name the headers', path: ['exposeHeaders'] });

/** A service instance: an origin only (src/service-origin.ts). */
const serviceUrl = serviceOrigin("put a path in the route's upstreamPath");

/** Whether a Redis URL's database, in its path or `db` query parameter as ioredis reads it, is a number or not given. */
function redisDatabaseIsNumber(url: URL): boolean {
  const db = url.searchParams.get('db');
  return /^(\/\d*)?$/.test(url.pathname) && (db === null || /^\d+$/.test(db));
}

/** What a route name is made of. */
export const ROUTE_NAME = /^[a-z][a-z0-9-]*$/;
/**
 * The longest route name, characters. A worker names the route of each cache invalidation it sends the cluster
 * primary, which refuses longer names (src/workers.ts: it must not pass megabytes on to every other worker);
 * a name the config accepted but the primary refused would leave the other workers' copies stale.
 */
export const MAX_ROUTE_NAME_LENGTH = 256;

const routeSchema = z.strictObject({
  /** Route name, used in logs, spans and metrics. */
  name: z.string().max(MAX_ROUTE_NAME_LENGTH, `must be at most ${MAX_ROUTE_NAME_LENGTH} characters`).regex(ROUTE_NAME, 'must be lower-case letters, digits and dashes'),
  /** Public path prefix, matched segment by segment (`/api/users` matches `/api/users/1`, not `/api/usersX`). */
  prefix: routedPath,
  /** Key of `services` this route forwards to. */
  service: z.string(),
  /** Path on the service that replaces `prefix` (`/api/users/1` -> `/users/1`). */
  upstreamPath,
  /** Match only the prefix itself, not paths below it. Default false. */
  exact: z.boolean().default(false),
  /** Allowed methods; any method when absent. */
  methods: z.array(z.enum(HTTP_METHODS)).nonempty().optional(),
  /**
   * `required`: a valid bearer token, or an API key when `consumers` are declared; `{ methods: [...] }`:
   * only these (`jwt`, `apiKey`); `public`: no credential needed (identity headers are still stripped).
   */
  auth: z.union([z.enum(['required', 'public']), z.strictObject({ methods: z.array(z.enum(AUTH_METHODS)).nonempty() })], { error: ROUTE_AUTH_RULE }).default('required'),
  /**
   * Upstream idle timeout for this route, ms (no byte either way for this long once the request is on a
   * connection -> 504, or a cut mid-response); defaults to `proxy.timeoutMs`.
   */
  timeoutMs: z.int().positive().max(MAX_TIMER_MS, TIMER_RULE).optional(),
  /** Rate limit for this route; defaults to `rateLimit` (by client network). */
  rateLimit: routeRateLimitSchema.optional(),
  /** CORS for this route (replaces the global `cors`), or false to refuse cross-origin use of it. */
  cors: z.union([corsSchema, z.literal(false)], { error: 'must be a CORS policy ({ "origins": [...], ... }) or false' }).optional(),
  /** Roles (the token's `role` claim) allowed on this route; others get 403. Any role when absent. */
  roles: z.array(z.string().min(1)).nonempty().optional(),
  /**
   * Pass the client's `Authorization` header on to the service. Default false: the credential stops at the
   * gateway and services get the identity headers instead. Only for a service that verifies tokens itself.
   */
  forwardAuthorization: z.boolean().default(false),
  /** Longest a whole upstream exchange (request body up, response down) may last, ms; defaults to `proxy.deadlineMs`. */
  deadlineMs: z.int().positive().max(MAX_TIMER_MS, TIMER_RULE).optional(),
  /**
   * The service speaks gRPC: requests are translated from REST/JSON by the `google.api.http` annotations of
   * `service` in `proto` (path relative to the app root), matched against the upstream path (`upstreamPath`
   * + the rest). The route's `timeoutMs` (capped by `deadlineMs`) is a unary call's gRPC deadline, `deadlineMs`
   * a server stream's. Off when absent. See src/middleware/grpc-transcode.ts.
   */
  grpc: z
    .strictObject({
      proto: z.string().regex(/^[^\0]+\.proto$/, 'must be a .proto file'),
      service: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$/, 'must be a fully qualified service name like package.v1.Service'),
    })
    .optional(),
  /** Headers added, set or removed on the way to the service and back (src/header-rules.ts). None when absent. */
  headers: headerRulesSchema.optional(),
  /** Keep services' answers to GET/HEAD for a while (src/response-cache.ts). Off when absent. */
  cache: routeCacheSchema.optional(),
});

const configFields = z
  .strictObject({
    /** Listening port. Default 3000. */
    port: z.int().min(0).max(65535).default(3000),
    /** Listening address. Default 127.0.0.1: safe by default; containers set 0.0.0.0. */
    host: listenHost.default('127.0.0.1'),
    /**
     * Processes serving the public port (src/workers.ts): a number, or `auto` for one per available core
     * (`os.availableParallelism()`). Default 1: one process, no cluster primary. Changes need a restart.
     */
    workers: z.union([z.int({ error: WORKERS_RULE }).min(1, { error: WORKERS_RULE }).max(MAX_WORKERS, { error: WORKERS_RULE }), z.literal('auto')], { error: WORKERS_RULE }).default(1),
    /** `NODE_ENV`; `production` requires `JWT_SECRET`, seeds no demo accounts and hides internal details. */
    environment: z.enum(['development', 'production', 'test']).default('development'),
    logLevel: z.enum(['error', 'warn', 'info', 'http', 'verbose', 'debug', 'silly']).default('info'),
    /**
     * Trust `X-Forwarded-*` from the peer (Koa `app.proxy`). Default false: clients could otherwise spoof
     * their address to dodge the rate limiter.
     */
    trustProxy: z.boolean().default(false),
    /**
     * With `trustProxy`: how many proxies stand in front. The client address is taken this many entries from
     * the right of `X-Forwarded-For`, so addresses a client prepends itself are ignored. Default 1.
     */
    trustedProxyHops: z.int().positive().max(10).default(1),
    /**
     * With `trustProxy`: addresses or CIDR ranges (`10.0.0.0/8`, `fd00::/8`) of those proxies. `X-Forwarded-*`
     * is honoured only from these peers and removed from anyone else, so a client that reaches the gateway
     * directly cannot spoof its address. Absent: every peer is trusted (only safe if nothing else can connect).
     */
    trustedProxies: z
      .array(
        z
          .union([z.ipv4(), z.ipv6(), z.cidrv4(), z.cidrv6()], { error: 'must be an IP address or CIDR range' })
          // `0.0.0.0/0` is every client: each could then choose its own address (and rate-limit key).
          .refine((entry) => !/\/0+$/.test(entry), 'must not be a /0 range: that trusts every client to name its own address; list your proxies')
          .refine((entry) => !tooBroadToTrust(entry), TRUSTED_RANGE_RULE),
      )
      .nonempty()
      .optional(),
    /**
     * Continue a client's W3C `traceparent` instead of starting a new trace. Default false: at the edge,
     * clients could otherwise choose trace ids and sampling. With `trustedProxies`, only those peers' trace
     * context is continued (another peer's request starts a new trace). See README "Tracing".
     */
    trustTraceparent: z.boolean().default(false),
    /**
     * Let a client's UUID or 32-hex `X-Request-Id` become the trace id (one id from curl to Jaeger). Default
     * true. The sampling decision of such a trace never depends on the id (the client chose it); false keeps
     * the client's id as `request.id` only and gives the request a trace id of the gateway's own.
     */
    mapRequestIdToTraceId: z.boolean().default(true),
    /**
     * Host names this gateway answers for (`api.example.com`, `*.example.com` for any subdomain), compared
     * without port and case. Other hosts get 421, so a service never builds links from a client-chosen
     * `Host` / `X-Forwarded-Host`. Absent: any host (a warning at start-up in production).
     */
    allowedHosts: z
      .array(
        z
          .string()
          .regex(/^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[[0-9A-Fa-f:.]+\]$/, 'must be a host name, *.domain, or a bracketed IPv6 address')
          .refine((host) => !host.startsWith('[') || URL.canParse(`http://${host}`), 'must be a bracketed IPv6 address that parses (e.g. [2001:db8::1])'),
      )
      .nonempty()
      .optional(),
    /**
     * Request header names with `_` (`X_User_Id`): CGI, PHP, Rack and WSGI backends read them as their dash
     * twins (`X-User-Id`), so they could smuggle owned headers past the strip. `drop` (default) removes them,
     * `reject` answers 400, `allow` forwards them (only for services that never fold `_` into `-`). As
     * Envoy's `headers_with_underscores_action`.
     */
    headersWithUnderscores: z.enum(['drop', 'reject', 'allow']).default('drop'),
    /** Cross-origin browser access (CORS), for every route without its own `cors`. Off when absent. */
    cors: corsSchema.optional(),
    auth: z
      .strictObject({
        /**
         * HS256 signing secret (env `JWT_SECRET` only; never put it in the file). Required in production.
         * Elsewhere, when absent, each process generates a random one (see `secretSource`).
         */
        secret: z.string().min(1).optional(),
        issuer: z.string().min(1).default('koa-gateway'),
        audience: z.string().min(1).default('koa-gateway-api'),
        /** Lifetime of issued tokens, s. Default 3600. */
        tokenTtlSeconds: z.int().positive().max(86_400).default(3600),
        /** Clock skew accepted on `exp`/`nbf`/`iat`, s. Default 5. */
        clockToleranceSeconds: z.int().min(0).max(300).default(5),
        /** Where the gateway answers login itself. */
        loginPath: routedPath.default('/api/auth/login'),
        /**
         * Stricter limit for login attempts per client. Default 10 per minute; with the shared store down,
         * login is refused (503) unless `onStoreFailure` says `allow`.
         */
        loginRateLimit: rateLimitSchema.default({ max: 10, windowMs: 60_000 }),
        /**
         * Login attempts per account (the submitted email, case-folded), from all clients together, so a
         * password guesser spread over many addresses is limited once. Default 10 per 5 minutes.
         */
        loginAccountRateLimit: rateLimitSchema.default({ max: 10, windowMs: 300_000 }),
        /**
         * Largest login body, bytes. Default 16 KiB; at most 1 MiB: the body is read whole, before anyone is
         * authenticated, and an email and a password are a few hundred bytes.
         */
        loginBodyLimitBytes: z.int().positive().max(1024 * 1024).default(16 * 1024),
        /**
         * Verified tokens remembered until they expire (saves the signature check per request). Default 10 000; 0 =
         * off; at most 1 000 000 (a token and its claims take ~1 KiB: a bound past that is no bound on memory).
         */
        verifiedTokenCacheSize: z.int().min(0).max(1_000_000).default(10_000),
        /**
         * Also accept RS256/ES256 tokens of an external identity provider, verified with the keys its JWKS URL
         * publishes. Its tokens never verify with the gateway's own key, nor the other way round.
         */
        jwks: z
          .strictObject({
            url: z
              .url({ protocol: /^https?$/, error: 'must be an http(s) URL' })
              // fetch refuses a URL with credentials: the key set could never be fetched, and every provider token was 503.
              .refine((value) => !URL.canParse(value) || (new URL(value).username === '' && new URL(value).password === ''), 'must not carry credentials: fetch refuses such a URL, so the keys could never be fetched'),
            /** Required `iss` of the provider's tokens. */
            issuer: z.string().min(1),
            /** Required `aud` of the provider's tokens. */
            audience: z.string().min(1),
            algorithms: z.array(z.enum(['RS256', 'RS384', 'RS512', 'PS256', 'ES256', 'ES384', 'EdDSA'])).nonempty().default(['RS256', 'ES256']),
            /** Longest wait for the key set, ms; beyond it requests get 503 auth_unavailable. Default 2000. */
            timeoutMs: z.int().positive().max(30_000).default(2000),
            /** Least time between refetches for an unknown `kid`, ms. Default 30 s. */
            cooldownMs: z.int().min(0).max(MAX_TIMER_MS, TIMER_RULE).default(30_000),
            /** How long a fetched key set is trusted, ms. Default 10 min. */
            cacheMaxAgeMs: z.int().positive().max(MAX_TIMER_MS, TIMER_RULE).default(600_000),
            clockToleranceSeconds: z.int().min(0).max(300).default(5),
            /** Claim with the caller's role; absent -> role `user` (never admin by default). */
            roleClaim: z.string().min(1).default('role'),
            /**
             * Put before the provider's `sub` in X-User-Id, so a provider user "1" can never be taken for the
             * gateway's own user "1" by a service. Default `idp:`; empty only if both share one id space.
             */
            // What X-User-Id may hold (IDENTITY_VALUE: a comma would make a list of it, and the gateway refused every
            // provider token), and short enough that a 255-character `sub` behind it fits the services' 512.
            subjectPrefix: z.string().max(64).regex(/^[\x21-\x2b\x2d-\x7e]*$/, 'must be printable ASCII without spaces or commas').default('idp:'),
            /**
             * Pass a token's `email` on (X-User-Email) without `email_verified: true` beside it. Default false: with
             * many providers a user sets their own address unproven, and a service that matches accounts by email
             * would take it for the owner's (oauth2-proxy refuses them by default too).
             */
            passUnverifiedEmail: z.boolean().default(false),
          })
          .optional(),
      })
      .prefault({}),
    rateLimit: z
      .strictObject({
        ...rateLimitSchema.shape,
        // Defaults here, not only in the prefault below: a block that names any other key (the file's
        // `"rateLimit": { "redisUrl": ... }`, or REDIS_URL / RATE_LIMIT_IPV6_PREFIX / one of RATE_LIMIT_MAX and
        // RATE_LIMIT_WINDOW_MS over a file without the block) skips the prefault, and startup was refused for a
        // missing value whose default is documented.
        max: rateLimitSchema.shape.max.default(DEFAULT_RATE_LIMIT.max),
        windowMs: rateLimitSchema.shape.windowMs.default(DEFAULT_RATE_LIMIT.windowMs),
        /** Clients tracked at once by the in-memory store, per policy; beyond it expired windows are dropped, then the least spent. At most 10 000 000. */
        maxTrackedClients: z.int().positive().max(10_000_000).default(100_000),
        /** Shared store for several gateway replicas (`redis://host:6379/0`); in-memory per process when absent. */
        // ioredis reads the path (or a `db` query parameter) as the database number: `/ratelimit` or `?db=cache` became
        // SELECT NaN once connected, which ended the gateway that had started listening (an unhandled ReplyError),
        // and again at every restart.
        redisUrl: z
          .url({ protocol: /^rediss?$/, error: 'must be a redis:// or rediss:// URL' })
          .refine((value) => !URL.canParse(value) || redisDatabaseIsNumber(new URL(value)), 'must name its database by number, if at all (redis://host:6379/0)')
          .optional(),
        /** Longest a limit check waits for Redis, ms, before the store counts as down. Default 200. */
        redisTimeoutMs: z.int().positive().max(10_000).default(200),
        /** Prefix of every Redis key, so several gateways (or test runs) can share one Redis. */
        redisKeyPrefix: z.string().regex(/^[A-Za-z0-9:_-]+$/).default('koa-gateway:ratelimit'),
        /**
         * IPv6 clients are limited per network of this prefix length, not per address: one host is handed a
         * whole /64 and could otherwise rotate through it. Default 64; 128 = per address.
         */
        ipv6PrefixLength: z.int().min(1).max(128).default(64),
      })
      .prefault({}),
    server: z
      .strictObject({
        /** A client must send its whole request head within this, ms (slow-header clients get 408). Default 10 s. */
        headersTimeoutMs: z.int().positive().max(MAX_TIMER_MS, TIMER_RULE).default(10_000),
        /** A client must send its whole request, body included, within this, ms (408; an HTTP/2 stream is reset with CANCEL, src/tls.ts). Default 120 s. */
        requestTimeoutMs: z.int().min(0).max(MAX_TIMER_MS, TIMER_RULE).default(120_000),
        /** Idle keep-alive connections from clients are closed after this, ms. Default 5 s. */
        keepAliveTimeoutMs: z.int().positive().max(MAX_TIMER_MS, TIMER_RULE).default(5_000),
        /**
         * Bytes of an answer waiting for the client must be taken within this, ms: an HTTP/2 client can hold one back
         * for good with a flow-control window of 0 (its stream, memory and a connection slot), PINGs keeping the
         * session alive. Past it, unless the client takes it at 240 bytes/s on average (judged per stream over
         * HTTP/2), the stream is reset (CANCEL) or the HTTP/1.1 connection closed, logged `client_read_timeout`.
         * Default 10 s.
         */
        sendTimeoutMs: z.int().positive().max(MAX_TIMER_MS, TIMER_RULE).default(10_000),
        /** Client connections open at once; further ones are closed at accept. Default 10 000; at most 1 000 000. */
        maxConnections: z.int().positive().max(1_000_000).default(10_000),
        /**
         * Connections one client address may hold open at once (an IPv6 client's network of
         * `rateLimit.ipv6PrefixLength`, as the limits count it), an HTTP/2 connection counting one and each stream
         * open on it one more; further connections are closed at accept, further streams reset (REFUSED_STREAM). A
         * trusted proxy's (`trustProxy`, `trustedProxies`) are not counted: they carry many clients. Per process, as
         * `maxConnections` is, and per public listener. Default 1 000; 0 = off.
         */
        maxConnectionsPerClient: z.int().min(0).default(1_000),
        /**
         * Least average rate of a request body, bytes/s, once `bodyGracePeriodMs` has passed; slower uploads
         * are cut with 408 (so a trickling client cannot hold an upstream connection). Default 240 (Kestrel's
         * MinRequestBodyDataRate); 0 = off.
         */
        minBodyBytesPerSecond: z.int().min(0).default(240),
        /** Time a body may take before `minBodyBytesPerSecond` is enforced, ms. Default 5 s. */
        bodyGracePeriodMs: z.int().positive().max(MAX_TIMER_MS, TIMER_RULE).default(5_000),
        /**
         * With `workers`: how long a worker may take from its fork to listening, ms; one still not listening is
         * killed (replaced, or, before the gateway first listened, the gateway stops with exit 1). Default 60 s.
         */
        workerStartTimeoutMs: z.int().min(1000, 'must be at least 1000 ms: a worker loads its modules and builds its pipeline first').max(MAX_TIMER_MS, TIMER_RULE).default(60_000),
      })
      // Node refuses to start a server whose whole-request bound is under its head bound, in words of its own.
      .refine((server) => server.requestTimeoutMs === 0 || server.requestTimeoutMs >= server.headersTimeoutMs, { path: ['requestTimeoutMs'], message: 'must be 0 (off) or at least server.headersTimeoutMs' })
      .prefault({}),
    proxy: z
      .strictObject({
        /** Upstream idle timeout, ms (no byte for this long -> 504). Default 10 s. */
        timeoutMs: z.int().positive().max(MAX_TIMER_MS, TIMER_RULE).default(10_000),
        /** Keep-alive sockets per upstream. Default 256; at most 65 535 (one client address has no more ports). */
        maxSockets: z.int().positive().max(65_535).default(256),
        /** Largest request body forwarded, bytes (413 beyond). Default 50 MiB. */
        maxBodyBytes: z.int().positive().default(50 * 1024 * 1024),
        /**
         * Bytes of a request body read before a connection to its service is taken. A body no longer is read whole
         * first (and may go to another instance when one refuses the connection); a longer one streams on once
         * this much has come (nginx's proxy_request_buffering, in memory). A client sending slowly then holds none
         * of a service's `maxSockets` with a small body, and must send this much before it holds one. Bodies still
         * being read ahead hold at most 64 MiB of a process's memory in all; past that, bodies stream from their
         * first byte. Uploads whose clients are still sending take at most half of an instance's `maxSockets`
         * either way (src/middleware/proxy.ts).
         * Default 64 KiB; 0 = every body streams from its first byte; at most 16 MiB.
         */
        requestBufferBytes: z.int().min(0).max(16 * 1024 * 1024).default(64 * 1024),
        /**
         * Requests that may wait for a connection to one upstream instance once all `maxSockets` are busy;
         * beyond it, 503 `upstream_busy` with `Retry-After` (Envoy's max_pending_requests). Default 1024.
         */
        maxPendingRequests: z.int().min(0).max(1_000_000).default(1024),
        /** Longest a whole upstream exchange may last, ms (504 before the response starts, cut after). Default 60 s. */
        deadlineMs: z.int().positive().max(MAX_TIMER_MS, TIMER_RULE).default(60_000),
        /**
         * Service response headers never passed to clients: they name the software behind the gateway and its
         * version, which helps an attacker pick exploits, or the host that answered. Default `Server`,
         * `X-Powered-By`, ASP.NET's `X-AspNet-Version` and `X-AspNetMvc-Version`, and `X-Backend-Server`; [] keeps them.
         */
        hideUpstreamHeaders: z.array(z.string().regex(FIELD_NAME_TOKEN, 'must be a header name')).max(32).default([...DEFAULT_HIDDEN_UPSTREAM_HEADERS]),
        /**
         * Key of the gateway's signature on what it tells services (env `GATEWAY_SIGNING_KEY` only): each service's
         * key is derived from it, and each service holds its own and answers only signed requests
         * (src/gateway-signature.ts). Required in production, at least 32 characters. Unset elsewhere: nothing is signed.
         */
        signingKey: z.string().min(SIGNING_KEY_MIN_LENGTH, `must be at least ${SIGNING_KEY_MIN_LENGTH} characters`).optional(),
      })
      .prefault({}),
    /**
     * The internal listener: `/ready` with per-instance details (addresses, ejections). Off unless `port` is
     * set; loopback by default. Never expose it publicly.
     */
    admin: z
      .strictObject({
        port: z.int().min(0).max(65535).optional(),
        host: listenHost.default('127.0.0.1'),
      })
      .prefault({}),
    /**
     * The Prometheus scrape listener (`GET /metrics`, OpenMetrics with exemplars). Off unless `port` is set;
     * loopback by default; never the public port.
     */
    metrics: z
      .strictObject({
        port: z.int().min(0).max(65535).optional(),
        host: listenHost.default('127.0.0.1'),
      })
      .prefault({}),
    /** How long one readiness answer (a probe of every instance) is reused, ms. Default 1000. */
    readinessCacheMs: z.int().min(0).max(60_000).default(1000),
    /** The response cache of routes with `cache`: its header, byte bounds and shared-store prefix. */
    cache: cacheSettingsSchema,
    /**
     * HTTPS on the public port (src/tls.ts): HTTP/2 offered by ALPN with HTTP/1.1 beside it. Off when absent
     * (plain HTTP, e.g. behind a TLS-terminating load balancer). Files are read at start and again on SIGHUP.
     */
    tls: z
      .strictObject({
        /** PEM certificate (chain) file, relative to the working directory. */
        certFile: z.string().min(1),
        /** PEM private key file. Keep it readable by the gateway's user only. */
        keyFile: z.string().min(1),
        /** PEM certificates of the issuing chain, sent after `certFile`'s when that file holds the leaf only. */
        caFile: z.string().min(1).optional(),
        /** Oldest TLS version accepted. Default `TLSv1.2`. */
        minVersion: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
        /** A plain-HTTP listener on this port that answers 308 to the HTTPS URL (`/health` excepted). Off when absent. */
        redirectHttpPort: z.int().min(0).max(65535).optional(),
        /** `Strict-Transport-Security` on every HTTPS response (RFC 6797). Off when absent. */
        hsts: z
          .strictObject({
            /** How long browsers remember to use HTTPS only, s. Default one year. */
            maxAgeSeconds: z.int().min(0).max(2 * 365 * 86_400).default(365 * 86_400),
            includeSubDomains: z.boolean().default(false),
            /** Ask to be preloaded in browsers (hstspreload.org requires includeSubDomains and max-age of a year or more). */
            preload: z.boolean().default(false),
          })
          .refine((hsts) => !hsts.preload || (hsts.includeSubDomains && hsts.maxAgeSeconds >= 365 * 86_400), { message: 'preload needs includeSubDomains and maxAgeSeconds of at least a year', path: ['preload'] })
          .optional(),
      })
      .optional(),
    /** Upstream services by key; routes name them. */
    services: z.record(
      z.string().regex(SERVICE_KEY_PATTERN),
      z.strictObject({
        /** One origin, or several to balance round robin (env: comma-separated). */
        url: z.union([serviceUrl, z.array(serviceUrl).nonempty()], { error: SERVICE_URLS_RULE }),
        /**
         * The service's gRPC interface, when it has one beside its HTTP `url` (one origin or several, `http://`
         * for plaintext h2c); routes with `grpc` call it. Default: `url` (a service that speaks only gRPC).
         */
        grpcUrl: z.union([serviceUrl, z.array(serviceUrl).nonempty()], { error: SERVICE_URLS_RULE }).optional(),
        /** Passive health: consecutive connection failures (refused, reset, timeout) that eject an instance. Default 3. */
        ejectAfterFailures: z.int().positive().default(3),
        /** How long an ejected instance gets no traffic, ms. Default 10 s. */
        ejectMs: z.int().positive().max(MAX_TIMER_MS, TIMER_RULE).default(10_000),
        /** HTTP/2 keepalive pings on the gRPC channels to this service's instances (grpcKeepaliveSchema). Off when absent. */
        keepalive: grpcKeepaliveSchema.optional(),
      }),
    ),
    routes: z.array(routeSchema).nonempty(),
    /**
     * API-key consumers. In the file, or in a JSON file of the same shape that `consumersFile` names (read by
     * loadConfig, relative to the config file). None by default: API keys are then not accepted anywhere.
     */
    consumers: z.array(consumerSchema).default([]),
  });

/** The rules between fields, for the file as read and for what a reload runs (the restart-only keys kept). */
function crossFieldRules(config: z.output<typeof configFields>, ctx: Pick<z.RefinementCtx, 'addIssue'>): void {
  // Own keys only: `in` also finds what every object inherits (a route naming `toString` or `constructor` passed, then
  // every request on it was a 500).
  if (!Object.hasOwn(config.services, 'users')) {
    ctx.addIssue({ code: 'custom', path: ['services', 'users'], message: 'is required: login checks credentials with the users service', input: undefined });
  }
  const seenNames = new Set<string>();
  const reservedPaths = new Set<string>([config.auth.loginPath, '/health', '/ready'].map((reserved) => reserved.toLowerCase()));
  // The probes answer before login (src/gateway.ts): a login at one of their paths could never be reached.
  if (['/health', '/ready'].includes(config.auth.loginPath.toLowerCase())) {
    ctx.addIssue({ code: 'custom', path: ['auth', 'loginPath'], message: 'is a probe path (/health, /ready), answered before login: no login could reach it', input: config.auth.loginPath });
  }
  const seenPrefixes = new Set<string>();
  config.routes.forEach((route, index) => {
    if (!Object.hasOwn(config.services, route.service)) {
      ctx.addIssue({ code: 'custom', path: ['routes', index, 'service'], message: `names no entry of services (${Object.keys(config.services).join(', ')})`, input: route.service });
    }
    if (seenNames.has(route.name)) {
      ctx.addIssue({ code: 'custom', path: ['routes', index, 'name'], message: 'is used by another route', input: route.name });
    }
    // An exact route may refine a prefix route of the same path (e.g. admin-only listing). Routes match
    // case-insensitively (src/routes.ts), so prefixes that differ only in case are the same prefix.
    const prefixKey = route.exact ? `${route.prefix.toLowerCase()} (exact)` : route.prefix.toLowerCase();
    // An exact route at a gateway path with a format suffix too (`/health.v1`, `/ready.json`): routing takes that
    // path for the gateway's own (src/routes.ts isReserved), so the route was never reached. A prefix route there
    // still serves the paths below it.
    const lower = route.prefix.toLowerCase();
    const suffixDot = lower.indexOf('.', lower.lastIndexOf('/'));
    if (seenPrefixes.has(prefixKey) || reservedPaths.has(lower) || (route.exact && suffixDot !== -1 && reservedPaths.has(lower.slice(0, suffixDot)))) {
      ctx.addIssue({ code: 'custom', path: ['routes', index, 'prefix'], message: 'is already taken', input: route.prefix });
    }
    // A gRPC route's upstream path is matched against its proto's HTTP rules, and its calls go to the gRPC port.
    if (route.grpc === undefined && isServiceInternal(route.upstreamPath.toLowerCase())) {
      ctx.addIssue({ code: 'custom', path: ['routes', index, 'upstreamPath'], message: "must not be under /internal: the services' own endpoints are never routed to", input: route.upstreamPath });
    }
    if (typeof route.auth === 'object' && route.auth.methods.includes('apiKey') && config.consumers.length === 0) {
      ctx.addIssue({ code: 'custom', path: ['routes', index, 'auth', 'methods'], message: 'accept apiKey but no consumers are declared', input: route.auth.methods });
    }
    if (route.rateLimit && route.rateLimit.by !== 'ip' && route.auth === 'public') {
      ctx.addIssue({ code: 'custom', path: ['routes', index, 'rateLimit', 'by'], message: 'needs an authenticated route (auth not "public")', input: route.rateLimit.by });
    }
    if (route.roles && route.auth === 'public') {
      ctx.addIssue({ code: 'custom', path: ['routes', index, 'roles'], message: 'need auth "required"', input: route.roles });
    }
    // A gRPC route ends at the translation (src/middleware/grpc-transcode.ts): HTTP caching and header rules never run for it.
    for (const key of ['cache', 'headers'] as const) {
      if (route.grpc && route[key] !== undefined) ctx.addIssue({ code: 'custom', path: ['routes', index, key], message: 'does not apply to a grpc route', input: undefined });
    }
    seenNames.add(route.name);
    seenPrefixes.add(prefixKey);
    const statusHeader = config.cache.statusHeader.toLowerCase();
    for (const list of ['add', 'set', 'remove'] as const) {
      const named = route.headers?.response?.[list];
      for (const name of Array.isArray(named) ? named : Object.keys(named ?? {})) {
        if (name.toLowerCase() === statusHeader) ctx.addIssue({ code: 'custom', path: ['routes', index, 'headers', 'response', list], message: `names ${name}, the cache status header (cache.statusHeader) the gateway writes`, input: name });
      }
    }
    if (route.cache) {
      if (route.methods && !route.methods.includes('GET')) {
        ctx.addIssue({ code: 'custom', path: ['routes', index, 'cache'], message: 'needs GET among the route\'s methods: only GET and HEAD are cached', input: route.methods });
      }
      if ((route.cache.maxBytes ?? 0) > config.cache.maxBytes) {
        ctx.addIssue({ code: 'custom', path: ['routes', index, 'cache', 'maxBytes'], message: `must not exceed cache.maxBytes (${config.cache.maxBytes})`, input: route.cache.maxBytes });
      }
      route.cache.varyHeaders.forEach((name, position) => {
        const reason = ownedRequestHeader(name);
        if (reason) ctx.addIssue({ code: 'custom', path: ['routes', index, 'cache', 'varyHeaders', position], message: `is ${reason}: a client's value of it never reaches the service`, input: name });
      });
    }
  });
  if (HTTP_RESPONSE_FIELDS.has(config.cache.statusHeader.toLowerCase())) {
    // `HIT` written over the service's Cache-Control or the computed Age would tell every cache after us a lie.
    ctx.addIssue({ code: 'custom', path: ['cache', 'statusHeader'], message: 'is a standard response field that HIT or MISS would overwrite', input: config.cache.statusHeader });
  } else if (ownedRequestHeader(config.cache.statusHeader) || ownedResponseHeader(config.cache.statusHeader)) {
    ctx.addIssue({ code: 'custom', path: ['cache', 'statusHeader'], message: 'is a header the gateway writes for another purpose', input: config.cache.statusHeader });
  }
  const seenConsumers = new Set<string>();
  const seenHashes = new Set<string>();
  config.consumers.forEach((consumer, index) => {
    if (seenConsumers.has(consumer.id)) ctx.addIssue({ code: 'custom', path: ['consumers', index, 'id'], message: 'is used by another consumer', input: consumer.id });
    seenConsumers.add(consumer.id);
    consumer.keys.forEach((key, keyIndex) => {
      // One key, one consumer: otherwise who called would depend on declaration order.
      if (seenHashes.has(key.hash)) ctx.addIssue({ code: 'custom', path: ['consumers', index, 'keys', keyIndex, 'hash'], message: 'is declared twice', input: '(hidden)' });
      seenHashes.add(key.hash);
    });
  });
  // Keepalive is HTTP/2 pings on gRPC channels: a service that only HTTP routes call has none to ping on.
  const grpcServices = new Set(config.routes.flatMap((route) => (route.grpc ? [route.service] : [])));
  for (const [name, service] of Object.entries(config.services)) {
    if (service.keepalive && !grpcServices.has(name)) {
      ctx.addIssue({ code: 'custom', path: ['services', name, 'keepalive'], message: 'applies to gRPC channels only, and no route with grpc calls this service: it would do nothing', input: service.keepalive });
    }
  }
  if (config.trustedProxies && !config.trustProxy) {
    ctx.addIssue({ code: 'custom', path: ['trustedProxies'], message: 'need trustProxy true (TRUST_PROXY=true)', input: config.trustedProxies });
  }
  const { secret } = config.auth;
  // Trimmed: the published secret with a newline `echo` added is the published secret.
  if (secret !== undefined && PUBLISHED_JWT_SECRETS.includes(secret.trim())) {
    ctx.addIssue({ code: 'custom', path: ['auth', 'secret'], message: 'is a published secret: anyone could mint tokens with it', input: '(hidden)' });
  } else if (config.environment === 'production' && secret === undefined) {
    ctx.addIssue({ code: 'custom', path: ['auth', 'secret'], message: 'must be set (JWT_SECRET) in production', input: undefined });
  } else if (secret !== undefined && secret.length < 32) {
    // In every mode, as the signing key: compose runs the gateway in development, where `JWT_SECRET=secret` started
    // without a word and a token minted with it was admin on every route (an outside review). Unset, a random one.
    ctx.addIssue({ code: 'custom', path: ['auth', 'secret'], message: 'must be at least 32 characters (openssl rand -base64 48), or unset outside production for a random one', input: '(hidden)' });
  } else if (secret !== undefined) {
    const secretProblem = keyMaterialProblem(secret);
    if (secretProblem) ctx.addIssue({ code: 'custom', path: ['auth', 'secret'], message: secretProblem, input: '(hidden)' });
  }
  const signingKeyProblem = config.proxy.signingKey !== undefined ? keyMaterialProblem(config.proxy.signingKey) : undefined;
  if (signingKeyProblem) ctx.addIssue({ code: 'custom', path: ['proxy', 'signingKey'], message: signingKeyProblem, input: '(hidden)' });
  // One key, one purpose (RFC 8725 3.5): as the JWT secret, the signing key (which services held before they had keys
  // of their own, and still do while a deployment moves off it) would let anyone who reads one service's environment
  // mint the gateway an admin token (blanks at the ends aside: the same key).
  if (config.proxy.signingKey !== undefined && secret !== undefined && config.proxy.signingKey.trim() === secret.trim()) {
    ctx.addIssue({ code: 'custom', path: ['proxy', 'signingKey'], message: 'must differ from auth.secret (JWT_SECRET): one key, one purpose (whoever holds the signing key could mint tokens with it)', input: '(hidden)' });
  }
  // Not a URL at all: its own check said so (this refinement runs regardless, and `new URL` would throw).
  if (config.environment === 'production' && config.auth.jwks && URL.canParse(config.auth.jwks.url) && new URL(config.auth.jwks.url).protocol !== 'https:') {
    ctx.addIssue({ code: 'custom', path: ['auth', 'jwks', 'url'], message: 'must be https in production: keys fetched over plain HTTP can be replaced on the way, and with them any token', input: config.auth.jwks.url });
  }
  if (config.tls?.hsts) {
    // The gateway's policy is the only one (RFC 6797 6.1); a rule's `max-age=0` would make browsers forget it.
    config.routes.forEach((route, index) => {
      const rule = route.headers?.response;
      const names = [...Object.keys(rule?.add ?? {}), ...Object.keys(rule?.set ?? {}), ...(rule?.remove ?? [])];
      if (names.some((name) => name.toLowerCase() === 'strict-transport-security')) {
        ctx.addIssue({ code: 'custom', path: ['routes', index, 'headers', 'response'], message: 'may not write Strict-Transport-Security: with tls.hsts the gateway writes it', input: undefined });
      }
    });
  }
  if (config.environment === 'production' && config.proxy.signingKey === undefined) {
    ctx.addIssue({ code: 'custom', path: ['proxy', 'signingKey'], message: 'must be set (GATEWAY_SIGNING_KEY) in production: without it a service cannot tell the gateway from anyone who reaches it', input: undefined });
  }
  if (config.admin.port !== undefined && config.admin.port !== 0 && config.admin.port === config.port) {
    ctx.addIssue({ code: 'custom', path: ['admin', 'port'], message: 'must differ from port: the internal listener is never the public one', input: config.admin.port });
  }
  const redirectPort = config.tls?.redirectHttpPort;
  if (redirectPort !== undefined && redirectPort !== 0 && [config.port, config.admin.port, config.metrics.port].includes(redirectPort)) {
    ctx.addIssue({ code: 'custom', path: ['tls', 'redirectHttpPort'], message: 'must differ from port, admin.port and metrics.port', input: redirectPort });
  }
  if (config.metrics.port !== undefined && config.metrics.port !== 0 && (config.metrics.port === config.port || config.metrics.port === config.admin.port)) {
    ctx.addIssue({ code: 'custom', path: ['metrics', 'port'], message: 'must differ from port and admin.port: metrics are never served on the public listener', input: config.metrics.port });
  }
}

const configSchema = configFields
  .superRefine(crossFieldRules)
  .transform(({ auth: { secret, ...auth }, ...config }) => ({
    ...config,
    auth: {
      ...auth,
      // Outside production an unset secret is replaced by a random one: no token minted elsewhere verifies.
      secret: secret ?? randomBytes(32).toString('base64url'),
      /** `configured` (JWT_SECRET) or `generated` (random per process: tokens do not survive a restart or span replicas). */
      secretSource: secret === undefined ? ('generated' as const) : ('configured' as const),
    },
  }));

export type GatewayConfig = Readonly<z.output<typeof configSchema>>;
export type RouteConfig = GatewayConfig['routes'][number];
export type RateLimitConfig = z.output<typeof rateLimitSchema>;
export type RouteRateLimitConfig = z.output<typeof routeRateLimitSchema>;
export type ConsumerConfig = z.output<typeof consumerSchema>;
export type CorsConfig = z.output<typeof corsSchema>;
export type TlsConfig = NonNullable<z.output<typeof configSchema>['tls']>;

/** Environment variables that override file keys (the tutorial gateway's names kept working). */
export const ENV_OVERRIDES = {
  PORT: 'port',
  HOST: 'host',
  GATEWAY_WORKERS: 'workers',
  NODE_ENV: 'environment',
  LOG_LEVEL: 'logLevel',
  TRUST_PROXY: 'trustProxy',
  TRUST_TRACEPARENT: 'trustTraceparent',
  MAP_REQUEST_ID_TO_TRACE_ID: 'mapRequestIdToTraceId',
  ALLOWED_HOSTS: 'allowedHosts',
  HEADERS_WITH_UNDERSCORES: 'headersWithUnderscores',
  ADMIN_PORT: 'admin.port',
  ADMIN_HOST: 'admin.host',
  METRICS_PORT: 'metrics.port',
  METRICS_HOST: 'metrics.host',
  TRUSTED_PROXY_HOPS: 'trustedProxyHops',
  JWT_SECRET: 'auth.secret',
  GATEWAY_SIGNING_KEY: 'proxy.signingKey',
  JWT_ISSUER: 'auth.issuer',
  JWT_AUDIENCE: 'auth.audience',
  JWKS_URL: 'auth.jwks.url',
  JWKS_ISSUER: 'auth.jwks.issuer',
  JWKS_AUDIENCE: 'auth.jwks.audience',
  USER_SERVICE_URL: 'services.users.url',
  ORDER_SERVICE_URL: 'services.orders.url',
  NOTIF_SERVICE_URL: 'services.notifications.url',
  NOTIF_GRPC_SERVICE_URL: 'services.notifications.grpcUrl',
  RATE_LIMIT_MAX: 'rateLimit.max',
  RATE_LIMIT_WINDOW_MS: 'rateLimit.windowMs',
  PROXY_TIMEOUT_MS: 'proxy.timeoutMs',
  REDIS_URL: 'rateLimit.redisUrl',
  RATE_LIMIT_IPV6_PREFIX: 'rateLimit.ipv6PrefixLength',
} as const satisfies Record<string, string>;

/**
 * Where a deployment puts the gateway and whom it talks to: its listeners and the services' and Redis' addresses.
 * Each deployment sets them over the file by design (compose and Kubernetes name the containers where the file names
 * 127.0.0.1), so the start does not warn of them as shadowing the file (envShadowedKeys' `except`).
 */
export const DEPLOYMENT_ENV_VARIABLES: ReadonlySet<string> = new Set(['PORT', 'HOST', 'ADMIN_PORT', 'ADMIN_HOST', 'METRICS_PORT', 'METRICS_HOST', 'USER_SERVICE_URL', 'ORDER_SERVICE_URL', 'NOTIF_SERVICE_URL', 'NOTIF_GRPC_SERVICE_URL', 'REDIS_URL'] satisfies (keyof typeof ENV_OVERRIDES)[]);

/** Keys whose env value is a comma-separated list. */
const LIST_KEYS: ReadonlySet<string> = new Set(['allowedHosts']);

/** Path of the route file; relative paths resolve against the working directory. */
export const CONFIG_PATH_VARIABLE = 'GATEWAY_CONFIG';
export const DEFAULT_CONFIG_PATH = 'gateway.config.json';

/** Every environment variable the gateway reads (compose and the docs are checked against this list). */
export const GATEWAY_ENV_VARIABLES: readonly string[] = [CONFIG_PATH_VARIABLE, ...Object.keys(ENV_OVERRIDES)];

/** Thrown for any configuration problem; its message is the one line printed at startup. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

type Env = Record<string, string | undefined>;

/** Env values are strings; numbers and booleans are converted only when they are well formed, so the schema reports the rest. */
/**
 * Keys whose env value is text however it looks: a secret, an issuer or an audience may be all digits (a JWT_SECRET
 * of 32 digits was refused as "expected string, received number").
 */
const TEXT_KEYS: ReadonlySet<string> = new Set(['auth.secret', 'proxy.signingKey', 'auth.issuer', 'auth.audience', 'auth.jwks.issuer', 'auth.jwks.audience', 'host', 'admin.host', 'metrics.host']);

/** An env value as the schema's type: a number for anything numeric (`1.5` too, so the schema says "expected int"), true/false. */
function envValue(raw: string, keyPath: string): unknown {
  if (TEXT_KEYS.has(keyPath)) return raw;
  if (/^-?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(raw)) return Number(raw);
  if (raw === 'true' || raw === 'false') return raw === 'true';
  return raw;
}

/** The keys the environment sets (non-empty variables of ENV_OVERRIDES), each with its value as the schema reads it. */
function envOverrides(env: Env): { name: string; keyPath: string; value: unknown }[] {
  return Object.entries(ENV_OVERRIDES).flatMap(([name, keyPath]) => {
    const raw = env[name];
    if (raw === undefined || raw === '') return [];
    // A service URL variable may list several instances: `http://a:4001,http://b:4001`.
    const splitList = LIST_KEYS.has(keyPath) || ((keyPath.endsWith('.url') || keyPath.endsWith('.grpcUrl')) && raw.includes(','));
    return [{ name, keyPath, value: splitList ? raw.split(',').map((item) => item.trim()).filter(Boolean) : envValue(raw, keyPath) }];
  });
}

/**
 * Keys the config file gives a value the environment overrides (`rateLimit.max (RATE_LIMIT_MAX)`), read from the
 * file as it is now: a process's environment never changes, so an edit of such a key never applies, and a reload
 * that tightened one in the file (`rateLimit.max`, `trustProxy`) answered `unchanged` without a word. None when the
 * file cannot be read (the reload says why).
 */
export function envShadowedKeys(env: Env = process.env, cwd: string = process.cwd(), except: ReadonlySet<string> = new Set()): string[] {
  let file: unknown;
  try {
    file = JSON.parse(readFileSync(path.resolve(cwd, env[CONFIG_PATH_VARIABLE] || DEFAULT_CONFIG_PATH), 'utf8'));
  } catch {
    return [];
  }
  return envOverrides(env).flatMap(({ name, keyPath, value }) => {
    if (except.has(name)) return [];
    const written = valueAt(file, keyPath);
    return written === undefined || JSON.stringify(written) === JSON.stringify(value) ? [] : [`${keyPath} (${name})`];
  });
}

/** The value at a dotted key path (`rateLimit.max`) of a config or a parsed config file, own members only; else undefined. */
export function valueAt(config: unknown, dotted: string): unknown {
  return dotted.split('.').reduce<unknown>((node, key) => (typeof node === 'object' && node !== null && Object.hasOwn(node, key) ? (node as Record<string, unknown>)[key] : undefined), config);
}

function setPath(target: Record<string, unknown>, dotted: string, value: unknown): void {
  const keys = dotted.split('.');
  let node = target;
  for (const key of keys.slice(0, -1)) {
    const child = node[key];
    node = typeof child === 'object' && child !== null ? (child as Record<string, unknown>) : (node[key] = {});
  }
  node[keys[keys.length - 1]!] = value;
}

/**
 * The variable that sets a key, or a list element's key (`allowedHosts.0` is ALLOWED_HOSTS), when it is the one
 * to look at: it is set, or the value is missing (either may supply it). Not for a wrong value from the file:
 * named whenever one could have set it, a file's `"port": "3000"` was reported as `PORT (port)`, and the
 * operator looked for a variable that was not there.
 */
function envNameFor(keyPath: string, env: Env, missing: boolean): string | undefined {
  const listKey = keyPath.replace(/(\.\d+)+$/, '');
  const name = Object.entries(ENV_OVERRIDES).find(([, key]) => key === keyPath || key === listKey)?.[0];
  return name !== undefined && (missing || (env[name] !== undefined && env[name] !== '')) ? name : undefined;
}

function describe(value: unknown): string {
  // A URL's password (`redis://:secret@host`) never reaches a log line or a reload answer, even in a refused value.
  const text = hideUrlPasswords(JSON.stringify(value) ?? String(value));
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/**
 * Who a route lets in, in the words of `npm start`'s banner: `public`, the credentials it accepts (`token`,
 * `API key`, `token or API key`: a `required` route accepts a key as well once consumers are declared), and its
 * roles when it names some.
 */
export function describeRouteAccess(route: Pick<RouteConfig, 'auth' | 'roles'>, consumersDeclared: boolean): string {
  if (route.auth === 'public') return 'public';
  const methods: readonly AuthMethod[] = route.auth === 'required' ? (consumersDeclared ? ['jwt', 'apiKey'] : ['jwt']) : route.auth.methods;
  const credentials = methods.map((method) => (method === 'jwt' ? 'token' : 'API key')).join(' or ');
  return route.roles ? `${credentials}; roles: ${route.roles.join(', ')}` : credentials;
}

/**
 * Keys whose values are secrets: never echoed in an error, not even a wrong one. A key's `hash` is no secret, but
 * the key `npm run apikey` prints above it, pasted in its place, is one, and it was echoed whole in the refusal.
 * A header rule's values are often an upstream's credential (`set: { "X-Upstream-Key": "sk_live_..." }`): a
 * stray space refused one and quoted it in the log and the reload's 422.
 */
const SECRET_KEY_PATHS: readonly RegExp[] = [/^auth\.secret$/, /^proxy\.signingKey$/, /^consumers\.\d+\.keys(?:\.|$)/, /^routes\.\d+\.headers\.(?:request|response)\.(?:set|add)(?:\.|$)/];

interface ConfigIssue {
  path: PropertyKey[];
  message: string;
  input?: unknown;
}

/** A refusal naming the first issue's key (and the variable that set it), its rule, and its value unless secret. */
function configErrorOf(issues: readonly ConfigIssue[], env: Env): ConfigError {
  const issue = issues[0]!;
  const keyPath = issue.path.map(String).join('.');
  const envName = envNameFor(keyPath, env, issue.input === undefined);
  const key = envName ? `${envName} (${keyPath})` : keyPath || '(root)';
  const shown = SECRET_KEY_PATHS.some((secret) => secret.test(keyPath)) ? undefined : issue.input;
  const value = shown !== undefined && typeof shown !== 'object' ? ` (got ${describe(shown)})` : '';
  const more = issues.length > 1 ? ` [+${issues.length - 1} more]` : '';
  return new ConfigError(`config: ${key}: ${issue.message}${value}${more}`);
}

/** Applies env overrides to the parsed file and validates the result. Pure: tests call it directly. */
export function parseConfig(file: unknown, env: Env = {}): GatewayConfig {
  if (typeof file !== 'object' || file === null || Array.isArray(file)) {
    throw new ConfigError('config: the file must hold a JSON object');
  }
  const merged = structuredClone(file) as Record<string, unknown>;
  for (const { keyPath, value } of envOverrides(env)) setPath(merged, keyPath, value);
  const result = configSchema.safeParse(merged, { reportInput: true });
  if (!result.success) throw configErrorOf(result.error.issues, env);
  return deepFreeze(result.data);
}

/**
 * The rules between fields, run again on a config a reload assembled: the file's keys with the running values of
 * the restart-only ones (src/config-reload.ts). Each half passed alone; together they may not (a file without
 * `tls` may write Strict-Transport-Security, which the running `tls.hsts` forbids).
 */
export function checkCrossFieldRules(config: GatewayConfig, env: Env = {}): void {
  const issues: ConfigIssue[] = [];
  crossFieldRules(config, { addIssue: (issue) => void issues.push(typeof issue === 'string' ? { path: [], message: issue } : { path: issue.path ?? [], message: issue.message ?? 'is invalid', input: issue.input }) });
  if (issues.length > 0) throw configErrorOf(issues, env);
}

/** V8 quotes this many characters of the text before an unexpected token, after `...`. */
const JSON_ERROR_CONTEXT = 10;

/**
 * JSON.parse's error for a config file, without the file's text: V8 quotes up to 10 characters either side of an
 * unexpected token (`Unexpected token 'k', ..."secret": kq9Vx7pLm2"... is not valid JSON`), and a config file may
 * hold secrets (a Redis password, an API key pasted where its hash goes), which reached the log, the reload's 422
 * and stderr. The quote becomes where it is, found in the file; a message of any other form that quotes text goes.
 */
export function jsonSyntaxError(message: string, text: string): string {
  const quoted = /^Unexpected token '([\s\S])', (\.\.\.)?"([\s\S]*?)"(?:\.\.\.)? is not valid JSON$/.exec(message);
  if (!quoted) return message.includes('"') ? 'a syntax error' : message;
  const [, token, cut, excerpt] = quoted as unknown as [string, string, string | undefined, string];
  const start = text.indexOf(excerpt);
  if (start === -1 || text.indexOf(excerpt, start + 1) !== -1) return 'an unexpected character';
  // Without the `...` the quote is the file from its start: the token's place is known only when it occurs once.
  if (!cut && excerpt.indexOf(token) !== excerpt.lastIndexOf(token)) return 'an unexpected character';
  const at = start + (cut ? JSON_ERROR_CONTEXT : excerpt.indexOf(token));
  const line = text.slice(0, at).split('\n').length;
  return `an unexpected character at line ${line} column ${at - text.lastIndexOf('\n', at - 1)}`;
}

/** Reads the route file named by `GATEWAY_CONFIG` (default ./gateway.config.json) and applies the env. */
export function loadConfig(env: Env = process.env, cwd: string = process.cwd()): GatewayConfig {
  const file = path.resolve(cwd, env[CONFIG_PATH_VARIABLE] || DEFAULT_CONFIG_PATH);
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (error) {
    throw new ConfigError(`config: ${CONFIG_PATH_VARIABLE}: cannot read ${file} (${(error as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  const text = utf8Text(bytes, `config: ${file}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(`config: ${file}: not valid JSON (${jsonSyntaxError((error as Error).message, text)})`);
  }
  refuseDeepNesting(parsed, `config: ${file}`);
  refuseDuplicateKeys(text, file);
  return parseConfig(withConsumersFile(parsed, path.dirname(file)), env);
}

/**
 * Inlines the consumers of the file `consumersFile` names (a JSON array, relative to the config file), so
 * keys can live apart from the route table (another owner, a mounted secret). Not with `consumers` beside it.
 */
function withConsumersFile(parsed: unknown, configDir: string): unknown {
  if (typeof parsed !== 'object' || parsed === null || !('consumersFile' in parsed)) return parsed;
  const { consumersFile, ...rest } = parsed as Record<string, unknown>;
  if (typeof consumersFile !== 'string' || consumersFile === '') throw new ConfigError('config: consumersFile: must be a file path');
  if ('consumers' in rest) throw new ConfigError('config: consumersFile: cannot be combined with consumers');
  const file = path.resolve(configDir, consumersFile);
  let consumers: unknown;
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (error) {
    throw new ConfigError(`config: consumersFile: cannot read ${file} as JSON (${(error as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  const text = utf8Text(bytes, `config: consumersFile: ${file}`);
  try {
    consumers = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(`config: consumersFile: cannot read ${file} as JSON (${jsonSyntaxError((error as Error).message, text)})`);
  }
  refuseDeepNesting(consumers, `config: consumersFile: ${file}`);
  refuseDuplicateKeys(text, file, 'consumers');
  return { ...rest, consumers };
}

/**
 * A key given twice in one object of a config file stops the load, naming it: JSON.parse would keep the last one
 * silently (src/json-duplicate-keys.ts), and which of the two the operator meant is anyone's guess.
 */
/**
 * A config file's bytes as text, refused unless they are UTF-8 (RFC 8259 8.1): read leniently, invalid bytes became
 * U+FFFD and a corrupted value (a role `admin\xff`) was taken as written. A byte-order mark is kept, for JSON.parse
 * to refuse as before.
 */
function utf8Text(bytes: Buffer, what: string): string {
  try {
    return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw new ConfigError(`${what}: not valid UTF-8`);
  }
}

/** Deepest nesting of a config file: its deepest key (`routes.N.headers.request.set.X`) is six levels down. */
const MAX_CONFIG_DEPTH = 32;

/** Refuses a file nested deeper than any config is: the duplicate-key scan overflowed the stack on it ("Maximum call stack size exceeded", no file named). */
function refuseDeepNesting(parsed: unknown, what: string): void {
  if (!nestedAtMost(parsed, MAX_CONFIG_DEPTH)) throw new ConfigError(`${what}: nested deeper than ${MAX_CONFIG_DEPTH} levels, as no config is`);
}

function refuseDuplicateKeys(text: string, file: string, under?: string): void {
  const key = duplicateJsonKey(text);
  if (key === undefined) return;
  const keyPath = under === undefined ? key : `${under}.${key}`;
  throw new ConfigError(`config: ${keyPath}: is given twice in ${file} (JSON would keep the last one without a word; keep the one you mean)`);
}

export function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}
