import type http from 'node:http';
import { PassThrough } from 'node:stream';
import { context, trace, type Context as OtelContext, type Span, type Tracer } from '@opentelemetry/api';
import type { Context as KoaContext, Middleware } from 'koa';
import { Agent, type Dispatcher } from 'undici';
import { ATTR, HEADER } from '../../otel/wire-names';
import { GatewayError, upstreamFailure } from '../errors';
import type { UpstreamInstance } from '../upstream-pool';
import { endUpstreamSpan, injectTraceHeaders, startUpstreamSpan, type UpstreamOutcome } from '../upstream-span';

export interface ProxyOptions {
  /** Keep-alive connections per upstream origin. */
  maxSockets: number;
  /** Largest request body forwarded, bytes; 413 beyond (declared or streamed). */
  maxBodyBytes: number;
  /** Makes the CLIENT span of each upstream call. */
  tracer: Tracer;
}

/** What happened to one attempt at forwarding a request, read once the attempt is over. */
interface Exchange {
  /** The CLIENT span of this attempt. */
  span: Span;
  status?: number;
  failure?: Error;
  timedOut?: boolean;
  bodyTooLarge?: boolean;
  upstreamAborted?: boolean;
  clientClosed?: boolean;
}

/**
 * Hop-by-hop headers (RFC 9110 7.6.1) describe one connection and are never forwarded; `expect` was already
 * answered by Node's server. undici frames the body itself (chunked when the length is unknown).
 */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'proxy-authenticate', 'expect']);

/** undici's codes for the idle timeouts (no headers, then no body data, for `timeoutMs`). */
const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);

/**
 * Forwards the matched route to one of its service's instances over keep-alive connections, with undici's
 * dispatcher (the HTTP client behind Node's fetch) driven directly. It replaced koa-proxies (http-proxy 1.18),
 * which re-parsed the target URL and recompiled its path pattern on every request and built an Error on every
 * response; measured in bench/, undici also costs about a third less CPU per request than `http.request`
 * (bench/RESULTS.md). What the proxy did is kept: `X-Forwarded-*`, the Host of the target, bodies streamed
 * both ways with back-pressure, and the gateway's hardening: an idle timeout told apart from a reset (504 vs
 * 502), failures thrown as typed errors, an upstream that dies mid-response closing the client connection at
 * once, a body limit on declared and streamed bodies, bounded retries on other instances.
 */
export function createProxy(options: ProxyOptions): Middleware {
  const upstreams = new Agent({ connections: options.maxSockets, pipelining: 1 });

  /** One attempt against one instance; settles when the attempt is over, never rejects. */
  function forward(ctx: KoaContext, instance: UpstreamInstance, attempt: number, parent: OtelContext, timeoutMs: number, service: string, corsApplied: boolean): Promise<Exchange> {
    const { req, res } = ctx;
    const path = ctx.state.upstreamPath!;
    const exchange: Exchange = { span: startUpstreamSpan(options.tracer, { method: req.method!, instance, path, service, attempt }, parent) };
    const headers = forwardedHeaders(req, instance.host);
    injectTraceHeaders(exchange.span, parent, headers);
    const withBody = hasBody(req.headers);

    return new Promise((settle) => {
      let settled = false;
      let upstream: Dispatcher.DispatchController | undefined;
      const done = () => {
        if (settled) return;
        settled = true;
        res.off('close', onClientClose);
        settle(exchange);
      };
      const onClientClose = () => {
        // The client went away before the end (or we cut it below): stop the upstream exchange too.
        if (!res.writableFinished) {
          exchange.clientClosed = !exchange.upstreamAborted;
          upstream?.abort(new Error('the client closed the connection'));
        }
        done();
      };
      res.once('close', onClientClose);

      if (withBody && req.headers['content-length'] === undefined) {
        // Counted as the body streams on: `req.pipe` below reads it through the same 'data' events.
        let received = 0;
        req.on('data', (chunk: Buffer) => {
          received += chunk.length;
          if (received > options.maxBodyBytes && !exchange.bodyTooLarge) {
            exchange.bodyTooLarge = true;
            upstream?.abort(new Error('request body over the limit'));
          }
        });
      }

      upstreams.dispatch(
        {
          origin: instance.origin,
          path: ctx.querystring ? `${path}?${ctx.querystring}` : path,
          method: req.method as Dispatcher.HttpMethod,
          headers,
          // Through a stream of our own: undici destroys a body it gives up on, and destroying `req` would
          // take the client's socket (and the 413/502 the gateway still owes it) down with it.
          body: withBody ? req.pipe(new PassThrough()) : null,
          headersTimeout: timeoutMs,
          bodyTimeout: timeoutMs,
        },
        {
          onRequestStart(controller) {
            upstream = controller;
            // Queued for a connection while the client left or overflowed the body limit.
            if (exchange.bodyTooLarge || settled) controller.abort(new Error('the exchange is already over'));
          },
          onResponseStart(controller, statusCode, upstreamHeaders, statusMessage) {
            exchange.status = statusCode;
            if (statusMessage) res.statusMessage = statusMessage;
            res.writeHead(statusCode, responseHeaders(upstreamHeaders, res, corsApplied));
            res.once('finish', done);
            res.on('drain', () => controller.resume());
          },
          onResponseData(controller, chunk) {
            if (res.destroyed) controller.abort(new Error('the client closed the connection'));
            else if (!res.write(chunk)) controller.pause();
          },
          onResponseEnd() {
            res.end();
          },
          onResponseError(_controller, failure) {
            exchange.failure ??= failure;
            if (TIMEOUT_CODES.has((failure as NodeJS.ErrnoException).code ?? '')) exchange.timedOut = true;
            if (exchange.status === undefined) {
              // Nothing was sent to the client yet: it still waits for the gateway's answer.
              done();
            } else if (!res.writableEnded) {
              // Mid-body death: the client must see a broken response at once, not a hang or a truncated success.
              exchange.upstreamAborted = !exchange.clientClosed;
              res.destroy();
            }
          },
        },
      );
    });
  }

  return async function proxyToUpstream(ctx) {
    const route = ctx.state.route;
    if (!route) throw new GatewayError('internal', 'The proxy ran without a matched route.');
    const declaredLength = Number(ctx.req.headers['content-length'] ?? 0);
    if (declaredLength > options.maxBodyBytes) {
      throw bodyTooLarge(options.maxBodyBytes);
    }
    ctx.req.headers[HEADER.gatewayTimestamp] = new Date().toISOString();
    const { pool } = route;
    const parent = context.active();
    const serverSpan = trace.getSpan(parent);
    const corsApplied = ctx.state.corsApplied === true;
    // A retry resends the request, so only requests without a body that are safe to repeat get one.
    const maxAttempts = isReplayable(ctx.method, ctx.req.headers) ? Math.min(pool.size, 1 + MAX_RETRIES) : 1;
    const tried = new Set<UpstreamInstance>();

    for (let attempt = 1; ; attempt++) {
      const instance = pool.pick(tried);
      if (!instance) {
        throw new GatewayError('upstream_unavailable', `No healthy instance of the ${route.service} service (${pool.size} ejected after failing).`);
      }
      tried.add(instance);
      const exchange = await forward(ctx, instance, attempt, parent, route.timeoutMs, route.service, corsApplied);
      const outcome = outcomeOf(exchange);
      endUpstreamSpan(exchange.span, outcome, exchange.status, exchange.failure);
      serverSpan?.setAttributes({ [ATTR.upstreamService]: route.service, [ATTR.upstreamUrl]: instance.origin, [ATTR.upstreamOutcome]: outcome, [ATTR.upstreamAttempts]: attempt });
      if (outcome === 'ok') pool.reportSuccess(instance);
      else if (INSTANCE_FAILURES.has(outcome)) pool.reportFailure(instance, outcome);

      const retryable = (outcome === 'refused' || outcome === 'reset') && exchange.status === undefined && !ctx.res.headersSent;
      if (retryable && attempt < maxAttempts && pool.pick(tried)) {
        serverSpan?.addEvent('upstream retry', { [ATTR.upstreamUrl]: instance.origin, [ATTR.upstreamOutcome]: outcome, [ATTR.upstreamAttempts]: attempt });
        continue;
      }
      switch (outcome) {
        case 'ok':
        case 'client_closed':
          return;
        case 'body_too_large':
          throw bodyTooLarge(options.maxBodyBytes);
        case 'timeout':
          throw new GatewayError('upstream_timeout', `The ${route.service} service sent nothing for ${route.timeoutMs} ms.`, { cause: exchange.failure });
        case 'aborted_by_upstream':
          throw new GatewayError('upstream_reset', `The ${route.service} service closed the connection mid-response.`);
        default:
          throw upstreamFailure(route.service, exchange.failure);
      }
    }
  };
}

/** Extra attempts on other instances after a connection failure, at most. */
const MAX_RETRIES = 2;
const IDEMPOTENT_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);
/** Outcomes that count against an instance's passive health. */
const INSTANCE_FAILURES = new Set<UpstreamOutcome>(['refused', 'reset', 'timeout', 'aborted_by_upstream']);

function hasBody(headers: http.IncomingHttpHeaders): boolean {
  return headers['transfer-encoding'] !== undefined || Number(headers['content-length'] ?? 0) > 0;
}

function isReplayable(method: string, headers: http.IncomingHttpHeaders): boolean {
  return IDEMPOTENT_METHODS.has(method) && !hasBody(headers);
}

/**
 * A message's end-to-end headers: all but the hop-by-hop ones, which include the names its own `Connection`
 * header lists, and those `drop` names.
 */
function endToEndHeaders<T>(source: Record<string, T | undefined>, drop?: (name: string) => boolean): Record<string, T> {
  const connection = source.connection;
  const listed = typeof connection === 'string' ? new Set(connection.split(',').map((name) => name.trim().toLowerCase())) : undefined;
  const headers: Record<string, T> = {};
  for (const name in source) {
    const value = source[name];
    if (value === undefined || HOP_BY_HOP.has(name) || listed?.has(name) || drop?.(name)) continue;
    headers[name] = value;
  }
  return headers;
}

/**
 * The request headers for the service: the client's (already cleaned and enriched by the middleware above:
 * identity, request id, no credentials) minus hop-by-hop ones, the target's Host, and `X-Forwarded-*` as
 * http-proxy's `xfwd` wrote them (appended to a trusted proxy's chain, else started). Built fresh per
 * attempt, so a retry does not append twice.
 */
function forwardedHeaders(req: http.IncomingMessage, targetHost: string): Record<string, string | string[]> {
  const source = req.headers;
  const headers = endToEndHeaders(source);
  headers.host = targetHost;
  const portMatch = source.host?.match(/:(\d+)$/);
  appendForwarded(headers, 'x-forwarded-for', req.socket.remoteAddress ?? '');
  appendForwarded(headers, 'x-forwarded-port', portMatch ? portMatch[1]! : '80');
  appendForwarded(headers, 'x-forwarded-proto', 'http');
  headers['x-forwarded-host'] = source['x-forwarded-host'] ?? source.host ?? '';
  return headers;
}

function appendForwarded(headers: Record<string, string | string[]>, name: string, value: string): void {
  const previous = headers[name];
  headers[name] = previous ? `${String(previous)},${value}` : value;
}

/**
 * The service's response headers minus hop-by-hop ones (Node frames the response itself). They take
 * precedence over headers the gateway set earlier, except CORS: with a gateway policy, the service's
 * `Access-Control-*` are dropped and `Vary` keeps Origin beside whatever the service varies on.
 */
function responseHeaders(source: http.IncomingHttpHeaders, res: http.ServerResponse, corsApplied: boolean): http.OutgoingHttpHeaders {
  const headers: http.OutgoingHttpHeaders = endToEndHeaders(source, corsApplied ? (name) => name.startsWith('access-control-') : undefined);
  if (corsApplied) {
    const vary = [res.getHeader('vary'), source.vary].filter(Boolean).join(', ');
    if (vary) headers.vary = vary;
  }
  return headers;
}

function outcomeOf(exchange: Exchange): UpstreamOutcome {
  if (exchange.bodyTooLarge) return 'body_too_large';
  if (exchange.timedOut) return 'timeout';
  if (exchange.upstreamAborted) return 'aborted_by_upstream';
  if (exchange.clientClosed) return 'client_closed';
  if (exchange.failure) return (exchange.failure as NodeJS.ErrnoException).code === 'ECONNREFUSED' ? 'refused' : 'reset';
  return 'ok';
}

function bodyTooLarge(limit: number): GatewayError {
  // `Connection: close` stops Node from reading (and discarding) the rest of a huge upload.
  return new GatewayError('payload_too_large', `The request body is larger than ${limit} bytes.`, { headers: { Connection: 'close' } });
}
