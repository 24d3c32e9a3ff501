import http from 'node:http';
import https from 'node:https';
import { context, trace, type Context as OtelContext, type Span, type Tracer } from '@opentelemetry/api';
import type { Middleware } from 'koa';
import proxy from 'koa-proxies';
import { ATTR, HEADER } from '../../otel/wire-names';
import { GatewayError, upstreamFailure } from '../errors';
import type { UpstreamInstance } from '../upstream-pool';
import { endUpstreamSpan, injectTraceHeaders, startUpstreamSpan, type UpstreamOutcome } from '../upstream-span';

export interface ProxyOptions {
  /** Keep-alive sockets per upstream origin. */
  maxSockets: number;
  /** Largest request body forwarded, bytes; 413 beyond (declared or streamed). */
  maxBodyBytes: number;
  /** Makes the CLIENT span of each upstream call. */
  tracer: Tracer;
}

/** What happened to one proxied exchange, recorded by http-proxy's events and read after it returns. */
interface Exchange {
  timeoutMs: number;
  service: string;
  /** Origin of the instance this attempt goes to. */
  target: string;
  /** 1 for the first try, 2+ for retries on other instances. */
  attempt: number;
  /** The gateway's CORS headers are on the response. */
  corsApplied: boolean;
  /** The request's context (server span, baggage), parent of the client span. */
  context: OtelContext;
  span?: Span;
  status?: number;
  failure?: Error;
  timedOut?: boolean;
  bodyTooLarge?: boolean;
  upstreamAborted?: boolean;
}

const EXCHANGE = Symbol('gateway.exchange');
type TrackedRequest = http.IncomingMessage & { [EXCHANGE]?: Exchange };

/**
 * Forwards the matched route to its service with koa-proxies (http-proxy), with every unsafe default
 * replaced (see ../shared/NOTES.md): keep-alive upstream sockets, `X-Forwarded-*`, an idle timeout that is
 * told apart from a reset, failures thrown as typed errors instead of text bodies, and an upstream that dies
 * mid-response closing the client connection at once instead of leaving it hanging. Bodies stream both
 * ways; nothing is buffered.
 */
export function createProxy(options: ProxyOptions): Middleware {
  const agentOptions = { keepAlive: true, maxSockets: options.maxSockets, scheduling: 'lifo' as const };
  const httpAgent = new http.Agent(agentOptions);
  const httpsAgent = new https.Agent(agentOptions);

  const events = {
    proxyReq(proxyReq: http.ClientRequest, req: TrackedRequest) {
      const exchange = req[EXCHANGE]!;
      const url = `${exchange.target}${proxyReq.path.split('?')[0]}`;
      exchange.span = startUpstreamSpan(options.tracer, { method: proxyReq.method, url, service: exchange.service, attempt: exchange.attempt }, exchange.context);
      injectTraceHeaders(exchange.span, exchange.context, (name, value) => proxyReq.setHeader(name, value));
      proxyReq.setTimeout(exchange.timeoutMs, () => {
        exchange.timedOut = true;
        proxyReq.destroy(new Error(`no upstream activity for ${exchange.timeoutMs} ms`));
      });
      // Counted here, synchronously before http-proxy pipes the request: no chunk is missed.
      if (req.headers['content-length'] === undefined) {
        let received = 0;
        req.on('data', (chunk: Buffer) => {
          received += chunk.length;
          if (received > options.maxBodyBytes && !exchange.bodyTooLarge) {
            exchange.bodyTooLarge = true;
            proxyReq.destroy(new Error('request body over the limit'));
          }
        });
      }
    },
    proxyRes(proxyRes: http.IncomingMessage, req: TrackedRequest, res: http.ServerResponse) {
      const exchange = req[EXCHANGE]!;
      exchange.status = proxyRes.statusCode;
      // http-proxy copies upstream headers over ours with setHeader: the gateway's CORS policy must win, and
      // Vary must keep Origin beside whatever the service varies on.
      if (exchange.corsApplied) {
        for (const name of Object.keys(proxyRes.headers)) if (name.startsWith('access-control-')) delete proxyRes.headers[name];
        const vary = [res.getHeader('vary'), proxyRes.headers.vary].filter(Boolean).join(', ');
        if (vary) proxyRes.headers.vary = vary;
      }
      proxyRes.once('close', () => {
        if (!proxyRes.complete) {
          req[EXCHANGE]!.upstreamAborted = true;
          res.destroy();
        }
      });
    },
    error(failure: Error, req: TrackedRequest) {
      req[EXCHANGE]!.failure = failure;
    },
  };

  const forward = proxy('/(.*)', (_params, ctx) => {
    const { target } = (ctx.req as TrackedRequest)[EXCHANGE]!;
    const upstreamUrl = ctx.state.upstreamPath! + (ctx.querystring ? `?${ctx.querystring}` : '');
    return {
      target,
      changeOrigin: true,
      xfwd: true,
      agent: target.startsWith('https:') ? httpsAgent : httpAgent,
      rewrite: () => upstreamUrl,
      events,
    };
  });

  return async function proxyToUpstream(ctx, next) {
    const route = ctx.state.route;
    if (!route) throw new GatewayError('internal', 'The proxy ran without a matched route.');
    const declaredLength = Number(ctx.req.headers['content-length'] ?? 0);
    if (declaredLength > options.maxBodyBytes) {
      throw bodyTooLarge(options.maxBodyBytes);
    }
    ctx.req.headers[HEADER.gatewayTimestamp] = new Date().toISOString();
    const { pool } = route;
    const serverSpan = trace.getActiveSpan();
    // A retry resends the request, so only requests without a body that are safe to repeat get one.
    const maxAttempts = isReplayable(ctx.method, ctx.req.headers) ? Math.min(pool.size, 1 + MAX_RETRIES) : 1;
    const tried = new Set<UpstreamInstance>();

    for (let attempt = 1; ; attempt++) {
      const instance = pool.pick(tried);
      if (!instance) {
        throw new GatewayError('upstream_unavailable', `No healthy instance of the ${route.service} service (${pool.size} ejected after failing).`);
      }
      tried.add(instance);
      const exchange: Exchange = { timeoutMs: route.timeoutMs, service: route.service, target: instance.origin, attempt, corsApplied: ctx.state.corsApplied === true, context: context.active() };
      (ctx.req as TrackedRequest)[EXCHANGE] = exchange;

      let clientClosed = false;
      try {
        await forward(ctx, next);
      } catch (rejection) {
        // koa-proxies rejects when the response closes before finishing: either we cut it (upstream died)
        // or the client went away, which the access log records as 499 and is nobody's error here.
        // Anything else (a failure inside http-proxy itself) is the gateway's own error, not a client's.
        clientClosed = !exchange.upstreamAborted && !exchange.failure && ctx.req.socket.destroyed;
        if (!clientClosed && !exchange.upstreamAborted && !exchange.failure) {
          exchange.span?.end();
          throw new GatewayError('internal', 'The gateway failed while forwarding the request.', { cause: rejection });
        }
      }
      const outcome = outcomeOf(exchange, clientClosed);
      if (exchange.span) endUpstreamSpan(exchange.span, outcome, exchange.status, exchange.failure);
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

function isReplayable(method: string, headers: http.IncomingHttpHeaders): boolean {
  const hasBody = headers['transfer-encoding'] !== undefined || Number(headers['content-length'] ?? 0) > 0;
  return IDEMPOTENT_METHODS.has(method) && !hasBody;
}

function outcomeOf(exchange: Exchange, clientClosed: boolean): UpstreamOutcome {
  if (exchange.bodyTooLarge) return 'body_too_large';
  if (exchange.timedOut) return 'timeout';
  if (exchange.failure) return (exchange.failure as NodeJS.ErrnoException).code === 'ECONNREFUSED' ? 'refused' : 'reset';
  if (exchange.upstreamAborted) return 'aborted_by_upstream';
  return clientClosed ? 'client_closed' : 'ok';
}

function bodyTooLarge(limit: number): GatewayError {
  // `Connection: close` stops Node from reading (and discarding) the rest of a huge upload.
  return new GatewayError('payload_too_large', `The request body is larger than ${limit} bytes.`, { headers: { Connection: 'close' } });
}
