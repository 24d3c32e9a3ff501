/**
 * Every name that crosses a process boundary, in one place: HTTP headers, span attribute keys, log field
 * names and service names. The gateway (which strips and injects identity headers) and the services (which
 * trust them) both import from here, so the two sides cannot drift apart.
 */

import {
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_HTTP_ROUTE,
  ATTR_SERVER_ADDRESS,
  ATTR_SERVER_PORT,
  ATTR_URL_SCHEME,
  METRIC_HTTP_SERVER_REQUEST_DURATION,
} from '@opentelemetry/semantic-conventions';

/** HTTP header names, lower-case as Node presents them. */
export const HEADER = {
  requestId: 'x-request-id',
  userId: 'x-user-id',
  userRole: 'x-user-role',
  userEmail: 'x-user-email',
  /** The API-key consumer the gateway authenticated (src/consumers.ts); owned like the `x-user-*` headers. */
  consumerId: 'x-consumer-id',
  /** A client's API key. A credential: it stops at the gateway and never reaches a service. */
  apiKey: 'x-api-key',
  gatewayTimestamp: 'x-gateway-timestamp',
  /** The gateway's HMAC over the identity headers (src/gateway-signature.ts), for services that hold its key. */
  gatewaySignature: 'x-gateway-signature',
  authorization: 'authorization',
  wwwAuthenticate: 'www-authenticate',
  retryAfter: 'retry-after',
  traceparent: 'traceparent',
  tracestate: 'tracestate',
  baggage: 'baggage',
  traceresponse: 'traceresponse',
  /** How many more proxies an OPTIONS (or TRACE) request may pass (RFC 9110 7.6.2); the gateway counts itself. */
  maxForwards: 'max-forwards',
  /** The path prefix the proxies in front and the route took off: a trusted proxy's, then the gateway's own (src/upstream-headers.ts). */
  forwardedPrefix: 'x-forwarded-prefix',
  /** The intermediaries a request passed (RFC 9110 7.6.3); the gateway adds itself as VIA_PSEUDONYM. */
  via: 'via',
  /** How long Prometheus waits for a scrape's answer, s (it sends it on every scrape); src/metrics.ts answers within it. */
  prometheusScrapeTimeout: 'x-prometheus-scrape-timeout-seconds',
} as const;

/**
 * How the gateway names itself in `Via` (RFC 9110 7.6.3 allows a pseudonym for the host): the instance's host
 * and port would map the network behind it for every service log that records the header.
 */
export const VIA_PSEUDONYM = 'koa-gateway';

/**
 * `realm` of every `WWW-Authenticate` challenge, the gateway's and the services' (a 401 a service answers reaches the
 * client through the gateway and names the same protection space, RFC 9110 11.5).
 */
export const AUTH_REALM = 'koa-gateway';

/**
 * Header prefixes the gateway owns. Anything a client sends under them is removed before routing, so a
 * service that sees `x-user-id` knows the gateway put it there after verifying a token.
 */
export const GATEWAY_OWNED_HEADER_PREFIXES = ['x-user-', 'x-gateway-', 'x-consumer-'] as const;

/** Whether a (lower-case) header name is under a prefix the gateway owns (GATEWAY_OWNED_HEADER_PREFIXES). */
export function isGatewayOwnedHeader(name: string): boolean {
  return name.startsWith('x-') && GATEWAY_OWNED_HEADER_PREFIXES.some((prefix) => name.startsWith(prefix));
}

/**
 * Headers some frameworks let override the request's method or path (ASP.NET, Symfony, Laravel, Spring's
 * HiddenHttpMethodFilter, IIS URL Rewrite, Zend): a service honouring them would act on another request than
 * the one the gateway checked. Removed from every client request. So are Next.js' internal ones, which its server
 * believes from whoever sends them: `x-middleware-subrequest` skips its middleware, the authentication many apps do
 * there (CVE-2025-29927), `x-now-route-matches` had a page's answer cached for another (CVE-2024-46982), and the
 * `x-invoke-*` and `x-matched-path` ones pick the route it renders.
 */
export const REQUEST_REWRITE_HEADERS = [
  'x-http-method-override',
  'x-http-method',
  'x-method-override',
  'x-original-method',
  'x-original-url',
  'x-original-uri',
  'x-rewrite-url',
  'x-override-url',
  'x-middleware-subrequest',
  'x-middleware-invoke',
  'x-now-route-matches',
  'x-invoke-path',
  'x-invoke-query',
  'x-invoke-output',
  'x-invoke-status',
  'x-matched-path',
] as const;

/**
 * Request headers that no client legitimately sends and that CGI-style servers turn into their own settings:
 * `Proxy:` becomes `HTTP_PROXY` (RFC 3875 4.1.18), the outbound proxy of PHP's Guzzle, Go's net/http/cgi, Python's
 * CGI and HHVM (httpoxy, CVE-2016-5385..5388, CVE-2016-1000109/1000110). Removed from every client request, and no
 * header rule may set them (nginx's `proxy_set_header Proxy ""`, HAProxy's `del-header Proxy`).
 */
export const CGI_HAZARD_HEADERS = ['proxy'] as const;

/**
 * Headers naming the client's address, as proxies and CDNs write them (`X-Forwarded-For` and `X-Real-IP`, and
 * the spellings of Akamai, Cloudflare, Fastly, Rackspace and others that frameworks read the same way).
 */
export const CLIENT_ADDRESS_HEADERS = [
  'x-forwarded-for',
  'x-real-ip',
  'x-client-ip',
  'true-client-ip',
  'client-ip',
  'cf-connecting-ip',
  'fastly-client-ip',
  'x-cluster-client-ip',
  'x-originating-ip',
  'x-remote-ip',
  'x-remote-addr',
  'x-forwarded',
  'forwarded-for',
  'x-appengine-user-ip',
  'cf-pseudo-ipv4',
  'x-envoy-external-address',
  'fly-client-ip',
  'x-azure-clientip',
  'x-azure-socketip',
  // The Java `getIpAddr` idiom's fallbacks (WebLogic's plugin, Apache's), and CloudFront's viewer address.
  'wl-proxy-client-ip',
  'proxy-client-ip',
  'cloudfront-viewer-address',
] as const;

/**
 * Forwarding headers a client could forge to change who or where it appears to be (address, scheme, host,
 * path prefix); `X-Host`, `X-Original-Host` and `X-HTTP-Host-Override` are host overrides some frameworks
 * believe, a classic way to poison a cache or a password-reset link. Honoured and passed on only when a trusted
 * proxy sent them (createTrustedProxies).
 */
export const FORWARDING_HEADERS = [
  'forwarded',
  'x-forwarded-host',
  'x-forwarded-proto',
  'x-forwarded-port',
  'x-forwarded-prefix',
  'x-forwarded-uri',
  'x-forwarded-server',
  'x-forwarded-scheme',
  'x-forwarded-ssl',
  'x-host',
  'x-original-host',
  'x-http-host-override',
  // Envoy's mark of a request from inside the mesh, which its services believe as they believe an address.
  'x-envoy-internal',
  // Scheme spellings frameworks read beside X-Forwarded-Proto, some before it: Tornado's xheaders take X-Scheme
  // first, WSGI and PHP scheme fix-ups read X-Url-Scheme, Front-End-Https and X-Real-Scheme, ASP.NET behind IIS's
  // ARR reads X-ARR-SSL; Cloudflare's CF-Visitor, Fastly's Fastly-SSL and CloudFront's -Forwarded-Proto.
  'x-scheme',
  'x-url-scheme',
  'x-real-scheme',
  'front-end-https',
  'x-arr-ssl',
  'cf-visitor',
  'fastly-ssl',
  'cloudfront-forwarded-proto',
  // The path prefix of the widely copied WSGI ReverseProxied middleware (as X-Forwarded-Prefix elsewhere).
  'x-script-name',
  ...CLIENT_ADDRESS_HEADERS,
] as const;

/**
 * Every `X-Forwarded-*` name is a forwarding header, not only the ones listed: proxies keep coining them
 * (Envoy's `-Client-Cert`, an mTLS identity; Traefik's `-Tls-Client-Cert`, `-Method`, `-Path`; gunicorn reads
 * `-Protocol`), and a service behind one of them believes what it wrote. Other proxies' identity headers under
 * the prefix (`X-Forwarded-User`, ...) are FOREIGN_IDENTITY_HEADERS, removed from every request.
 */
export const FORWARDING_HEADER_PREFIX = 'x-forwarded-';

const LISTED_FORWARDING_HEADERS = new Set<string>(FORWARDING_HEADERS);

/** Whether a (lower-case) name is one of FORWARDING_HEADERS: those the gateway writes, rebuilds or guards by name. */
export function isListedForwardingHeader(name: string): boolean {
  return LISTED_FORWARDING_HEADERS.has(name);
}

/**
 * Whether a header name is a look-alike: it has a character CGI-style servers read as `-`. CGI, PHP, Rack and WSGI
 * make a request header `HTTP_` + its name with `-` as `_` (`X_User_Id` and `X-User-Id` are both `HTTP_X_USER_ID`),
 * and PHP (HHVM too) registers every `$_SERVER` key with its dots as `_`, so `X.User.Id` is that header there too.
 */
export function isLookAlikeName(name: string): boolean {
  return name.includes('_') || name.includes('.');
}

/** The `-` spelling of a look-alike name (`x_user.id` is `x-user-id`): what CGI-style servers read it as. */
export function dashedSpelling(name: string): string {
  return name.replace(LOOK_ALIKE_SEPARATORS, '-');
}

const LOOK_ALIKE_SEPARATORS = /[_.]/g;

/** Whether a (lower-case) request header name is a forwarding header: listed, or under `X-Forwarded-`. */
export function isForwardingHeader(name: string): boolean {
  return isListedForwardingHeader(name) || (name.startsWith(FORWARDING_HEADER_PREFIX) && !FOREIGN_IDENTITY_HEADER_SET.has(name));
}

/**
 * The identity headers other authenticating proxies write (Apache's and Grafana's auth proxy, oauth2-proxy,
 * Kong): a service built behind one of them believes them as this gateway's services believe `X-User-Id`.
 * Removed from every client request; a route's header rule may still set them from the verified identity
 * (`"X-Forwarded-User": "{userId}"`).
 */
export const FOREIGN_IDENTITY_HEADERS = [
  'remote-user',
  'x-remote-user',
  'x-remote-group',
  'x-auth-user',
  'x-authenticated-user',
  'x-authenticated-userid',
  'x-authenticated-scope',
  'x-credential-identifier',
  'x-anonymous-consumer',
  'x-forwarded-user',
  'x-forwarded-email',
  'x-forwarded-groups',
  'x-forwarded-preferred-username',
  'x-forwarded-access-token',
  'x-auth-request-user',
  'x-auth-request-email',
  'x-auth-request-groups',
  'x-auth-request-preferred-username',
  'x-auth-request-access-token',
  'x-webauth-user',
  'x-webauth-email',
  'x-webauth-name',
  // Authelia writes these beside Remote-User; apps behind it map roles from Remote-Groups.
  'remote-groups',
  'remote-email',
  'remote-name',
  // nginx's usual name for the client certificate it checked (`proxy_set_header X-SSL-CERT ...`).
  'x-ssl-cert',
  // Kong's consumer and groups (beside X-Authenticated-Userid), its OpenID Connect plugin's user info. Not its
  // X-Access-Token and X-Id-Token: clients send those names as their own credentials (Express' x-access-token).
  'x-credential-username',
  'x-consumer-username',
  'x-consumer-custom-id',
  'x-consumer-groups',
  'x-authenticated-groups',
  'x-userinfo',
  // Google's Cloud Endpoints (ESP, ESPv2) and API Gateway: the verified token's claims, for the service behind.
  'x-endpoint-api-userinfo',
  'x-apigateway-api-userinfo',
  // WSO2 API Manager's signed end-user claims.
  'x-jwt-assertion',
  // Client certificates' subjects and verdicts as TLS terminators name them besides X-SSL-Client-* (nginx, HAProxy).
  'x-client-dn',
  'x-client-verified',
] as const;

const FOREIGN_IDENTITY_HEADER_SET = new Set<string>(FOREIGN_IDENTITY_HEADERS);

/**
 * Trace context in the other formats tracers and meshes read: B3 (Zipkin, Istio's Envoy), Jaeger's
 * `uber-trace-id` and `uberctx-*` baggage, OpenTracing's `ot-*`, Datadog's, AWS X-Ray's, Google Cloud's, SkyWalking's,
 * Elastic APM's spelling of `traceparent`, New Relic's, Envoy's `x-client-trace-id`, Sentry's `sentry-trace`, Instana's, .NET's, and
 * Jaeger's `jaeger-debug-id` (which forces sampling on its own). A service (or its sidecar)
 * whose tracer reads one of them continues that trace and keeps its sampling decision, as it would a client's
 * `traceparent`: dropped with it from a client the gateway does not trust with trace context (`trustTraceparent`).
 */
export const FOREIGN_TRACE_CONTEXT_HEADERS: ReadonlySet<string> = new Set([
  'b3',
  'uber-trace-id',
  'x-ot-span-context',
  'x-amzn-trace-id',
  'x-cloud-trace-context',
  'grpc-trace-bin',
  'sw8',
  'sw8-correlation',
  'sw8-x',
  'elastic-apm-traceparent',
  'newrelic',
  'x-client-trace-id',
  // Sentry's SDKs continue a `sentry-trace` (trace id, span id, sampled flag) as OpenTelemetry does a `traceparent`.
  'sentry-trace',
  // Jaeger's: a `jaeger-debug-id` alone forces the trace it starts to be sampled (debug, kept through downsampling).
  'jaeger-debug-id',
  'jaeger-baggage',
  // .NET's (System.Diagnostics' hierarchical `Request-Id`, read when no `traceparent` came, a W3C value in it
  // included; `Correlation-Context`, its baggage when no `baggage` came) and Application Insights' `Request-Context`
  // (the caller's app id, for its application map). With telemetry off the gateway sends neither W3C header, and a
  // .NET service continued whatever trace and baggage a client put in these.
  'request-id',
  'correlation-context',
  'request-context',
]);
/** Under these prefixes too: B3's, Jaeger's baggage, OpenTracing's, Datadog's, New Relic's, Instana's (`X-INSTANA-T`, `-S`, `-L`: trace, span, level). */
export const FOREIGN_TRACE_CONTEXT_HEADER_PREFIXES = ['x-b3-', 'uberctx-', 'ot-tracer-', 'ot-baggage-', 'x-datadog-', 'x-newrelic-', 'x-instana-'] as const;

/** Whether a (lower-case) request header name carries trace context in a format other than W3C's. */
export function isForeignTraceContextHeader(name: string): boolean {
  return FOREIGN_TRACE_CONTEXT_HEADERS.has(name) || FOREIGN_TRACE_CONTEXT_HEADER_PREFIXES.some((prefix) => name.startsWith(prefix));
}

/**
 * Headers a service mesh's proxy beside a service (or beside the gateway, on its way out) takes as orders: Envoy's
 * `x-envoy-*` (`-original-dst-host` picks the destination, `-retry-on` and `-max-retries` have a POST the gateway
 * sent once resent, `-upstream-rq-timeout-ms` its timeout; Envoy honours them from a request it deems internal,
 * as the gateway's are) and Linkerd's `l5d-*` (`l5d-dst-override` sends the request to another service than the
 * one the gateway routed it to). Removed from every client request, except Envoy's forwarding headers
 * (`X-Envoy-Internal`, `X-Envoy-External-Address`: FORWARDING_HEADERS), which a trusted Envoy in front may send.
 */
export const MESH_CONTROL_HEADER_PREFIXES = ['x-envoy-', 'l5d-'] as const;

/**
 * Families of identity headers that cloud front ends and TLS terminators write, each under its vendor's prefix
 * (AWS ALB, Google IAP, Azure App Service, Cloudflare Access, Pomerium; nginx's and Apache's client-certificate
 * headers, Azure's `X-ARR-ClientCert`; Kubernetes' request-header authentication and impersonation): removed from every client request as FOREIGN_IDENTITY_HEADERS are.
 */
export const FOREIGN_IDENTITY_HEADER_PREFIXES = [
  'x-amzn-oidc-',
  'x-goog-authenticated-user-',
  'x-goog-iap-',
  'x-ms-client-principal',
  'x-ms-token-',
  'cf-access-',
  'x-pomerium-',
  'x-ssl-client',
  'ssl-client-',
  'x-client-cert',
  'x-client-verify',
  'x-arr-clientcert',
  // RFC 9440's Client-Cert and Client-Cert-Chain, what TLS terminators write for the certificate they checked.
  'client-cert',
  'x-amzn-mtls-',
  'x-authentik-',
  'tailscale-user-',
  'x-vouch-',
  // Kubernetes' request-header authentication (`--requestheader-extra-headers-prefix`, beside X-Remote-User and
  // -Group) and its impersonation (`Impersonate-User`, `-Group`, `-Uid`, `-Extra-*`), honoured from a privileged caller.
  'x-remote-extra-',
  'impersonate-',
  'x-ssl-cert-',
  'x-tls-client-',
] as const;

/**
 * Longest credentials accepted, characters. The gateway refuses longer ones at login (400) and user-service
 * applies the same limits at registration and in its credential check, so neither side can drift.
 */
export const CREDENTIAL_LIMITS = { emailMaxLength: 254, passwordMaxLength: 128 } as const;

/**
 * The problem code a service answers a request whose gateway signature fails with (401): the gateway's login reads
 * it as a deployment fault (keys or clocks apart), never as a wrong password.
 */
export const SIGNATURE_REFUSED_CODE = 'gateway_signature_invalid';

/**
 * The problem code (403; gRPC PERMISSION_DENIED) of another service's call whose signature verifies but which the
 * called service's caller rules do not let that caller make (src/gateway-signature.ts CallerRules).
 */
export const CALL_NOT_ALLOWED_CODE = 'call_not_allowed';

/**
 * The auth-scheme of the challenge a service's signature refusal carries (`WWW-Authenticate: GatewaySignature
 * realm="koa-gateway"`; RFC 9110 11.6.1: every 401 carries one). It names a credential only the gateway holds, so the
 * gateway's proxy reads a 401 that names it as its own deployment's fault (502), never as the client's: passed on,
 * the client was told to authenticate, which nothing it could send would fix.
 */
export const SIGNATURE_CHALLENGE_SCHEME = 'GatewaySignature';

/**
 * What a token's identity claims must be for the gateway to pass them on as identity headers (src/tokens.ts), and
 * so what a caller id is wherever a service takes one in a body (notification-service's `userId`): printable
 * ASCII, no space at either end (a header value loses it on the way, RFC 9110 5.5: `alice ` would reach the
 * services as `alice`, another user) and no comma (it separates list elements, RFC 9110 5.3: a framework reading
 * `X-User-Id: mallory, 1` as a list would see user 1).
 */
export const IDENTITY_VALUE = /^[\x21-\x2b\x2d-\x7e](?:[\x20-\x2b\x2d-\x7e]*[\x21-\x2b\x2d-\x7e])?$/;

/** Longest identity claims the gateway passes on, characters; a provider's `sub` is passed on behind `subjectPrefix`. */
export const IDENTITY_CLAIM_LIMITS = { subMaxLength: 255, roleMaxLength: 64, emailMaxLength: 254 } as const;

/** The identity headers the gateway injects from a verified token. */
export const IDENTITY_HEADERS = [HEADER.userId, HEADER.userRole, HEADER.userEmail] as const;

/** Span attribute keys that are ours (standard ones come from @opentelemetry/semantic-conventions). */
export const ATTR = {
  requestId: 'request.id',
  /** The registry's `user.id` and `user.roles` (a list: the gateway's one role); semconv 1.45 deprecates `enduser.*` for them. */
  userId: 'user.id',
  userRoles: 'user.roles',
  /** The API-key consumer of a request (`X-Consumer-Id`). */
  consumerId: 'gateway.consumer.id',
  /** Why an API key was refused (`malformed`, `unknown`, `revoked`); the client hears one 401 for all. */
  apiKeyRejection: 'gateway.api_key.rejection',
  routeName: 'gateway.route.name',
  upstreamService: 'gateway.upstream.service',
  upstreamUrl: 'gateway.upstream.url',
  upstreamOutcome: 'gateway.upstream.outcome',
  upstreamAttempts: 'gateway.upstream.attempts',
  errorCode: 'gateway.error.code',
  rateLimitDecision: 'gateway.rate_limit.decision',
  /** How the response cache answered (one of CACHE_RESULTS), on routes with `cache`. */
  cache: 'gateway.cache',
  /** On the event a request's span gets when it started a background fetch (stale-while-revalidate): that fetch's own trace id. */
  cacheBackgroundFetchTraceId: 'gateway.cache.background_fetch.trace_id',
  /** `request_id` on a root span whose trace id was derived from the client's `X-Request-Id`. */
  traceIdSource: 'gateway.trace_id.source',
  /** The version (short hash) of the configuration a request was served under (src/config-reload.ts). */
  configVersion: 'gateway.config.version',
} as const;

/** W3C baggage key that carries the request id next to `traceparent`. */
export const BAGGAGE_REQUEST_ID = 'request.id';

/** Field names of every JSON log line, in all four processes. */
export const LOG_FIELD = {
  traceId: 'trace_id',
  spanId: 'span_id',
  requestId: 'request_id',
  /** The API-key consumer of a request, in access-log lines. */
  consumerId: 'consumer_id',
  /** How the response cache answered (CACHE_RESULTS), in access-log lines of routes with `cache`. */
  cache: 'cache',
  serviceName: 'service.name',
} as const;

/** A header field name as RFC 9110 5.1 writes it (a token): what a config, a rule or a stored copy may name. */
export const FIELD_NAME_TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** Every method a route can be configured to take (`methods`): also the `Allow` of a route that names none. */
export const HTTP_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;

/** The message of every access-log line: one per request, whoever answered it. */
export const ACCESS_LINE_MESSAGE = 'request completed';

/**
 * The fields of every access-log line, whether the pipeline answered the request (src/middleware/access-log.ts)
 * or Node's parser refused it before the pipeline saw it (otel/lifecycle.ts): one shape, so a query or a
 * dashboard over either finds the same keys (null where a request has no value).
 */
export const ACCESS_LINE_FIELDS = ['method', 'url', 'status', 'duration_ms', 'request_id', 'route', 'user_id', 'error_code', LOG_FIELD.consumerId, LOG_FIELD.cache, 'client_address'] as const;
export type AccessLine = { [Field in (typeof ACCESS_LINE_FIELDS)[number]]: Field extends 'status' ? number : Field extends 'duration_ms' ? number | null : string | null };

/** `service.name` of each process: in spans, in logs and in the collector's labels. */
export const SERVICE_NAME = {
  gateway: 'gateway',
  users: 'user-service',
  orders: 'order-service',
  notifications: 'notification-service',
} as const;
export type ServiceName = (typeof SERVICE_NAME)[keyof typeof SERVICE_NAME];

/**
 * The name each example service goes by in the gateway's config (`services.users`, ...): the audience the gateway's
 * signatures for it name (src/gateway-signature.ts), which the service checks against its own
 * (`GATEWAY_SIGNATURE_AUDIENCE`, these by default), and order-service's for its own calls to the others; and the
 * caller's name order-service's own calls are signed as (`by=orders`), which the others' caller rules know it by.
 */
export const SIGNATURE_AUDIENCE = {
  users: 'users',
  orders: 'orders',
  notifications: 'notifications',
} as const;

/**
 * The gateway's Prometheus metric names, as PromQL and the Grafana dashboards query them: OpenTelemetry
 * semantic-convention names (`http.server.request.duration`, unit s) in Prometheus form, our own under
 * `gateway_`. Counters end in `_total` here, as their samples do in the OpenMetrics exposition.
 */
export const METRIC = {
  requestDuration: 'http_server_request_duration_seconds',
  activeRequests: 'http_server_active_requests',
  upstreamDuration: 'gateway_upstream_request_duration_seconds',
  rateLimitDecisions: 'gateway_rate_limit_decisions_total',
  authFailures: 'gateway_auth_failures_total',
  upstreamEjections: 'gateway_upstream_ejections_total',
  upstreamRetries: 'gateway_upstream_retries_total',
  cacheLookups: 'gateway_cache_lookups_total',
  cacheInvalidationFailures: 'gateway_cache_invalidation_failures_total',
  /** A cluster primary's own (src/workers.ts): workers it replaced (crashed, or killed by its watchdog). */
  workerRestarts: 'gateway_worker_restarts_total',
  /** A cluster primary's own: workers serving now, and how many it runs. */
  workersServing: 'gateway_workers_serving',
  workersConfigured: 'gateway_workers_configured',
  /**
   * Config reloads (SIGHUP, POST /admin/reload) by result, and whether the last one applied: the process that reloads
   * counts them (the single process, or a cluster's primary). As Prometheus' own `prometheus_config_last_reload_successful`.
   */
  configReloads: 'gateway_config_reloads_total',
  configLastReloadSuccessful: 'gateway_config_last_reload_successful',
} as const;

/** Metric label keys: the semantic-convention attribute keys (and ours from ATTR) with `.` as `_`. */
export const METRIC_LABEL = {
  method: 'http_request_method',
  /** `http` or `https` (semconv: Required on `http.server.request.duration` and `http.server.active_requests`). */
  urlScheme: 'url_scheme',
  route: 'http_route',
  statusCode: 'http_response_status_code',
  routeName: 'gateway_route_name',
  /** semconv's `error.type`: on the request histogram, only where the request ended with an error (serverErrorType). */
  errorType: 'error_type',
  /** The gateway's error code of a request it refused or failed (ATTR.errorCode): a 4xx's too, which has no error_type. */
  errorCode: 'gateway_error_code',
  upstreamService: 'gateway_upstream_service',
  /** An instance's host (name or IP, IPv6 without brackets), and `serverPort` its port: semconv's server.address and server.port. */
  serverAddress: 'server_address',
  serverPort: 'server_port',
  upstreamOutcome: 'gateway_upstream_outcome',
  rateLimitPolicy: 'gateway_rate_limit_policy',
  rateLimitDecision: 'gateway_rate_limit_decision',
  cacheResult: 'gateway_cache_result',
  /** `success` (applied, or unchanged) or `failure` (refused, or not built). */
  configReloadResult: 'gateway_config_reload_result',
} as const;

/** A counter's registered (family) name: its samples' less `_total` (src/metrics.ts counterFamily). */
const family = (name: string) => name.replace(/_total$/, '');

/**
 * The gateway's metrics as they leave over OTLP (otel/prom-client-otlp-bridge.ts `names`), by registered name:
 * the semantic conventions' name, unit and kind for the two server metrics (http.server.active_requests is an
 * UpDownCounter, in development, so not exported by the package's stable entry), ours under `gateway.`; units
 * of things counted in UCUM's curly braces. Prometheus' OTLP translation (UnderscoreEscapingWithSuffixes: `.`
 * to `_`, `s` to `_seconds`, `_total` on a monotonic sum, braces dropped) makes each its scraped name again.
 * They left as the Prometheus names (`http_server_request_duration_seconds`, a Gauge of requests in progress),
 * which no OTLP consumer reading the conventions knows.
 */
export const METRIC_OTLP: Readonly<Record<string, { name: string; unit?: string; upDownCounter?: boolean }>> = {
  [METRIC.requestDuration]: { name: METRIC_HTTP_SERVER_REQUEST_DURATION, unit: 's' },
  [METRIC.activeRequests]: { name: 'http.server.active_requests', unit: '{request}', upDownCounter: true },
  [METRIC.upstreamDuration]: { name: 'gateway.upstream.request.duration', unit: 's' },
  [family(METRIC.rateLimitDecisions)]: { name: 'gateway.rate_limit.decisions', unit: '{decision}' },
  [family(METRIC.authFailures)]: { name: 'gateway.auth.failures', unit: '{request}' },
  [family(METRIC.upstreamEjections)]: { name: 'gateway.upstream.ejections', unit: '{ejection}' },
  [family(METRIC.upstreamRetries)]: { name: 'gateway.upstream.retries', unit: '{retry}' },
  [family(METRIC.cacheLookups)]: { name: 'gateway.cache.lookups', unit: '{lookup}' },
  [family(METRIC.cacheInvalidationFailures)]: { name: 'gateway.cache.invalidation_failures', unit: '{request}' },
  [family(METRIC.workerRestarts)]: { name: 'gateway.worker.restarts', unit: '{restart}' },
  [METRIC.workersServing]: { name: 'gateway.workers.serving', unit: '{worker}' },
  [METRIC.workersConfigured]: { name: 'gateway.workers.configured', unit: '{worker}' },
  [family(METRIC.configReloads)]: { name: 'gateway.config.reloads', unit: '{reload}' },
  [METRIC.configLastReloadSuccessful]: { name: 'gateway.config.last_reload_successful' },
};

/** Label values with a fixed meaning (`_OTHER` for a method outside the conventions' set: otel/http-method.ts). */
export const METRIC_LABEL_VALUE = {
  /**
   * `http_route` of a request no route (and no endpoint of the gateway's own) took: never the raw path, and no
   * template either (every one starts with `/`), so it names no route. Over OTLP such a series has no `http.route`
   * at all (METRIC_LABEL_OTLP's `absent`): the conventions set it "if and only if it's available", as the SERVER
   * span leaves it out.
   */
  unmatchedRoute: 'unmatched',
} as const;

/**
 * Each metric label as an OTLP attribute: the conventions' key (an int where they type it so: status code,
 * port), ours from ATTR or under `gateway.`. The `_` for `.` of METRIC_LABEL, undone.
 */
export const METRIC_LABEL_OTLP: Readonly<Record<(typeof METRIC_LABEL)[keyof typeof METRIC_LABEL], { key: string; int?: boolean; absent?: string }>> = {
  [METRIC_LABEL.method]: { key: ATTR_HTTP_REQUEST_METHOD },
  [METRIC_LABEL.urlScheme]: { key: ATTR_URL_SCHEME },
  [METRIC_LABEL.route]: { key: ATTR_HTTP_ROUTE, absent: METRIC_LABEL_VALUE.unmatchedRoute },
  [METRIC_LABEL.statusCode]: { key: ATTR_HTTP_RESPONSE_STATUS_CODE, int: true },
  [METRIC_LABEL.routeName]: { key: ATTR.routeName },
  [METRIC_LABEL.errorType]: { key: ATTR_ERROR_TYPE },
  [METRIC_LABEL.errorCode]: { key: ATTR.errorCode },
  [METRIC_LABEL.upstreamService]: { key: ATTR.upstreamService },
  [METRIC_LABEL.serverAddress]: { key: ATTR_SERVER_ADDRESS },
  [METRIC_LABEL.serverPort]: { key: ATTR_SERVER_PORT, int: true },
  [METRIC_LABEL.upstreamOutcome]: { key: ATTR.upstreamOutcome },
  [METRIC_LABEL.rateLimitPolicy]: { key: 'gateway.rate_limit.policy' },
  [METRIC_LABEL.rateLimitDecision]: { key: ATTR.rateLimitDecision },
  [METRIC_LABEL.cacheResult]: { key: 'gateway.cache.result' },
  [METRIC_LABEL.configReloadResult]: { key: 'gateway.config.reload.result' },
};

/**
 * `error.type` values of the gateway's own (beside error codes and status codes), on spans and in the metrics'
 * `error_type`. `clientClosed`: the client went away before its response ended (the access log's 499).
 */
export const ERROR_TYPE = { clientClosed: 'client_closed' } as const;


/**
 * The exemplar label that carries a sampled request's trace id (32 hex) on the duration histograms; Grafana's
 * exemplar link to Jaeger reads it by this name.
 */
export const EXEMPLAR_LABEL = { traceId: 'trace_id' } as const;

/** Every value of `gateway.rate_limit.decision` (span attribute) and `gateway_rate_limit_decision` (metric label). */
export const RATE_LIMIT_DECISIONS = ['allowed', 'limited', 'store_down_allowed', 'store_down_rejected'] as const;
export type RateLimitDecision = (typeof RATE_LIMIT_DECISIONS)[number];

/**
 * Every answer of the response cache: the span attribute `gateway.cache`, the log field `cache` and the metric
 * label `gateway_cache_result` carry these; the client's `X-Cache` header carries them upper-case.
 */
export const CACHE_RESULTS = ['hit', 'revalidated', 'miss', 'stale', 'bypass'] as const;
export type CacheResult = (typeof CACHE_RESULTS)[number];
