import type { Middleware } from 'koa';
import { GatewayError } from '../errors';
import { isHttp2Request } from './http2-requests';

/**
 * HTTP/1.0 and 1.1 in HTTP/1 framing, and HTTP/2 in its own frames; nothing else. Node's HTTP/1 parser also
 * takes a request line that says `HTTP/0.9` or `HTTP/2.0`: such a request would be served as HTTP/1.1 while
 * everything that reads its version (the HTTP/2 rules, span attributes, the proxy) believed another protocol.
 * An HTTP/1 request claiming 2.0 once crashed the TLS listener this way. Refused with 505 (RFC 9110 15.6.6).
 */
export function createHttpVersionGuard(): Middleware {
  return function checkHttpVersion(ctx, next) {
    const request = ctx.req;
    if (request.httpVersionMajor === 1 || isHttp2Request(request)) return next();
    throw new GatewayError('http_version_not_supported', 'The gateway speaks HTTP/1.0, HTTP/1.1 and HTTP/2 (by ALPN over TLS).');
  };
}
