import { Http2ServerRequest } from 'node:http2';
import { METHODS, type IncomingMessage } from 'node:http';
import type { Middleware } from 'koa';
import { GatewayError } from '../errors';
import { METHOD_NOT_IMPLEMENTED_DETAIL } from '../../otel/lifecycle';
import { refuseAtOnce, type Refuse } from './rate-limit';
import { HTTP2_LIMITS } from '../tls';

/**
 * Connection-specific header fields: meaningless in HTTP/2, and a request carrying one is malformed (RFC 9113
 * 8.2.2). Node's HTTP/2 parser already resets such streams; this is the rule written down where the pipeline
 * can be read, should a Node version let one through (it would otherwise reach an HTTP/1.1 upstream, where
 * `Transfer-Encoding` and `Connection` mean framing: request smuggling).
 */
const CONNECTION_SPECIFIC = ['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade'] as const;

/**
 * The methods Node's HTTP/1 parser accepts (upper case, as registered). HTTP/2 carries any token as `:method`;
 * `get` or `FOO` would reach a service over HTTP/2 that HTTP/1.1 refuses at the parser, and what a service does
 * with a method it does not know (or with `get` beside `GET`) is its own guess.
 */
const HTTP1_METHODS = new Set(METHODS);

/** A field name (RFC 9110 5.1 token), lower case as HTTP/2 requires (RFC 9113 8.2.1). */
const FIELD_NAME = /^[!#$%&'*+.^_`|~0-9a-z-]+$/;
/** What a field value must not hold in HTTP/2 (RFC 9113 8.2.1): NUL, CR, LF anywhere, whitespace at either end. */
const MALFORMED_VALUE = /[\0\r\n]|^[ \t]|[ \t]$/;

/**
 * A request that came in HTTP/2 frames. Not `httpVersionMajor === 2`: an HTTP/1.1 request line may say
 * `HTTP/2.0`, and Node's HTTP/1 parser takes it (src/middleware/request-head.ts refuses it).
 */
export function isHttp2Request(request: IncomingMessage | Http2ServerRequest): request is Http2ServerRequest {
  return request instanceof Http2ServerRequest;
}

function isMalformedValue(value: string | string[] | undefined): boolean {
  if (value === undefined) return false;
  return Array.isArray(value) ? value.some((each) => MALFORMED_VALUE.test(each)) : MALFORMED_VALUE.test(value);
}

/** What a field line adds beside its name and value in HTTP/1.1 (`: ` and CRLF). */
const HTTP1_FIELD_LINE_OCTETS = 4;

/**
 * A header list's size as HTTP/1.1 would carry it: each field's name and value octets plus `: ` and CRLF (Node's own
 * HTTP/1 count, `maxHeaderSize`, takes names and values alone: a few octets a field stricter here, and the
 * pseudo-headers stand in for the request line). RFC 9113 6.5.2's own count adds 32 octets per field instead: held to
 * HTTP/1.1's bound, 450 fields of `x-N: 1` (4.4 KB as HTTP/1.1 sends them) got 431 over HTTP/2 and 200 over HTTP/1.1;
 * nghttp2 still counts 32 per field against its own bound, twice this one (HTTP2_LIMITS.hardHeaderListSize). Node
 * decodes field octets one to a character (latin1), so a string's length is its octets (UTF-8 would count each byte
 * over 0x7f twice). Cookie crumbs (RFC 9113 8.2.3: a client may send each cookie as a field of its own) count as the
 * one field they are joined into for the service, `; ` between them.
 */
function headerListSize(rawHeaders: readonly string[]): number {
  let size = 0;
  let cookie = false;
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    const value = rawHeaders[i + 1]!;
    if (name === 'cookie' && cookie) size += value.length + 2;
    else size += name.length + value.length + HTTP1_FIELD_LINE_OCTETS;
    if (name === 'cookie') cookie = true;
  }
  return size;
}

/**
 * An authority as RFC 9113 8.3.1 has `Host` and `:authority` compared, normalised (RFC 3986 6.2.3): lower case, without
 * the scheme's default port or an empty one. `example.com:443` beside `example.com` names the same origin; compared
 * as written, it got 400.
 */
function comparableAuthority(authority: string, scheme: string | string[] | undefined): string {
  const lower = authority.toLowerCase();
  const defaultPort = String(scheme).toLowerCase() === 'http' ? ':80' : ':443';
  if (lower.endsWith(defaultPort)) return lower.slice(0, -defaultPort.length);
  return lower.endsWith(':') ? lower.slice(0, -1) : lower;
}

/**
 * Makes an HTTP/2 request (TLS listener, src/tls.ts) mean to the rest of the pipeline what it means on the wire,
 * before anything reads it. Mounted only with `tls`; HTTP/1.1 requests pass untouched.
 * - A header list over the HTTP/1 listener's bound is refused (431), as HTTP/1.1's parser refuses it.
 * - A `:path` with bytes outside visible ASCII is refused (400), as HTTP/1.1's parser refuses them.
 * - Field names and values HTTP/1.1 could not carry are refused (400): Node's HTTP/2 parser passes a value with
 *   CR LF or NUL, or a name with a space, which the HTTP/1.1 parser would never; forwarded, they would be header
 *   injection into the upstream request.
 * - Connection-specific headers, and `TE` other than `trailers`, are refused (400). A method HTTP/1.1's parser
 *   would refuse (lower case, unregistered) is one the gateway does not implement (501, RFC 9110 9.1).
 * - A `Host` that names another authority than `:authority` is refused (400, RFC 9113 8.3.1): the host guard
 *   and the services must never judge by different names.
 * - A body without `content-length` (HTTP/2 frames bodies itself, RFC 9113 8.1) is marked as one of unknown
 *   length, as an HTTP/1.1 request would say it (`transfer-encoding: chunked`), so the proxy forwards it (and
 *   does not retry the request); that header is hop-by-hop and never itself reaches a service.
 * Pseudo-headers (`:path`, `:authority`, ...) never reach a service either (src/upstream-headers.ts).
 */
/** A request target of visible ASCII only (RFC 3986: anything else is percent-encoded). */
const REQUEST_TARGET = /^[\x21-\x7e]*$/;

export function createHttp2Requests(options: { refuse?: Refuse } = {}): Middleware {
  const refuse = options.refuse ?? refuseAtOnce;
  return async function normaliseHttp2Request(ctx, next) {
    const request: IncomingMessage | Http2ServerRequest = ctx.req;
    if (!isHttp2Request(request)) return next();
    // Said as HTTP/1.1's parser says it of the same method (otel/lifecycle.ts): the client needs no more than that.
    if (!HTTP1_METHODS.has(request.method)) return refuse(ctx, new GatewayError('method_not_implemented', METHOD_NOT_IMPLEMENTED_DETAIL));
    // `:path` as it came: bytes outside visible ASCII (the overlong `\xC0\xAE` of a dot among them) pass the path
    // guard's decoding untouched and reach the service, which may read them as it likes; HTTP/1.1's parser
    // refuses them in the request line.
    if (!REQUEST_TARGET.test(request.url)) return refuse(ctx, new GatewayError('bad_request', 'The request target has characters that must be percent-encoded.'));
    const headers = request.headers;
    if (headerListSize(request.rawHeaders) > HTTP2_LIMITS.maxHeaderListSize) return refuse(ctx, new GatewayError('headers_too_large', 'The request headers are too large.'));
    for (const name in headers) {
      // Pseudo-header names are checked by Node's parser (unknown ones reset the stream); their values are not.
      if ((name.charCodeAt(0) !== 58 /* : */ && !FIELD_NAME.test(name)) || isMalformedValue(headers[name])) {
        return refuse(ctx, new GatewayError('bad_request', `The request carries a header field HTTP/1.1 could not (${JSON.stringify(name.slice(0, 64))}).`));
      }
    }
    for (const name of CONNECTION_SPECIFIC) {
      if (headers[name] !== undefined) return refuse(ctx, new GatewayError('bad_request', `HTTP/2 requests must not carry the connection-specific header ${name}.`));
    }
    // The keyword in any case (RFC 9110 10.1.4, 5234 2.3), as nghttp2 compares it: `Trailers` got 400.
    if (headers.te !== undefined && String(headers.te).toLowerCase() !== 'trailers') return refuse(ctx, new GatewayError('bad_request', 'HTTP/2 requests may carry TE: trailers only.'));
    const authority = headers[':authority'];
    if (authority !== undefined && headers.host !== undefined && comparableAuthority(headers.host, headers[':scheme']) !== comparableAuthority(String(authority), headers[':scheme'])) {
      return refuse(ctx, new GatewayError('bad_request', 'The Host header names another authority than :authority.'));
    }
    if (!request.stream.endAfterHeaders && headers['content-length'] === undefined) headers['transfer-encoding'] = 'chunked';
    await next();
  };
}
