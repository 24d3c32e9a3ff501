import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { context, isSpanContextValid, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Tracer } from '@opentelemetry/api';
import type { Context } from 'koa';
import { logLine, type Logger } from '../otel/logger';
import { OneEntryBaggage } from '../otel/baggage-propagator';
import { redactUrl } from '../otel/redact-url';
import { ATTR, BAGGAGE_REQUEST_ID, type AccessLine } from '../otel/wire-names';
import type { GatewayState } from './context';
import { isGatewayError } from './errors';

/**
 * Requests the response cache makes itself, with no client waiting: a stale copy fetched again while it answers
 * under `stale-while-revalidate` (RFC 5861 3), as Varnish's grace mode and nginx's `proxy_cache_background_update`
 * do. Each goes through the same proxy as a client's request (its instances, retries, deadline, CLIENT span and
 * upstream metrics), on a request of its own: a GET with the triggering request's headers as the service would
 * have heard them (no conditions, no Range of the client's), whose answer goes to the cache's tap and nowhere else.
 */

/**
 * How long a shutdown waits for the background fetches under way, ms (src/main.ts), after runServer's drain and
 * settles and before the telemetry flush: part of GATEWAY_SHUTDOWN_STEPS_MS (src/workers.ts). At 5 s a worker's
 * steps took 22 s, and its primary's SIGKILL at 20 s fell in the flush.
 */
export const BACKGROUND_FETCH_DRAIN_MS = 3_000;

/** Background fetches under way in one process at most; past it a stale copy is still answered, none started. */
export const MAX_BACKGROUND_FETCHES = 64;

/** The name of a background fetch's own span (a trace of its own, linked to the request that triggered it). */
export const BACKGROUND_FETCH_SPAN = 'cache background fetch';

/** The log message of a background fetch's line (the access log's fields, of a request no client made). */
export const BACKGROUND_FETCH_MESSAGE = 'cache background fetch completed';

/**
 * Request fields of the client's that are not the cache's to send: its own conditions and range, and its own cache
 * directives (a `no-store` the fetch carried was stored against all the same, RFC 9111 5.2.1.5; an `only-if-cached`
 * had a cache before the service answer the fetch 504).
 */
export const CLIENT_ONLY_FIELDS: readonly string[] = ['if-none-match', 'if-modified-since', 'if-match', 'if-unmodified-since', 'if-range', 'range', 'cache-control', 'pragma'];

export interface BackgroundFetchOptions {
  /** The rest of the request path for a request the cache made (the proxy). */
  forward: (ctx: Context) => Promise<void>;
  tracer: Tracer;
  logger: Logger;
  /** Background fetches under way at most (MAX_BACKGROUND_FETCHES by default). */
  maxConcurrent?: number;
  /** Where each fetch counts as under way until it and what its caller did with its answer are over (main.ts waits for them as it stops). */
  work?: BackgroundWork;
  /** Whether the process is draining: no fetch starts then (the stale copy still answers). Default never. */
  stopping?: () => boolean;
}

/**
 * The cache's background fetches of every build in the process (the running config's and those a reload replaced):
 * what a shutdown waits for after the clients' requests drained, before it disconnects Redis and flushes telemetry.
 * Without it the process exited under them: the service's answer was cut and never stored (its fetch generation
 * left in Redis), the fetch's span never ended and its log line never written.
 */
export interface BackgroundWork {
  /** Counts `work` as under way until it settles. */
  add(work: Promise<unknown>): void;
  /** Resolves once nothing is under way (true), or after `timeoutMs` with the number still under way. */
  settled(timeoutMs: number): Promise<true | number>;
}

export function createBackgroundWork(): BackgroundWork {
  const underWay = new Set<Promise<unknown>>();
  return {
    add(work) {
      const tracked = work.then(
        () => void underWay.delete(tracked),
        () => void underWay.delete(tracked),
      );
      underWay.add(tracked);
    },
    async settled(timeoutMs) {
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
      try {
        // Those that began while the earlier ones ran (a request answered during the drain) are waited for too.
        while (underWay.size > 0) if (!(await Promise.race([Promise.all(underWay).then(() => true), timedOut]))) return underWay.size;
        return true;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** How a background fetch ended: with the service's answer (whatever it was), or with the gateway's error code. */
export type BackgroundOutcome = { ok: true } | { ok: false; errorCode: string };

export interface BackgroundFetches {
  /**
   * Starts a GET for what `trigger` asked for, its state (the cache's tap, a revalidation) from `prepare`, and
   * resolves once it is over; never rejects. Then runs `settle` with its outcome (the cache stores or refreshes the
   * copy there): the fetch counts as under way (`work`) until that is over too. Undefined, and nothing started,
   * when `maxConcurrent` are under way or the process is stopping. Call it while `trigger` is being answered: what
   * it reads of the trigger's request is read at once.
   */
  start(trigger: Context, prepare: () => Promise<Partial<GatewayState>>, settle?: (outcome: BackgroundOutcome) => Promise<void>): Promise<BackgroundOutcome> | undefined;
}

/** A socket that takes every byte and keeps none: the answer of a request without a client is the tap's only. */
function sinkSocket(trigger: Context): Duplex {
  const sink = new Duplex({ read() {}, write: (_chunk, _encoding, done) => done() });
  // What the proxy tells the service of the peer and the local authority (src/upstream-headers.ts), as the
  // triggering request's: read now, since its connection may be gone (or serve another request) when the fetch runs.
  const { remoteAddress, localAddress, localPort } = trigger.req.socket;
  return Object.assign(sink, { remoteAddress, localAddress, localPort, encrypted: (trigger.req.socket as { encrypted?: boolean }).encrypted });
}

export function createBackgroundFetches(options: BackgroundFetchOptions): BackgroundFetches {
  const { tracer, logger } = options;
  const maxConcurrent = options.maxConcurrent ?? MAX_BACKGROUND_FETCHES;
  let running = 0;

  return {
    start(trigger, prepare, settle) {
      if (running >= maxConcurrent || options.stopping?.()) return undefined;
      running++;
      const started = process.hrtime.bigint();
      const socket = sinkSocket(trigger);
      const req = new http.IncomingMessage(socket as unknown as Socket);
      req.method = 'GET';
      req.url = trigger.req.url;
      const headers = { ...trigger.req.headers };
      for (const name of CLIENT_ONLY_FIELDS) delete headers[name];
      req.headers = headers;
      req.httpVersion = '1.1';
      req.httpVersionMajor = 1;
      req.httpVersionMinor = 1;
      req.complete = true;
      req.push(null);
      const res = new http.ServerResponse(req);
      res.assignSocket(socket as unknown as Socket);
      // The trigger's context underneath (its route, identity, public origin), read now where it could change.
      const ctx = Object.create(trigger, {
        req: { value: req },
        res: { value: res },
        method: { value: 'GET' },
        protocol: { value: trigger.protocol },
        host: { value: trigger.host },
        ip: { value: trigger.ip },
        querystring: { value: trigger.querystring },
        respond: { value: false, writable: true },
      }) as Context;
      const route = trigger.state.route;
      const triggeredBy = trace.getActiveSpan();
      const span = tracer.startSpan(BACKGROUND_FETCH_SPAN, {
        root: true,
        kind: SpanKind.INTERNAL,
        links: triggeredBy && isSpanContextValid(triggeredBy.spanContext()) ? [{ context: triggeredBy.spanContext() }] : [],
        attributes: { [ATTR.routeName]: route?.name ?? '' },
      });
      const own = span.spanContext();
      const requestId = isSpanContextValid(own) ? own.traceId : randomBytes(16).toString('hex');
      triggeredBy?.addEvent(BACKGROUND_FETCH_SPAN, { [ATTR.cacheBackgroundFetchTraceId]: own.traceId });
      // Its request id travels as a request's does (src/middleware/request-id.ts): on its own span, and as baggage,
      // so its CLIENT span and the service's spans and log lines carry it. Without it they had none.
      span.setAttribute(ATTR.requestId, requestId);
      const fetchContext = trace.setSpan(propagation.setBaggage(ROOT_CONTEXT, new OneEntryBaggage(BAGGAGE_REQUEST_ID, { value: requestId })), span);
      // As the access line writes it: a query's secrets (`?api_key=`) reached this line as sent.
      const url = redactUrl(trigger.originalUrl);

      const run = async (): Promise<BackgroundOutcome> => {
        // What the pipeline did for the trigger (its route, identity) stays; what it did for its response does not.
        try {
          // Inside the try: a `prepare` that failed ends this fetch like any other failure (logged, its span ended,
          // its place among the maxConcurrent given back), never as a rejection nobody waits for.
          ctx.state = { ...trigger.state, requestId, traceContext: fetchContext, onResponseClosed: undefined, errorCode: undefined, cache: undefined, staleStandsIn: undefined, holdResponse: undefined, upstreamWaitSince: undefined, revalidation: undefined, responseTap: undefined, ...(await prepare()) };
          await options.forward(ctx);
          return { ok: true };
        } catch (error) {
          const errorCode = isGatewayError(error) ? error.code : 'internal';
          span.recordException(error as Error);
          span.setStatus({ code: SpanStatusCode.ERROR, message: errorCode });
          return { ok: false, errorCode };
        }
      };
      const fetched = context.with(fetchContext, run).then((outcome) => {
        const status = res.headersSent ? res.statusCode : outcome.ok ? 304 : null;
        const entry: AccessLine = {
          method: 'GET',
          url,
          status: status ?? 0,
          duration_ms: Math.round(Number(process.hrtime.bigint() - started) / 1e3) / 1000,
          request_id: requestId,
          route: route?.name ?? null,
          user_id: trigger.state.user?.id ?? null,
          error_code: outcome.ok ? null : outcome.errorCode,
          consumer_id: trigger.state.consumer?.id ?? null,
          // The service's 304 confirmed the copy (handed to the cache, nothing sent), or it answered anew.
          cache: outcome.ok && !res.headersSent ? 'revalidated' : 'miss',
          // The gateway's own request, no client's.
          client_address: null,
        };
        logLine(logger, outcome.ok ? 'info' : 'warn', BACKGROUND_FETCH_MESSAGE, entry, fetchContext);
        span.end();
        // Its 'close' lets go of what the proxy still listened for on the response.
        socket.destroy();
        running--;
        return outcome;
      });
      const over = settle ? fetched.then(settle).catch((error: unknown) => logger.error('cache background fetch: its answer could not be handled', { error: String(error), route: route?.name ?? null })) : fetched;
      options.work?.add(over);
      return fetched;
    },
  };
}
