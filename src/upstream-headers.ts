import type http from 'node:http';
import type { Context as KoaContext } from 'koa';
import { withoutTrailing, withoutTrailingWhitespace } from '../otel/field-whitespace';
import { asciiContentDisposition, fieldValueAsText } from './content-disposition-ascii';
import { isoTimestamp } from '../otel/iso-timestamp';
import { containsApiKey } from '../otel/redact-url';
import { CGI_HAZARD_HEADERS, dashedSpelling, FOREIGN_IDENTITY_HEADER_PREFIXES, FOREIGN_IDENTITY_HEADERS, HEADER, isGatewayOwnedHeader, isForwardingHeader, isListedForwardingHeader, isLookAlikeName, MESH_CONTROL_HEADER_PREFIXES, REQUEST_REWRITE_HEADERS, VIA_PSEUDONYM } from '../otel/wire-names';
import type { Consumer } from './consumers';
import type { AuthenticatedUser } from './context';
import { MAX_FORWARDS_SUPPORTED, maxForwardsOf } from './middleware/max-forwards';
import type { AddressedRequest, GatewaySigner, SignedValues } from './gateway-signature';
import { remembered } from './remembered';

/**
 * Who owns which request header on the way to a service, in one place. The client's headers are filtered
 * first; everything the gateway vouches for (identity, request id, forwarding chain, timestamp, Host) is
 * written afterwards from the gateway's own state, so no client header, and no name a client lists in
 * `Connection`, can remove or replace it.
 */

/** What to do with client header names containing `_` or `.` (see config `headersWithUnderscores`). */
export type UnderscoreHeaderPolicy = 'drop' | 'reject' | 'allow';

/**
 * Hop-by-hop headers (RFC 9110 7.6.1) describe one connection and are never forwarded; `expect` is answered by
 * the gateway itself (continueIfExpected, src/middleware/request-head.ts). undici frames the body itself
 * (chunked when the length is unknown). `HTTP2-Settings` is the settings of an h2c upgrade of one connection
 * (RFC 7540 3.2.1), whether or not its `Connection` lists it: from a service, Node's HTTP/2 refused to write it
 * (an HTTP/2 client got 502 where an HTTP/1.1 one got the answer).
 */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'proxy-authenticate', 'expect', 'http2-settings']);
/** Removed from every client request whatever the route: request-rewriting headers, other proxies' identity headers and `Proxy` (httpoxy). */
const NEVER_FROM_CLIENTS = new Set<string>([...REQUEST_REWRITE_HEADERS, ...FOREIGN_IDENTITY_HEADERS, ...CGI_HAZARD_HEADERS]);
/** An `Authorization` value in the API-key scheme, whatever whitespace follows the scheme. */
const API_KEY_SCHEME = /^\s*apikey(?:\s|$)/i;
/** Forwarding headers this hop writes itself (the others a trusted proxy sent pass as they are). */
export const REBUILT_FORWARDING: ReadonlySet<string> = new Set(['x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'x-forwarded-port', HEADER.forwardedPrefix]);

/**
 * Client header names the gateway never passes on, whatever the route: names under a prefix the gateway owns
 * (`x-user-*`, `x-gateway-*`), request-rewriting headers (`X-HTTP-Method-Override`, `X-Original-URL`, ...)
 * that would let a service act on another method or path than the one the gateway checked, `Proxy` (which CGI
 * makes the service's outbound proxy: CGI_HAZARD_HEADERS), other proxies'
 * identity headers (`Remote-User`, `X-Forwarded-User`, ...: FOREIGN_IDENTITY_HEADERS, and the cloud front ends'
 * families: FOREIGN_IDENTITY_HEADER_PREFIXES), a service mesh's routing and retry orders (`x-envoy-*`, `l5d-*`:
 * MESH_CONTROL_HEADER_PREFIXES), and, under the `drop` policy, look-alike names (isLookAlikeName):
 * with `_`, which CGI, PHP, Rack and WSGI read as their `-` twins (`X_User_Id` is `HTTP_X_USER_ID`, the same as
 * `X-User-Id`), or with `.`, which PHP's `$_SERVER` reads as `_` (`X.User.Id` is `HTTP_X_USER_ID` too).
 */
export function isForbiddenClientHeader(name: string, underscores: UnderscoreHeaderPolicy): boolean {
  if (isLookAlikeName(name)) {
    if (underscores !== 'allow') return true;
    // Allowed, but never as a twin of an owned, rewriting or forwarding name, nor of the request id and API key
    // the gateway writes and reads: CGI, PHP, Rack and WSGI read `x_user_id` as `X-User-Id` (and
    // `x_forwarded_host` as `X-Forwarded-Host`, `x_request_id` as the gateway's `X-Request-Id`), PHP `x.user.id`
    // too, so under any spelling those names stay the gateway's. No trusted proxy writes such a spelling of a
    // forwarding header.
    name = dashedSpelling(name);
    if (isForwardingHeader(name) || name === HEADER.requestId || name === HEADER.apiKey) return true;
  }
  return (
    isGatewayOwnedHeader(name) ||
    NEVER_FROM_CLIENTS.has(name) ||
    FOREIGN_IDENTITY_HEADER_PREFIXES.some((prefix) => name.startsWith(prefix)) ||
    (MESH_CONTROL_HEADER_PREFIXES.some((prefix) => name.startsWith(prefix)) && !isListedForwardingHeader(name))
  );
}

/** Longest header name whose verdict is remembered: no real header is longer; longer ones are decided each time. */
export const REMEMBERED_HEADER_NAME_MAX_LENGTH = 64;

/** isForbiddenClientHeader under each policy, its answers remembered by name (src/remembered.ts). */
const FORBIDDEN_UNDER: Readonly<Record<UnderscoreHeaderPolicy, (name: string) => boolean>> = {
  drop: remembered((name) => isForbiddenClientHeader(name, 'drop'), { maxKeyLength: REMEMBERED_HEADER_NAME_MAX_LENGTH }),
  reject: remembered((name) => isForbiddenClientHeader(name, 'reject'), { maxKeyLength: REMEMBERED_HEADER_NAME_MAX_LENGTH }),
  allow: remembered((name) => isForbiddenClientHeader(name, 'allow'), { maxKeyLength: REMEMBERED_HEADER_NAME_MAX_LENGTH }),
};

/** isForbiddenClientHeader for one policy, as asked on every request: the same answers, remembered by name. */
export function forbiddenClientHeaderTest(underscores: UnderscoreHeaderPolicy): (name: string) => boolean {
  return FORBIDDEN_UNDER[underscores] ?? ((name: string) => isForbiddenClientHeader(name, underscores));
}

/** The names a message's `Connection` header lists: hop-by-hop for that one connection. */
function connectionListed(connection: string | string[] | undefined): Set<string> | undefined {
  if (connection === undefined) return undefined;
  const text = Array.isArray(connection) ? connection.join(',') : connection;
  return new Set(text.split(',').map((name) => name.trim().toLowerCase()));
}

/**
 * Whether a request header stops at this hop: hop-by-hop, or named in the request's own `Connection`. Such a
 * header never reaches the service, so nothing keyed on what the service heard (the response cache) may read it.
 */
export function stopsAtThisHop(connection: string | string[] | undefined): (name: string) => boolean {
  const usual = typeof connection === 'string' ? USUAL_CONNECTION.get(connection) : undefined;
  if (usual !== undefined) return usual;
  const listed = connectionListed(connection);
  return listed === undefined ? isHopByHop : (name) => HOP_BY_HOP.has(name) || listed.has(name);
}

const isHopByHop = (name: string) => HOP_BY_HOP.has(name);

const isHopByHopOrClose = (name: string) => HOP_BY_HOP.has(name) || name === 'close';
/**
 * The `Connection` values nearly every HTTP/1.1 request carries, decided once: splitting the list into a Set per
 * request was ~3k instructions of each proxied one. `keep-alive` is hop-by-hop already; `close` names a header
 * called `close`, which stops here like any other listed name.
 */
const USUAL_CONNECTION: ReadonlyMap<string, (name: string) => boolean> = new Map([
  ['keep-alive', isHopByHop],
  ['Keep-Alive', isHopByHop],
  ['close', isHopByHopOrClose],
  ['Close', isHopByHopOrClose],
]);

/**
 * A message's end-to-end headers: all but the hop-by-hop ones, which include the names its own `Connection`
 * header lists, and those `drop` names.
 */
export function endToEndHeaders<T>(source: Record<string, T | undefined>, drop?: (name: string) => boolean): Record<string, T> {
  const stopsHere = stopsAtThisHop(source.connection as string | string[] | undefined);
  const headers: Record<string, T> = {};
  for (const name in source) {
    const value = source[name];
    if (value === undefined || stopsHere(name) || drop?.(name)) continue;
    headers[name] = value;
  }
  return headers;
}

/** Whether a value ends in a space or tab: a look at its last character, so a list without any is not copied. */
function endsInWhitespace(value: string): boolean {
  const last = value.charCodeAt(value.length - 1);
  return last === 32 || last === 9;
}

/**
 * Response fields Node's HTTP/2 writes once (it refuses to send a second line of any of them: Node's
 * kSingleValueHeaders, the request-only ones left out), though an HTTP/1.1 service may send two.
 */
const WRITTEN_ONCE_OVER_HTTP2 = new Set(['access-control-allow-credentials', 'access-control-max-age', 'age', 'content-encoding', 'content-language', 'content-length', 'content-location', 'content-md5', 'content-range', 'content-type', 'date', 'dnt', 'etag', 'expires', 'from', 'last-modified', 'location', 'retry-after', 'tk', 'x-content-type-options']);
/** Of those, the ones RFC 9110 defines as lists (8.4, 8.5): repeated, they are one field, joined with ", " (5.3). */
const LIST_FIELDS = new Set(['content-encoding', 'content-language']);

/**
 * A service's response fields as the gateway passes them on, in one pass over them (on every proxied answer):
 *
 * - Without the whitespace before each line's end. RFC 9110 5.5 makes it no part of the value (`field-line =
 *   field-name ":" OWS field-value OWS`), but undici keeps it, and the gateway passed it on: to an HTTP/2 client
 *   that is a malformed field (RFC 9113 8.2.1), for which nghttp2's clients (nghttp) reset the stream and lost the
 *   whole answer, and Node's dropped the field. nginx and Envoy strip it as they parse. Only space and tab: a byte
 *   such as 0xA0 (obs-text, which String#trimEnd takes for whitespace) is the value's.
 * - With the repeats Node's HTTP/2 cannot write made one, where that changes nothing a recipient reads (compared
 *   once trimmed): a list field's lines joined (RFC 9110 5.3: `Content-Language: en` and `fr` are `en, fr`), and
 *   the same value twice kept once (`X-Content-Type-Options: nosniff` from a framework and a security middleware
 *   both). An HTTP/2 client got 502 for either, where an HTTP/1.1 client got the answer. Different values of a
 *   field allowed once (two ETags) stay as they are: HTTP/1.1 clients get both lines, HTTP/2 clients 502, since
 *   which one the service meant is anyone's guess; but for `Date`, whose first value is kept.
 * - With a `Content-Disposition` outside ASCII written in ASCII (asciiContentDisposition): Node's http module turned
 *   a UTF-8 file name's bytes into line breaks.
 *
 * The same object when nothing needs either, as nearly always.
 */
export function serviceFieldsToPassOn(headers: http.IncomingHttpHeaders): http.IncomingHttpHeaders {
  let changed: http.IncomingHttpHeaders | undefined;
  for (const name in headers) {
    const given = headers[name];
    if (given === undefined) continue;
    let value: string | string[] = given;
    if (typeof value === 'string') {
      value = withoutTrailingWhitespace(value);
      if (name === 'content-disposition') value = asciiContentDisposition(value);
    } else {
      if (name === 'content-disposition') value = value.map(asciiContentDisposition);
      if (value.some(endsInWhitespace)) value = value.map(withoutTrailingWhitespace);
      if (WRITTEN_ONCE_OVER_HTTP2.has(name)) {
        const lines = value;
        // Two Dates differ by the service's clock ticking between two writers; either is its time, and the first is
        // kept. As two values (each other field's way), Node's HTTP/2 response could not write them, nor remove them
        // for the 502 (its removeHeader keeps a `date`), and that 502's own write threw, ending the process.
        const one = LIST_FIELDS.has(name) ? lines.join(', ') : name === 'date' || lines.every((each) => each === lines[0]) ? lines[0] : undefined;
        if (one !== undefined) value = one;
      }
    }
    if (value === given) continue;
    changed ??= { ...headers };
    (changed as Record<string, string | string[]>)[name] = value;
  }
  return changed ?? headers;
}

export interface UpstreamRequestHeadersInput {
  /** The client's request headers (forwarding headers already removed unless a trusted proxy sent them). */
  client: http.IncomingHttpHeaders;
  underscores: UnderscoreHeaderPolicy;
  /** The request's method: an OPTIONS request's `Max-Forwards` is spent here. */
  method?: string;
  /** The HTTP version the client's request came in (`1.0`, `1.1`, `2.0`), for `Via`. */
  httpVersion?: string;
  /** The route lets the client's `Authorization` through (a service that verifies tokens itself). */
  forwardAuthorization: boolean;
  /** `host[:port]` of the chosen instance. */
  targetHost: string;
  requestId: string;
  /** Set only after a token verified. */
  user?: AuthenticatedUser;
  /** Set only after an API key verified. */
  consumer?: Consumer;
  /** The TCP peer (an IPv4 one as such, not IPv4-mapped), appended to `X-Forwarded-For`. */
  peerAddress: string;
  /** What the client asked for, as the gateway saw it (a trusted proxy's `X-Forwarded-Host` / `-Proto` when one sent them). */
  publicHost: string;
  publicProto: string;
  publicPort: string;
  /**
   * The path prefix the route took off (CompiledRoute.strippedPrefix), after whatever prefix a trusted proxy
   * sent in `X-Forwarded-Prefix`: together they are the `X-Forwarded-Prefix` the service gets. Empty: none taken off.
   */
  strippedPrefix?: string;
  /** ISO time the gateway forwarded the request at. */
  timestamp: string;
  /** The route's request header rules (src/header-rules.ts): run on the filtered client headers, before the gateway writes its own. */
  rules?: (headers: Record<string, string | string[]>) => void;
  /** Client headers that are another spelling of a name the rules name (RouteHeaderRules.isRequestRuleTwin): dropped. */
  isRuleTwin?: (name: string) => boolean;
  /**
   * Signs the identity headers for the request these headers go with (`X-Gateway-Signature`,
   * src/gateway-signature.ts); none without a signing key.
   */
  sign?: (values: SignedValues) => string;
}

/**
 * Whether the client's `Authorization` goes on to the service: only where the route forwards it, and never an
 * API key, the gateway's credential alone: neither in the `ApiKey` scheme nor a gateway key in another (`Bearer
 * kgw_...`, a bare key), which a public route, authenticating nothing, passed on as sent.
 */
export function forwardsAuthorization(client: http.IncomingHttpHeaders, forwardAuthorization: boolean): boolean {
  if (!forwardAuthorization || client.authorization === undefined) return false;
  const value = String(client.authorization);
  return !API_KEY_SCHEME.test(value) && !containsApiKey(value);
}

/**
 * The headers a service receives. First the client's, minus hop-by-hop ones (and those its `Connection`
 * lists), forbidden names (see isForbiddenClientHeader), the credential (unless the route forwards it) and
 * every header the gateway writes itself; then the gateway's own, which therefore always win.
 */
export function upstreamRequestHeaders(input: UpstreamRequestHeadersInput): Record<string, string | string[]> {
  const { client } = input;
  const isForbidden = forbiddenClientHeaderTest(input.underscores);
  const headers = endToEndHeaders(
    client,
    (name) =>
      isForbidden(name) ||
      // An API key is the gateway's credential alone, in either header and any spelling a service might read
      // (the scheme before a tab; `X_API_Key` is isForbiddenClientHeader's), even where the route forwards Authorization.
      (name === HEADER.authorization && !forwardsAuthorization(client, input.forwardAuthorization)) ||
      name === HEADER.apiKey ||
      name === HEADER.requestId ||
      name === 'host' ||
      // HTTP/2 pseudo-headers (`:authority`, `:path`, ...) describe this hop's request line, already turned into Host and path.
      name.charCodeAt(0) === 58 /* : */ ||
      // Rebuilt below from what a trusted proxy said (createTrustedProxies removed them from anyone else).
      REBUILT_FORWARDING.has(name) ||
      // `x_caller` where a rule sets `x-caller`: the same header to a CGI-style service, so the rule's, in any spelling.
      input.isRuleTwin?.(name) === true,
  );
  // This hop spends one of an OPTIONS request's Max-Forwards (RFC 9110 7.6.2; at 0 createMaxForwards answered it).
  const maxForwards = input.method === 'OPTIONS' ? maxForwardsOf(client[HEADER.maxForwards]) : undefined;
  if (maxForwards) headers[HEADER.maxForwards] = String(Math.min(maxForwards - 1, MAX_FORWARDS_SUPPORTED));
  input.rules?.(headers);
  // RFC 9110 7.6.3: a gateway MUST add itself to the Via of every request it forwards, after whoever the request
  // passed before (a client's or a proxy's entries stay: they only describe, the gateway trusts none of them).
  if (input.httpVersion !== undefined) headers[HEADER.via] = viaWith(headers[HEADER.via], input.httpVersion);
  headers.host = input.targetHost;
  headers[HEADER.requestId] = input.requestId;
  // The chain a trusted proxy started, with this hop's peer appended (as http-proxy's xfwd did).
  const chain = client['x-forwarded-for'];
  headers['x-forwarded-for'] = chain ? `${Array.isArray(chain) ? chain.join(',') : chain},${input.peerAddress}` : input.peerAddress;
  headers['x-forwarded-host'] = input.publicHost;
  headers['x-forwarded-proto'] = input.publicProto;
  headers['x-forwarded-port'] = input.publicPort;
  const prefix = forwardedPrefix(client[HEADER.forwardedPrefix], input.strippedPrefix ?? '');
  if (prefix) headers[HEADER.forwardedPrefix] = prefix;
  headers[HEADER.gatewayTimestamp] = input.timestamp;
  if (input.user) {
    headers[HEADER.userId] = input.user.id;
    headers[HEADER.userRole] = input.user.role;
    // Left out when the token's email could not travel as a header (src/tokens.ts): an empty X-User-Email would
    // read as an email that is empty.
    if (input.user.email !== '') headers[HEADER.userEmail] = input.user.email;
  }
  if (input.consumer) headers[HEADER.consumerId] = input.consumer.id;
  // Over exactly the identity headers just written (a rule cannot set them, and the client's were removed) and
  // the request they go with.
  if (input.sign) headers[HEADER.gatewaySignature] = input.sign([input.user?.id ?? '', input.user?.role ?? '', input.user?.email ?? '', input.consumer?.id ?? '']);
  return headers;
}

/** `Via` with the gateway appended: `1.1 koa-gateway`, `2 koa-gateway` for HTTP/2 (its version has no minor, RFC 9113). */
function viaWith(before: string | string[] | undefined, httpVersion: string): string {
  const own = `${httpVersion === '2.0' ? '2' : httpVersion} ${VIA_PSEUDONYM}`;
  if (before === undefined) return own;
  return `${Array.isArray(before) ? before.join(', ') : before}, ${own}`;
}

/**
 * `X-Forwarded-Prefix` for the service: the prefix a trusted proxy in front took off (its `X-Forwarded-Prefix`;
 * from anyone else createTrustedProxies removed it), then the one this route took off. A service adds it before
 * the path it received to build its public links: without the route's part, behind `/api/orders` -> `/orders` they
 * said `/orders/7`, a path the gateway does not serve. A list from several proxies is joined into one prefix,
 * as Spring joins one, so a reader that takes one value (Werkzeug's ProxyFix) reads the same, on every route
 * whether or not it takes a prefix off (a service must not have to parse a list on some routes only). None when
 * both are empty.
 */
export function forwardedPrefix(trusted: string | string[] | undefined, stripped: string): string | undefined {
  const before = trusted === undefined ? '' : (Array.isArray(trusted) ? trusted.join(',') : trusted).split(',').map((part) => withoutTrailing(part.trim(), '/')).join('');
  const prefix = before + stripped;
  return prefix === '' ? undefined : prefix;
}

/**
 * The headers a forwarder (the HTTP proxy, the gRPC translation) sends a service for `ctx`'s request to the
 * instance at `targetHost`: the client's, filtered, and the gateway's own from the request's state.
 */
export function upstreamHeadersFor(
  ctx: KoaContext,
  targetHost: string,
  options: Pick<UpstreamRequestHeadersInput, 'underscores' | 'forwardAuthorization' | 'rules' | 'isRuleTwin' | 'strippedPrefix'> & {
    /** The gateway's signer (config `proxy.signingKey`); none without a key. */
    sign?: GatewaySigner;
    /** The request the headers go with, as sent (method and target), and its service: the signature is good for it alone. */
    request: AddressedRequest;
  },
): Record<string, string | string[]> {
  const publicHost = forwardedHost(ctx);
  return upstreamRequestHeaders({
    client: ctx.req.headers,
    underscores: options.underscores,
    method: options.request.method,
    httpVersion: ctx.req.httpVersion,
    forwardAuthorization: options.forwardAuthorization,
    targetHost,
    requestId: ctx.state.requestId,
    user: ctx.state.user,
    consumer: ctx.state.consumer,
    peerAddress: unmapped(ctx.req.socket.remoteAddress ?? ''),
    publicHost,
    publicProto: ctx.protocol,
    publicPort: publicPort(ctx, publicHost),
    strippedPrefix: options.strippedPrefix,
    timestamp: isoTimestamp(),
    rules: options.rules,
    isRuleTwin: options.isRuleTwin,
    sign: options.sign && ((values) => options.sign!({ audience: options.request.audience, method: options.request.method, target: options.request.target, requestId: ctx.state.requestId }, values)),
  });
}

/**
 * The host a service is told the client addressed (`X-Forwarded-Host`): the one Koa settled on (a trusted proxy's
 * `X-Forwarded-Host`, else `Host` or `:authority`), else the address and port the client connected to. The
 * response cache keys this very value.
 */
export function forwardedHost(ctx: KoaContext): string {
  return ctx.host || localAuthority(ctx);
}

/**
 * The address and port the client connected to: what it addressed when it named no host (an HTTP/1.0 request
 * without Host). An empty X-Forwarded-Host would leave a service to build links from nothing.
 */
function localAuthority(ctx: KoaContext): string {
  const { localAddress, localPort } = ctx.req.socket;
  if (!localAddress) return '';
  const address = unmapped(localAddress);
  return `${address.includes(':') ? `[${address}]` : address}:${localPort}`;
}

/**
 * An address as the client used it: an IPv4 one that reached a dual-stack listener (`::`) is reported by the
 * socket IPv4-mapped (`::ffff:203.0.113.7`), and told to a service so it failed the IPv4 allowlists, geo lookups
 * and log searches that take the client for the IPv4 host it is.
 */
function unmapped(address: string): string {
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}

/** The port the client addressed: a trusted proxy's `X-Forwarded-Port` (still present only then), else the Host's, else the scheme's. */
function publicPort(ctx: KoaContext, host: string): string {
  const forwarded = ctx.req.headers['x-forwarded-port'];
  const first = (Array.isArray(forwarded) ? forwarded[0] : forwarded)?.split(',')[0]?.trim();
  if (first) return first;
  const inHost = /:(\d+)$/.exec(host);
  return inHost ? inHost[1]! : ctx.protocol === 'https' ? '443' : '80';
}

/**
 * A host no URL a service sends can name: references resolve against it (with the public scheme, as the client's
 * browser resolves them) to tell those naming a host of their own (absolute, scheme-relative, `http:host` seen
 * from an https page) from those relative to wherever the client is.
 */
const NO_HOST = '//public-location.invalid/';

/**
 * Whether a URL reference is scheme-relative as a browser reads it (WHATWG URL): two slashes, either of them a
 * backslash, once the tabs and line feeds it drops anywhere and the spaces and controls it trims in front are gone.
 */
function isSchemeRelative(value: string): boolean {
  // eslint-disable-next-line no-control-regex
  const read = value.replace(/[\t\n\r]/g, '').replace(/^[\x00-\x20]+/, '');
  return (read.charCodeAt(0) === 0x2f || read.charCodeAt(0) === 0x5c) && (read.charCodeAt(1) === 0x2f || read.charCodeAt(1) === 0x5c);
}

/**
 * A URL a service wrote into `Location` or `Content-Location`, as the client must see it. A service that builds
 * absolute URLs from the Host it received names the instance (`http://10.0.3.7:4001/users/7`): that address
 * means nothing to the client and maps the network behind the gateway. Such a URL becomes the public origin
 * and, when its path is under the route's upstream path, the route's public path (nginx's `proxy_redirect
 * default`), scheme-relative ones (`//10.0.3.7:4001/users/7`) too. Relative URLs and other origins pass as they are.
 *
 * Whether it names the instance is decided as a browser parses it (WHATWG URL), not by its spelling: a browser
 * reads `\` as `/` anywhere in an http(s) URL (`//10.0.3.7:4001\users\7`), drops tabs and line feeds
 * (`/\t/10.0.3.7:4001/`) and a default port, and takes `http:10.0.3.7:4001/` on an https page as absolute, so a comparison of text let such spellings through to the client,
 * who then went to the instance.
 */
export function publicLocation(value: string, instanceOrigin: string, publicOrigin: string, route: { prefix: string; upstreamPath: string }): string {
  let named: URL;
  let instance: URL;
  try {
    // A URL in raw UTF-8 (`/caf\xC3\xA9`, as browsers follow them) comes one character per byte: parsed so, each
    // byte was percent-encoded as a character of its own (`caf%C3%83%C2%A9`, another path). Read as its text first.
    // eslint-disable-next-line no-control-regex
    named = new URL(/[^\x00-\x7f]/.test(value) ? fieldValueAsText(value) : value, publicOrigin.slice(0, publicOrigin.indexOf(':') + 1) + NO_HOST);
    instance = new URL(instanceOrigin);
  } catch {
    return value;
  }
  // A scheme-relative reference takes the public scheme, and still sends the client to the instance's address.
  if (named.host !== instance.host || (named.protocol !== instance.protocol && !isSchemeRelative(value))) return value;
  let rest = named.pathname + named.search + named.hash;
  const { upstreamPath, prefix } = route;
  if (upstreamPath === '' || rest === upstreamPath || '/?#'.includes(rest[upstreamPath.length] ?? '') && rest.startsWith(upstreamPath)) {
    rest = prefix + rest.slice(upstreamPath.length);
  }
  return publicOrigin + rest;
}

/**
 * The gateway's `Vary` (Origin) and the service's as one list, each name once in any case (`Origin, Origin` was
 * written when the service varied on Origin too), `*` alone when either says `*` (RFC 9110 12.5.5: it varies on
 * what no header names, and the names beside it add nothing).
 */
export function varyOf(...values: (http.OutgoingHttpHeader | undefined)[]): string {
  const names = new Map<string, string>();
  for (const value of values) {
    if (value === undefined) continue;
    for (const name of (Array.isArray(value) ? value.join(',') : String(value)).split(',')) {
      const trimmed = name.trim();
      if (trimmed === '*') return '*';
      if (trimmed !== '' && !names.has(trimmed.toLowerCase())) names.set(trimmed.toLowerCase(), trimmed);
    }
  }
  return [...names.values()].join(', ');
}
