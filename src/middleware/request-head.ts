import type { Context, Middleware } from 'koa';
import { absoluteFormTarget, fieldLineCount } from '../../otel/lifecycle';
import { HTTP_METHODS } from '../config';
import { GatewayError } from '../errors';
import { refuseAtOnce, type Refuse } from './rate-limit';
import { isHttp2Request } from './http2-requests';

/**
 * A Host value as RFC 9110 7.2 and RFC 3986 3.2.2 allow it: a bracketed IP literal or a reg-name (unreserved,
 * percent-encoded and sub-delims characters), and an optional port. Anything else (`a b`, `evil@good`,
 * `good/evil`, a second colon) would be read one way here and another way by a service building links from it.
 */
const HOST_VALUE = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]{0,5})?$/;

/** `Allow` of `OPTIONS *`: every method a route can be configured to take. */
const SERVER_METHODS = HTTP_METHODS.join(', ');

/**
 * An absolute-form request target (`GET http://api.example.com/api/users HTTP/1.1`) made the origin-form one
 * everything after it reads, its authority taking the place of `Host` (RFC 9112 3.2.2: a server accepts the
 * absolute form, and then ignores `Host`). The host guard, the route and the forwarded `X-Forwarded-Host` all
 * judge that one authority. Runs first: tracing reads the path and host. Other targets stay as they came and
 * are refused by createRequestHeadCheck.
 */
export function createRequestTargetForm(): Middleware {
  return function takeAbsoluteForm(ctx, next) {
    const request = ctx.req;
    const target = request.url ?? '';
    if (target.charCodeAt(0) !== 47 /* / */ && !isHttp2Request(request)) {
      const absolute = absoluteFormTarget(target);
      if (absolute) {
        request.headers.host = absolute.authority;
        request.url = absolute.originForm;
        ctx.originalUrl = ctx.request.originalUrl = request.url;
      }
    }
    return next();
  };
}

/**
 * What the request line and Host must be before anything routes on them:
 * - HTTP/1.0 and 1.1 in HTTP/1 framing, HTTP/2 in its own frames. Node's HTTP/1 parser also takes a request line
 *   that says `HTTP/0.9` or `HTTP/2.0`: such a request would be answered as HTTP/1.1 while everything that reads
 *   its version (the HTTP/2 rules, span attributes, the proxy) believed another protocol; one crashed the TLS
 *   listener. 505 (RFC 9110 15.6.6).
 * - One Host field line (none only in HTTP/1.0), with a value a host can have (RFC 9112 3.2: 400 otherwise). Node
 *   keeps the first of several; a service or proxy that keeps the last would judge another host than the host
 *   guard did.
 * - A path (origin form) as the target, or `*` for OPTIONS, answered here (204 with the server's `Allow`): an
 *   absolute-form target createRequestTargetForm could not take (a scheme other than http and https, userinfo)
 *   or CONNECT's authority form is refused, and so is any target with a fragment.
 * - No `Expect` but 100-continue (417); no transfer coding but chunked (501), and none at all in HTTP/1.0 (400).
 */
/** HTTP/1 only (a connection-specific header is malformed in HTTP/2): what follows a malformed head is not trusted. */
const CLOSE_CONNECTION = { headers: { Connection: 'close' } };

export function createRequestHeadCheck(options: { refuse?: Refuse; hostRefusal?: (ctx: Context) => GatewayError | undefined } = {}): Middleware {
  const refuse = options.refuse ?? refuseAtOnce;
  return function checkRequestHead(ctx, next) {
    const request = ctx.req;
    const http2 = isHttp2Request(request);
    if (request.httpVersionMajor !== 1 && !http2) {
      return refuse(ctx, new GatewayError('http_version_not_supported', 'The gateway speaks HTTP/1.0, HTTP/1.1 and HTTP/2 (by ALPN over TLS).', CLOSE_CONNECTION));
    }
    const target = request.url ?? '';
    if (target.charCodeAt(0) !== 47 /* / */ && !(target === '*' && request.method === 'OPTIONS')) {
      return refuse(ctx, new GatewayError('bad_request', 'The request target must be a path (or an http or https URL without userinfo).'));
    }
    // No form of target has a fragment (RFC 9112 3.2, RFC 9113 8.3.1: `:path` is path and query): Node keeps `#...`
    // in the URL and Koa's parser drops it, so `/api/users#/../internal` was routed and forwarded as `/api/users`,
    // a request no client means, while an absolute-form target with a fragment was refused.
    if (target.includes('#')) return refuse(ctx, new GatewayError('bad_request', 'The request target must not carry a fragment (#).'));
    if (!http2) {
      const hostLines = fieldLineCount(request.rawHeaders, 'host');
      if (hostLines > 1) return refuse(ctx, new GatewayError('bad_request', 'The request carries more than one Host header field.', CLOSE_CONNECTION));
      // Node's own check is off (runServer: `requireHostHeader: false`) so this one answers with a request id and
      // a log line; the absolute form does not excuse it (RFC 9112 3.2: every HTTP/1.1 request sends Host). The
      // connection closes after it, as Node's did: nothing pipelined behind a malformed head is run.
      if (hostLines === 0 && request.httpVersionMinor === 1) return refuse(ctx, new GatewayError('bad_request', 'An HTTP/1.1 request must carry a Host header field.', CLOSE_CONNECTION));
      // Node's parser takes `gzip, chunked` (or `identity, chunked`) and removes the chunking only: the service
      // would get gzip bytes with a Content-Length and nothing saying they are coded.
      const codings = request.headers['transfer-encoding'];
      // HTTP/1.0 has no transfer codings: RFC 9112 6.1 has such a message's framing taken for faulty and its
      // connection closed. Node's parser decoded the chunks and kept the connection, so bytes a proxy in front
      // that goes by HTTP/1.0 read as this body were run here as the next request (nginx refuses these too).
      if (codings !== undefined && request.httpVersionMinor === 0) {
        return refuse(ctx, new GatewayError('bad_request', 'An HTTP/1.0 request cannot carry Transfer-Encoding.', CLOSE_CONNECTION));
      }
      if (codings !== undefined && codings.trim().toLowerCase() !== 'chunked') {
        return refuse(ctx, new GatewayError('unsupported_transfer_coding', 'The gateway takes request bodies as they are or chunked; no other transfer coding.', CLOSE_CONNECTION));
      }
    }
    const { expect } = request.headers;
    // runServer passes requests with other expectations on (Node would answer a bare 417 with no request id).
    if (expect !== undefined && !CONTINUE_EXPECTATION.test(expect)) return refuse(ctx, new GatewayError('expectation_failed', 'The gateway meets no expectation but 100-continue.'));
    const host = request.headers.host ?? (http2 ? request.headers[':authority'] : undefined);
    if (host !== undefined && !HOST_VALUE.test(String(host))) return refuse(ctx, new GatewayError('bad_request', 'The Host header is not a host name or address with an optional port.'));
    // The host a trusted proxy says the client addressed takes Host's place (createTrustedProxies cut it to its entry
    // and removed it from anyone else): the host guard, the services' X-Forwarded-Host and the `Location` rewritten
    // to the public origin are built from it, so it is held to Host's syntax. Unchecked, `*.example.com` let
    // `evil.com\.example.com` through, a host a browser reads as evil.com.
    const forwardedHost = ctx.app.proxy ? request.headers['x-forwarded-host'] : undefined;
    if (forwardedHost !== undefined && !HOST_VALUE.test(String(forwardedHost).trim())) {
      return refuse(ctx, new GatewayError('bad_request', 'The X-Forwarded-Host a trusted proxy sent is not a host name or address with an optional port.'));
    }
    if (target === '*') {
      // `OPTIONS *` asks about the server as a whole (RFC 9110 9.3.7): the methods some route may take. Answered here,
      // before the host guard, it was answered for any Host (a 204 for `evil.com`, which any path gets 421 for).
      const refused = options.hostRefusal?.(ctx);
      if (refused) return refuse(ctx, refused);
      ctx.status = 204;
      ctx.res.setHeader('Allow', SERVER_METHODS);
      return;
    }
    return next();
  };
}

/**
 * `100 Continue` for a request that asked for it (`Expect: 100-continue`), sent by whatever reads the body, once
 * the checks before it passed. runServer takes the answer away from Node (which would send it before the
 * pipeline ran, inviting an upload the gateway is about to refuse with 401, 403, 413 or 429); a request nothing
 * reads the body of gets its final answer only, as RFC 9110 10.1.1 allows. An HTTP/1.0 request's expectation is
 * ignored (RFC 9110 10.1.1), and no 1xx is ever sent to an HTTP/1.0 client (15.2): it took `HTTP/1.1 100
 * Continue` for the final answer, and the real answer after it for the start of the next.
 */
export function continueIfExpected(ctx: Context): void {
  const expect = ctx.req.headers.expect;
  if (expect !== undefined && CONTINUE_EXPECTATION.test(expect) && !ctx.res.headersSent && ctx.req.httpVersion !== '1.0') ctx.res.writeContinue();
}

/** `100-continue` in an Expect value, as Node's HTTP server finds it (it sends such requests to checkContinue). */
const CONTINUE_EXPECTATION = /(?:^|\W)100-continue(?:$|\W)/i;
