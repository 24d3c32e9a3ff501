import type http from 'node:http';
import { context, trace, type Context as OtelContext, type Span, type Tracer } from '@opentelemetry/api';
import type { Context as KoaContext, Middleware } from 'koa';
import { Agent, type Dispatcher } from 'undici';
import { recordedMethod } from '../../otel/http-method';
import { ATTR, isGatewayOwnedHeader, METRIC_LABEL } from '../../otel/wire-names';
import { GatewayError, upstreamFailure, upstreamSentContinue, upstreamSwitchedProtocolsUnasked, upstreamUnreachable, type ErrorCode } from '../errors';
import type { GatewayMetrics } from '../metrics';
import type { CompiledRoute } from '../routes';
import type { RouteHeaderRules } from '../header-rules';
import { endToEndHeaders, forwardedHost, publicLocation, serviceFieldsToPassOn, upstreamHeadersFor, varyOf, type UnderscoreHeaderPolicy } from '../upstream-headers';
import { pickWithRoom, type UpstreamInstance } from '../upstream-pool';
import { endUpstreamSpan, injectTraceHeaders, startUpstreamSpan, upstreamErrorType, type UpstreamOutcome } from '../upstream-span';
import { continueIfExpected } from './request-head';
import { isHttp2Request } from './http2-requests';
import { bodyStalledError, bodyTooLarge, bodyTooSlowError, watchBodyRate, type BodyRate } from '../body-rate';
import { forwardedBody } from '../forwarded-body';
import { bufferRequestBody, type BufferedBody } from '../request-buffer';
import { cutResponse, responseClosed } from '../response-closed';
import { markServerAnswer } from '../../otel/lifecycle';
import { challengesGatewaySignature, SIGNATURE_REFUSED_HINT, type GatewaySigner } from '../gateway-signature';

export interface ProxyOptions {
  /** Keep-alive connections per upstream origin. */
  maxSockets: number;
  /** Requests that may wait for one of an instance's `maxSockets`; beyond, 503 `upstream_busy`. */
  maxPendingRequests: number;
  /** Largest request body forwarded, bytes; 413 beyond (declared or streamed). */
  maxBodyBytes: number;
  /** Bytes of a request body read before a connection to its service is taken (src/request-buffer.ts); 0 = none. */
  requestBufferBytes: number;
  /** Least average request-body rate once `bodyGracePeriodMs` has passed, bytes/s; 0 = off. Slower: 408. */
  minBodyBytesPerSecond: number;
  /** ms */
  bodyGracePeriodMs: number;
  /** Client header names with `_`: see config `headersWithUnderscores`. */
  underscores: UnderscoreHeaderPolicy;
  /** Makes the CLIENT span of each upstream call. */
  tracer: Tracer;
  /** Times every attempt (`gateway_upstream_request_duration_seconds`) and counts retries; none when metrics are off. */
  metrics?: GatewayMetrics;
  /** Header rules by route name (src/header-rules.ts), hidden service response headers included; none when absent. */
  headerRules?: ReadonlyMap<string, RouteHeaderRules>;
  /**
   * The upstream connections (an undici Agent of `maxSockets` connections per origin). Default: a new one. A
   * config reload passes the running one, so unchanged upstreams keep their warm keep-alive connections.
   */
  upstreams?: Agent;
  /** Signs the identity headers for the services (config `proxy.signingKey`); none without a key. */
  sign?: GatewaySigner;
}

/** What happened to one attempt at forwarding a request, read once the attempt is over. */
interface Exchange {
  /** The CLIENT span of this attempt. */
  span: Span;
  status?: number;
  failure?: Error;
  timedOut?: boolean;
  /** The timeout passed while the request still waited for one of the instance's busy connections. */
  waitedForConnection?: boolean;
  /** undici's connect timeout (UPSTREAM_CONNECT_TIMEOUT_MS) passed before the route's own timeout. */
  connectTimedOut?: boolean;
  /** The timeout passed while a connection to the instance was still being made (the instance's failure). */
  neverConnected?: boolean;
  /** The whole exchange outlived the route's deadline. */
  deadlineExceeded?: boolean;
  bodyTooLarge?: boolean;
  /** The client sent its body slower than the minimum rate. */
  bodyTooSlow?: boolean;
  /**
   * Nothing moved either way for the route's `timeoutMs` while the client still owed body bytes the gateway was
   * not holding back: the silence was the client's (408, the instance not blamed), as nginx's client_body_timeout.
   */
  bodyStalled?: boolean;
  /**
   * The route's deadline came while the client still owed body bytes (a slow link above the minimum rate): the
   * service was waiting on the client. 504 `upstream_timeout` blamed the service in the answer, the log and the metrics.
   */
  uploadOutlivedDeadline?: boolean;
  /**
   * Its client sent its body slowly over a grace period on one of the instance's connections, and more such slow
   * uploads than the uploads' half were there (its own judged last): refused 503, not the instance's failure.
   */
  uploadsOverShare?: boolean;
  upstreamAborted?: boolean;
  /**
   * The service's body broke HTTP's framing after its head was forwarded (a bad chunk, a Content-Length among its
   * trailers: the parser refused it): one endpoint's answer, as a malformed head is, not a lost connection. Read as
   * one, it was logged as the service closing the connection, without the parser's words, and counted against the
   * instance: three such answers ejected the whole service.
   */
  malformedBody?: boolean;
  /**
   * The exchange failed while the gateway held the service's answer back because the client read it slower: a
   * service closes a connection it has finished writing to once it sits idle (Node's keep-alive timeout, 5 s), and
   * undici then fails the paused answer. The client's doing, never counted against the instance.
   */
  heldForClient?: boolean;
  clientClosed?: boolean;
  /** The service's final answer arrived (held for the cache's invalidation, so not yet sent on): the request is not resent. */
  answeredByService?: boolean;
  /** Why the service's response could not be forwarded (502 `upstream_bad_response`). */
  badResponse?: string;
  /** What the log line says of it beyond `badResponse` (Node's words on a header, an operator's hint), never the client. */
  badResponseCause?: Error;
  /**
   * The status of a service's answer that went to the cache instead of the client (a 304 to its revalidation, an
   * error a stale copy stands in for); nothing of it is sent on, and its body is not read.
   */
  handedToCache?: number;
  /** ... with a 304 about another response than the stored one: asked again without the validators. */
  notModifiedElsewhere?: boolean;
}

/** undici's codes for the idle timeouts (no headers, then no body data, for `timeoutMs`). */
const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);

/**
 * How long undici tries to make a connection (TCP and TLS) to an instance, ms (its default, given here so the
 * gateway's answer can say it): a route's `timeoutMs` above it waits no longer for a connection than this.
 */
export const UPSTREAM_CONNECT_TIMEOUT_MS = 10_000;

/**
 * The exchanges each origin has on an Agent (running or queued for a connection), shared by every proxy built on it.
 * A config reload builds a new proxy on the same Agent (src/config-reload.ts, while `maxSockets` is unchanged): counted
 * per proxy, the new build started at 0 while the old build's exchanges still held the connections and queue, so its
 * requests queued behind them unknowingly, timed out as connections never made (504, the instance blamed) until a
 * healthy instance was ejected, and each build admitted its own `maxPendingRequests` into the one queue.
 */
const IN_FLIGHT = new WeakMap<Dispatcher, Map<string, number>>();

/**
 * Of those, the requests whose body still streams from its client (longer than the part read ahead, or none read
 * ahead), by origin; shared across builds on one Agent as IN_FLIGHT is.
 */
const UPLOADS_ARRIVING = new WeakMap<Dispatcher, Map<string, Set<KoaContext['req']>>>();

function tableOn<T>(table: WeakMap<Dispatcher, Map<string, T>>, agent: Dispatcher): Map<string, T> {
  let entries = table.get(agent);
  if (!entries) table.set(agent, (entries = new Map()));
  return entries;
}

/** undici's Agent for the instances: `maxSockets` connections per origin, one request at a time on each. */
export function createUpstreamAgent(maxSockets: number): Agent {
  return new Agent({ connections: maxSockets, pipelining: 1, connectTimeout: UPSTREAM_CONNECT_TIMEOUT_MS });
}

/**
 * Forwards the matched route to one of its service's instances over keep-alive connections, with undici's
 * dispatcher (the HTTP client behind Node's fetch) driven directly. It replaced koa-proxies (http-proxy 1.18),
 * which re-parsed the target URL and recompiled its path pattern on every request and built an Error on every
 * response; measured in bench/, undici also costs about a third less CPU per request than `http.request`
 * (bench/RESULTS.md). What the proxy did is kept: `X-Forwarded-*`, the Host of the target, bodies streamed
 * both ways with back-pressure, and the gateway's hardening: an idle timeout told apart from a reset (504 vs
 * 502), failures thrown as typed errors, an upstream that dies mid-response closing the client connection at
 * once, a body limit on declared and streamed bodies, bounded retries on other instances.
 *
 * No client can hold an instance's connections for long: an exchange ends at the route's deadline, a body
 * trickling in below the minimum rate is cut (408), and once every connection is busy only
 * `maxPendingRequests` more may wait; later ones get 503 `upstream_busy` at once instead of an unbounded queue.
 */
export function createProxy(options: ProxyOptions): Middleware {
  const upstreamSeries = options.metrics?.upstreamSeries;
  const upstreamRetries = options.metrics?.upstreamRetries;
  const upstreams = options.upstreams ?? createUpstreamAgent(options.maxSockets);
  /** Exchanges undici holds per instance (running or queued for a connection), by origin: see IN_FLIGHT. */
  const inFlight = tableOn(IN_FLIGHT, upstreams);
  const uploadsArriving = tableOn(UPLOADS_ARRIVING, upstreams);
  /**
   * Uploads per instance waiting on their clients, at most: half its connections (at least one). Read ahead, a body
   * holds a connection only once its client sent `requestBufferBytes` of it, but a client may then send the rest as
   * slowly as the minimum rate lets it, on as many connections as it opens: so many uploads held every connection of
   * an instance until the deadline. Requests whose bodies are in (and those without one) keep the other half; an upload
   * beyond gets 503 `upstream_busy` with Retry-After.
   */
  const uploadShare = Math.max(1, Math.floor(options.maxSockets / 2));
  /**
   * The instance's uploads whose clients keep them open: still sending, and not held back by the gateway. One queued
   * for a connection, or paused because its service reads slower, is not its client's doing: counted all the same,
   * two fast uploads queued behind busy GETs made the second one 503 with no slow client anywhere.
   */
  const uploadsWaitingOnClients = (origin: string) => {
    let count = 0;
    for (const req of uploadsArriving.get(origin) ?? []) if (clientOwesBody(req)) count++;
    return count;
  };
  /**
   * Whether each upload on a connection was slow over its last grace period there (under SLOW_UPLOAD_BYTES_PER_SECOND,
   * its client still sending): judged every grace period from when it took the connection, for as long as its client
   * sends it. The half is counted when an instance is picked, but an upload queued for a connection is paused (the
   * gateway holds its body back), so it is not counted then: uploads queued behind busy connections, let out
   * together, took every one of them. Judged by what each sent in its last period, not as they took their connections
   * (fast uploads let out together were refused), nor by any upload still arriving (200 KB/s ones were cut mid-body),
   * nor from the start (the buffered start of a body, sent in the first period, passed a trickle after it for fast).
   */
  const slowOnConnection = new WeakMap<KoaContext['req'], boolean>();
  /**
   * Under this many bytes a grace period, an upload still arriving is a slow one: SLOW_UPLOAD_BYTES_PER_SECOND (or the
   * read-ahead a second, when larger) over the period. A number of bytes a period whatever its length made the rate
   * depend on the setting: 64 KiB per 5 s, 13 KB/s, and four uploads at 14 KB/s held all four connections of an
   * instance until the deadline (an outside review).
   */
  const slowUploadBytes = (Math.max(options.requestBufferBytes, SLOW_UPLOAD_BYTES_PER_SECOND) * options.bodyGracePeriodMs) / 1000;
  /** The instance's uploads slow over their last grace period whose clients still send them. */
  const slowUploadsOn = (origin: string) => {
    let count = 0;
    for (const req of uploadsArriving.get(origin) ?? []) if (slowOnConnection.get(req) === true && clientOwesBody(req)) count++;
    return count;
  };
  const capacity = options.maxSockets + options.maxPendingRequests;
  const bodyRate: BodyRate = { minBytesPerSecond: options.minBodyBytesPerSecond, graceMs: options.bodyGracePeriodMs };
  const hasRoom = (instance: UpstreamInstance) => (inFlight.get(instance.origin) ?? 0) < capacity;
  const hasFreeConnection = (instance: UpstreamInstance) => (inFlight.get(instance.origin) ?? 0) < options.maxSockets;

  /** One attempt against one instance; settles when the attempt is over, never rejects. */
  function forward(ctx: KoaContext, instance: UpstreamInstance, attempt: number, parent: OtelContext, route: CompiledRoute, corsApplied: boolean, deadlineAt: number, readAhead: BufferedBody | undefined): Promise<Exchange> {
    const { req, res } = ctx;
    const path = ctx.state.upstreamPath!;
    // The request target as forwarded: the route's upstream path and the client's query, byte for byte.
    const target = ctx.querystring ? `${path}?${ctx.querystring}` : path;
    const exchange: Exchange = { span: startUpstreamSpan(options.tracer, { method: req.method!, instance, target, service: route.service, attempt }, parent) };
    const rules = options.headerRules?.get(route.name);
    const requestRules = rules?.request;
    // The response cache (src/middleware/cache.ts) copies what the service sends; absent on routes without it.
    const tap = ctx.state.responseTap;
    const headers = upstreamHeadersFor(ctx, instance.host, {
      underscores: options.underscores,
      forwardAuthorization: route.forwardAuthorization,
      strippedPrefix: route.strippedPrefix,
      rules: requestRules && ((filtered) => requestRules(filtered, ctx)),
      isRuleTwin: rules?.isRequestRuleTwin,
      sign: options.sign,
      request: { audience: route.service, method: req.method!, target },
    });
    injectTraceHeaders(exchange.span, parent, headers);
    // The cache's stale copy, asked about (src/middleware/cache.ts): only on a request without conditions of its own.
    const revalidation = ctx.state.revalidation;
    if (revalidation) Object.assign(headers, revalidation.headers);
    // A client that left before the proxy got here (an HTTP/2 stream reset as soon as it was opened, a connection
    // closed right after its request head): its response's 'close' came already, so the listener below would never
    // run, and nothing would stop an exchange started now until a timeout, a slow answer's connection to the service
    // held all along (a few connections resetting their streams took every one of `maxSockets`). Not forwarded.
    if (responseClosed(ctx)) {
      exchange.clientClosed = true;
      return Promise.resolve(exchange);
    }
    const withBody = hasBody(req.headers);
    // Part of the body still to come from the client: not when the gateway read it all before (src/request-buffer.ts).
    const streamsBody = withBody && readAhead?.complete !== true;
    inFlight.set(instance.origin, (inFlight.get(instance.origin) ?? 0) + 1);
    if (streamsBody) {
      let uploads = uploadsArriving.get(instance.origin);
      if (!uploads) uploadsArriving.set(instance.origin, (uploads = new Set()));
      uploads.add(req);
    }
    // Behind `maxSockets` others: waiting for one of the instance's connections to come free. Otherwise a wait for a
    // connection is its connection being made: an instance that never completes one (blackholed) is failing.
    const queuedBehindOthers = inFlight.get(instance.origin)! > options.maxSockets;

    return new Promise((settle) => {
      let settled = false;
      let released = false;
      let upstream: Dispatcher.DispatchController | undefined;
      const timers: NodeJS.Timeout[] = [];
      let stopRateWatch = () => {};
      /**
       * The idle timeout, exact: undici checks its own headers/body timeouts on a timer wheel of ~0.5 s (they
       * fired up to ~1 s late; they stay as a backstop). Restarted when undici starts the request on a
       * connection and by every byte either way; before that it bounds the wait for a connection by the same
       * time: behind a service that answers nothing, each round of `maxSockets` requests ahead of a queued one
       * used to add a whole timeout to its wait (9 s for a 3 s timeout, about 50 s with the defaults). One timer
       * for both: a request pays one.
       */
      let idle: NodeJS.Timeout | undefined;
      /** Bytes or events seen so far: the idle timer's verdict waits one turn of I/O and is dropped if this moved. */
      let touches = 0;
      const touch = () => {
        touches++;
        idle?.refresh();
      };
      /** The service answered, and its answer waits for `ctx.state.holdResponse` before it goes on. */
      let held = false;
      /** When the hold began (performance.now()), and whether the deadline came while it lasted. */
      let heldSince = 0;
      let deadlineCameWhileHeld = false;
      /** The service's answer is paused because the client has not taken what the gateway holds for it. */
      let backedUp = false;
      /** This exchange holds one of the slow-client buffers (CLIENT_BUFFERS): more than Node's mark waits for its client. */
      let buffering = false;
      /**
       * The answer may fit the slow-client buffer: its length is unknown (chunked) or at most CLIENT_BUFFER_BYTES.
       * One declared larger is never read whole ahead of its client, so the buffer would not free the service's
       * connection: it waits at Node's mark, as nginx's proxy_buffers hold a few pages of it, not 256 KiB.
       */
      let mayFitBuffer = true;
      const releaseBuffer = () => {
        if (!buffering) return;
        buffering = false;
        clientBuffersInUse--;
      };
      /** The body's last byte arrived, or the exchange is over: it no longer counts among the uploads arriving. */
      let uploading = streamsBody;
      /** Bytes of the body received so far, the part read ahead included. */
      let received = readAhead?.bytes ?? 0;
      const uploadEnded = () => {
        if (!uploading) return;
        uploading = false;
        uploadsArriving.get(instance.origin)!.delete(req);
      };
      /** Bytes of the body received when the upload's last grace period on its connection began. */
      let receivedAtPeriodStart = 0;
      /**
       * Every grace period on its connection: whether the upload was slow over it, and, if it was and more slow ones
       * than the uploads' half are on the instance, its refusal. Whether the service answered already or not: the
       * connection is held while the client sends (a service that answers at once and reads on let slow uploads
       * past this, every connection held until the deadline).
       */
      const judgeUploadPeriod = () => {
        if (settled || !uploading) return;
        const slow = clientOwesBody(req) && received - receivedAtPeriodStart < slowUploadBytes;
        receivedAtPeriodStart = received;
        slowOnConnection.set(req, slow);
        if (!slow || slowUploadsOn(instance.origin) <= uploadShare) return;
        exchange.uploadsOverShare = true;
        // Out of the count before the cut: one whose answer had started stays in it until its exchange ends, and the
        // uploads judged in the same turn after it (those let out of the queue together) were all cut.
        slowOnConnection.delete(req);
        uploadEnded();
        cut('more slow uploads still arriving than half the connections', 'upstream_busy');
      };
      /** undici is done with the request (ended, failed, or aborted when it finally got a connection). */
      const release = () => {
        if (released) return;
        released = true;
        inFlight.set(instance.origin, inFlight.get(instance.origin)! - 1);
        uploadEnded();
      };
      const done = () => {
        if (settled) return;
        settled = true;
        uploadEnded();
        timers.forEach(clearTimeout);
        stopRateWatch();
        settle(exchange);
      };
      /**
       * A response already started can only be cut. The error code is recorded first: the access log, metrics and
       * span record the response when it closes, before the error handler runs, and without it the cut would
       * read as a client that left (499).
       */
      const cutStartedResponse = (code: ErrorCode) => {
        if (res.writableEnded) return;
        ctx.state.errorCode = code;
        cutResponse(ctx);
      };
      /** Ends the exchange on the gateway's decision: before the response started the client gets our answer, after it a cut. */
      const cut = (reason: string, code: ErrorCode) => {
        upstream?.abort(new Error(reason));
        if (exchange.status === undefined) done();
        else cutStartedResponse(code);
      };
      const onClientClose = () => {
        // The client went away before the end (or we cut it below): stop the upstream exchange too. An HTTP/2
        // stream the client reset reports itself finished, though the body never ended. Whatever answered the
        // client (a 400 for a broken upload is written by the HTTP server itself, so the response may have
        // finished), an exchange undici still holds is aborted: a service left waiting for the rest of a body
        // would keep this instance's slot and connection, with no timer left to end it. Either way it is the
        // client's doing, never counted against the instance.
        if (!res.writableFinished || !res.writableEnded || !released) exchange.clientClosed = !exchange.upstreamAborted;
        if (!released) upstream?.abort(new Error('the client closed the connection'));
        done();
      };
      // One listener for both: every listener added to and removed from the response is a store into its event table
      // on every request (24 such per request, 21 since). The buffer is given back whenever the response closes; the
      // exchange is ended there only if it still runs (it once took its listener off as it ended).
      res.once('close', () => {
        releaseBuffer();
        if (!settled) onClientClose();
      });
      idle = setTimeout(function idleTimeout() {
        // A client that does not read its response is not the service's silence, nor an answer the gateway holds.
        if (upstream && (backedUp || held)) return void idle!.refresh();
        // Node runs due timers before it polls for I/O: after a stall of the gateway's own process (a long GC, a
        // machine too busy to schedule it), bytes that came in time are still unread when this runs, and the
        // exchange was cut (504) for a silence that was the gateway's. Judged after the next poll, when what arrived
        // meanwhile has been read and, if anything moved, re-armed this; and a turn later still: a connection that
        // came free in that poll (the answer ahead of a queued request read) is handed on by undici in a
        // setImmediate of its own, queued after this one, and the waiting request was answered 503 `upstream_busy`
        // with the connection free. Two setImmediate hops: the second runs in the loop's next check phase.
        const seen = touches;
        setImmediate(() => setImmediate(() => {
          if (settled || touches !== seen) return;
          if (upstream && (backedUp || held)) return void idle!.refresh();
          if (upstream && withBody && clientOwesBody(req)) {
            exchange.bodyStalled = true;
            return void cut(`no byte of the request body for ${route.timeoutMs} ms`, 'request_timeout');
          }
          exchange.timedOut = true;
          exchange.waitedForConnection = !upstream && queuedBehindOthers;
          exchange.neverConnected = !upstream && !queuedBehindOthers;
          cut(upstream ? `the service sent nothing for ${route.timeoutMs} ms` : `no connection to the service within ${route.timeoutMs} ms`, 'upstream_timeout');
        }));
      }, route.timeoutMs);
      timers.push(idle);
      /** The service answered something the gateway cannot pass on (before anything was sent): 502, the instance not blamed. */
      const badResponse = (controller: Dispatcher.DispatchController, why: string, cause?: Error) => {
        exchange.badResponse = why;
        // The operator's hint for a refused signature goes with it wherever the refusal was found.
        exchange.badResponseCause = cause ?? (why === SIGNATURE_REFUSED ? new Error(SIGNATURE_REFUSED_HINT) : undefined);
        controller.abort(new Error(`the service's response was refused: ${why}`));
      };

      /** Sends the service's final answer's head on, or refuses it (502) when it cannot be forwarded. */
      const answer = (controller: Dispatcher.DispatchController, statusCode: number, upstreamHeaders: Record<string, string | string[] | undefined>, statusMessage: string | undefined) => {
        const unforwardable = unforwardableResponse(statusCode, upstreamHeaders);
        if (unforwardable) return void badResponse(controller, unforwardable);
        let served: http.IncomingHttpHeaders;
        let headers: http.OutgoingHttpHeaders;
        try {
          served = withPublicLocations(upstreamHeaders, instance.origin, ctx, route);
          headers = responseHeaders(served, res, corsApplied);
          // A 204 has no content (RFC 9110 15.3.5, 8.6: no Content-Length): sent on, a non-zero one made HTTP/2
          // clients reset the stream and get nothing, while the gateway logged a 204.
          if (statusCode === 204) delete headers['content-length'];
          rules?.response?.(headers, ctx);
        } catch (error) {
          // Thrown here, inside undici's handler, it came back as the connection's failure: the request was
          // resent to the service and the instance counted failing (ejected) for a head the gateway could not read.
          return void badResponse(controller, 'a response head the gateway could not process', error as Error);
        }
        // HTTP/2 has no reason phrase (RFC 9113 8.3.2); Node warns when one is set on its responses. One Node
        // would refuse to write (obs-text, which undici decodes as UTF-8, or a control) gives way to the standard one.
        if (statusMessage && req.httpVersionMajor < 2 && WRITABLE_REASON_PHRASE.test(statusMessage)) res.statusMessage = statusMessage;
        try {
          res.writeHead(statusCode, headers);
        } catch (error) {
          // A header value Node will not write: the client gets a 502 of ours, not an empty reply, and none of
          // the service's headers writeHead had already taken.
          for (const name of Object.keys(headers)) res.removeHeader(name);
          // Node's HTTP/2 response keeps a `date` given to writeHead however it is removed (its removeHeader only stops
          // its own): a value it refused would be refused again in the 502, whose write then threw past every handler.
          if (res.getHeader('date') !== undefined) res.setHeader('date', new Date().toUTCString());
          res.statusMessage = '';
          return void badResponse(controller, 'a response header the gateway cannot forward', error as Error);
        }
        exchange.status = statusCode;
        const declaredLength = Number(served['content-length']);
        mayFitBuffer = !(declaredLength > CLIENT_BUFFER_BYTES);
        tap?.start(statusCode, served);
        // Node's HTTP/2 compatibility response emits 'finish' when the client resets its stream mid-body: that
        // is a client gone, whose exchange (paused by back-pressure) would otherwise hold its upstream connection.
        res.once('finish', () => (res.writableEnded ? done() : onClientClose()));
      };
      /** Added on the first write the client's connection did not take at once: most answers never need it. */
      let watchingDrain = false;
      const resumeOnDrain = (controller: Dispatcher.DispatchController) => {
        if (watchingDrain) return;
        watchingDrain = true;
        res.on('drain', () => {
          backedUp = false;
          releaseBuffer();
          controller.resume();
        });
      };

      // Covers the wait for a connection, the upload and the whole response, of every attempt together; not the
      // time the gateway holds a service's answer (a write's invalidation): that answer came in time.
      const deadlineCame = () => {
        if (held) {
          deadlineCameWhileHeld = true;
          return;
        }
        if (withBody && clientOwesBody(req)) {
          exchange.uploadOutlivedDeadline = true;
          return void cut('the request body outlived the exchange deadline', 'request_timeout');
        }
        exchange.deadlineExceeded = true;
        cut('the exchange outlived its deadline', 'upstream_timeout');
      };
      timers.push(
        setTimeout(
          deadlineCame,
          Math.max(0, deadlineAt - performance.now()),
        ),
      );

      if (streamsBody) {
        // Sent already if the gateway read the body's start itself.
        if (!readAhead) continueIfExpected(ctx);
        if (req.readableEnded) uploadEnded();
        else req.once('end', uploadEnded);
        // Counted as the body streams on: `req.pipe` below reads it through the same 'data' events.
        req.on('data', (chunk: Buffer) => {
          touch();
          received += chunk.length;
          if (received > options.maxBodyBytes && !exchange.bodyTooLarge) {
            exchange.bodyTooLarge = true;
            upstream?.abort(new Error('request body over the limit'));
          }
        });
        // Judged from here, on the bytes that came since: a body's fast start (the part read ahead) let its rest
        // trickle at any rate while it held the service's connection, its average over the whole body far above.
        const readAheadBytes = readAhead?.bytes ?? 0;
        stopRateWatch = watchBodyRate(req, bodyRate, () => received - readAheadBytes, () => {
          exchange.bodyTooSlow = true;
          cut('the request body arrived too slowly', 'request_timeout');
        });
        discardUnreadBodyAfterAnswer(req, res, () => received, options.maxBodyBytes);
      }

      /** 103 Early Hints passed on so far: at most MAX_EARLY_HINTS_RELAYED. */
      let earlyHintsRelayed = 0;
      /** The client broke off its body (src/forwarded-body.ts): recorded as a client that left, while the exchange runs. */
      const clientBrokeOffBody = () => {
        if (!settled) exchange.clientClosed = true;
      };
      upstreams.dispatch(
        {
          origin: instance.origin,
          path: target,
          method: req.method as Dispatcher.HttpMethod,
          headers,
          // A body its client broke off (an HTTP/2 stream reset mid-upload) is not passed on as whole: the service
          // sees its request aborted, and the exchange ends as the client's doing, not the instance's failure.
          body: readAhead?.complete ? readAhead.body : withBody ? forwardedBody(req, clientBrokeOffBody, readAhead?.chunks) : null,
          headersTimeout: route.timeoutMs,
          bodyTimeout: route.timeoutMs,
        },
        {
          onRequestStart(controller) {
            upstream = controller;
            // Queued for a connection while the client left, overflowed the body limit or the deadline passed.
            if (exchange.bodyTooLarge || settled) {
              controller.abort(new Error('the exchange is already over'));
              return;
            }
            touch();
            if (uploading) {
              receivedAtPeriodStart = received;
              timers.push(setInterval(judgeUploadPeriod, bodyRate.graceMs));
            }
          },
          onResponseStart(controller, statusCode, upstreamHeaders, statusMessage) {
            touch();
            // Below 100 is no status (RFC 9110 15): undici's parser took it for an interim answer and then failed an
            // assertion at its end, which read as a reset: the request was resent and the instance ejected.
            if (statusCode < MIN_STATUS) return void badResponse(controller, statusOutOfRange(statusCode));
            if (statusCode < 200) {
              // An interim answer (RFC 9110 15.2), then the final one: 103 Early Hints goes on to a client that
              // can take it (its Link preloads); the others (102 Processing) say nothing the client needs.
              // At most a few: each is written to the client at once, whether it reads or not, so a service sending
              // them without end filled the gateway's memory at its own rate until the deadline.
              if (statusCode === 103 && upstreamHeaders.link !== undefined && req.httpVersion !== '1.0' && earlyHintsRelayed < MAX_EARLY_HINTS_RELAYED) {
                earlyHintsRelayed++;
                relayEarlyHints(res, publicLinks(upstreamHeaders.link, instance.origin, ctx, route), rules?.response, ctx);
              }
              return;
            }
            // Trailing whitespace cut (RFC 9110 5.5; malformed over HTTP/2) and repeats HTTP/2 writes once made one.
            const fields = serviceFieldsToPassOn(upstreamHeaders);
            if (statusCode === 304 && revalidation) {
              // The stored copy is still current: the cache answers from it (the client asked for no 304), and this
              // exchange ends with the 304's empty body. Its headers update the copy, so they are checked and their
              // URLs made public as a forwarded answer's are: a Refresh naming the instance went out with the copy.
              const unforwardable = unforwardableResponse(statusCode, fields);
              if (unforwardable) return void badResponse(controller, unforwardable);
              let served: http.IncomingHttpHeaders;
              try {
                served = withPublicLocations(fields, instance.origin, ctx, route);
              } catch (error) {
                return void badResponse(controller, 'a response head the gateway could not process', error as Error);
              }
              exchange.answeredByService = true;
              exchange.handedToCache = statusCode;
              exchange.notModifiedElsewhere = !revalidation.notModified(served);
              return;
            }
            if (ctx.state.staleStandsIn?.(statusCode)) {
              // A server error a stale copy may stand in for (stale-if-error): the cache answers with the copy.
              exchange.answeredByService = true;
              exchange.handedToCache = statusCode;
              controller.abort(new Error('a stale copy stands in for the service\'s error'));
              return;
            }
            // The cache holds a successful write's answer until the copies it made stale are dropped (src/middleware/cache.ts).
            const hold = ctx.state.holdResponse?.(statusCode, namedLocations(fields, instance.origin, ctx, route));
            if (!hold) return answer(controller, statusCode, fields, statusMessage);
            held = true;
            heldSince = performance.now();
            // The service answered: whatever befalls its connection now, the request was done and is never resent.
            exchange.answeredByService = true;
            controller.pause();
            const goOn = () => {
              held = false;
              // The client left meanwhile: nothing to send.
              if (settled) return;
              // The deadline passed during the hold: the rest of the answer gets as long as the hold took.
              if (deadlineCameWhileHeld) timers.push(setTimeout(deadlineCame, performance.now() - heldSince));
              touch();
              answer(controller, statusCode, fields, statusMessage);
              if (exchange.status !== undefined) controller.resume();
            };
            void hold.then(goOn, goOn);
          },
          onResponseData(controller, chunk) {
            touch();
            if (exchange.handedToCache !== undefined) return;
            tap?.data(chunk);
            if (responseClosed(ctx) || res.writableEnded) {
              // The client's connection is gone but its response's 'close' (onClientClose) may not have come yet,
              // a chunk of the service's arriving between the two: the abort comes back to onResponseError, which
              // must take it as the client's doing (client_closed), not the service's (upstream_reset).
              if (responseClosed(ctx)) exchange.clientClosed = !exchange.upstreamAborted;
              controller.abort(new Error('the client closed the connection'));
            }
            // Up to CLIENT_BUFFER_BYTES wait in the gateway: an answer that fits is read whole and its connection
            // freed, whatever the client's pace, instead of lying paused until the service closes it as idle. Only
            // CLIENT_BUFFERS exchanges at once: clients that open many streams or connections and read none must
            // not make the gateway hold CLIENT_BUFFER_BYTES for each; past that, an answer pauses at Node's mark.
            else if (!res.write(chunk)) {
              resumeOnDrain(controller);
              if (!buffering && mayFitBuffer && clientBuffersInUse < CLIENT_BUFFERS) {
                buffering = true;
                clientBuffersInUse++;
              }
              if (!buffering || res.writableLength >= CLIENT_BUFFER_BYTES) {
                backedUp = true;
                controller.pause();
                tap?.clientBackedUp();
              }
            }
          },
          onResponseEnd() {
            clearTimeout(idle);
            release();
            if (exchange.handedToCache !== undefined) return void done();
            tap?.end();
            res.end();
          },
          onResponseError(_controller, failure) {
            release();
            // A 304 has no body, and an error's is not wanted: what befalls the connection after its head takes nothing from it.
            if (exchange.handedToCache !== undefined) return void done();
            exchange.failure ??= failure;
            // undici's own idle timer (its backstop) judged as the gateway's does: a body the client still owes is its silence.
            if (TIMEOUT_CODES.has((failure as NodeJS.ErrnoException).code ?? '')) {
              if (withBody && clientOwesBody(req)) exchange.bodyStalled = true;
              else exchange.timedOut = true;
            }
            // undici gave up making the connection (a route whose timeoutMs is longer): no connection was ever made, as
            // the gateway's own timer says of one it cuts first (504, the instance's failure, not retried on it). As a
            // reset it was retried twice on the one instance, 30 s, then answered 502.
            if ((failure as NodeJS.ErrnoException).code === 'UND_ERR_CONNECT_TIMEOUT') {
              exchange.timedOut = true;
              exchange.neverConnected = true;
              exchange.connectTimedOut = true;
            }
            if (exchange.status === undefined) {
              // Nothing was sent to the client yet: it still waits for the gateway's answer.
              done();
            } else if (!res.writableEnded) {
              // Mid-body death: the client must see a broken response at once, not a hang or a truncated success.
              // The abort of a client that left comes back here too: its cut is not the service's failure.
              if (exchange.clientClosed) return void res.destroy();
              if (backedUp && !exchange.timedOut) {
                exchange.heldForClient = true;
                // Recorded as the send timeout records a client that does not take its answer (otel/lifecycle.ts).
                markServerAnswer(res, 'client_read_timeout');
                return void cutResponse(ctx);
              }
              exchange.upstreamAborted = true;
              if (!exchange.timedOut && parserRefused(failure)) exchange.malformedBody = true;
              cutStartedResponse(exchange.timedOut ? 'upstream_timeout' : exchange.malformedBody ? 'upstream_bad_response' : 'upstream_reset');
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
    // The request's span context, taken before any wait.
    const parent = context.active();
    const corsApplied = ctx.state.corsApplied === true;
    const bodyless = !hasBody(ctx.req.headers);
    // From when it began waiting for a coalesced fetch of the same answer (src/middleware/cache.ts), if it did: as
    // nginx's proxy_cache_lock_timeout bounds that wait, a failed fetch does not double its waiters' time.
    const deadlineAt = (ctx.state.upstreamWaitSince ?? performance.now()) + route.deadlineMs;
    if (performance.now() >= deadlineAt) {
      throw new GatewayError('upstream_timeout', `The exchange with the ${route.service} service did not finish within ${route.deadlineMs} ms (waiting for another request's fetch of the same answer).`);
    }
    if (bodyless || options.requestBufferBytes === 0 || responseClosed(ctx)) return await forwardToAnInstance(ctx, route, parent, undefined, deadlineAt, corsApplied);
    // The body's start, or all of it, read before a connection is taken: a slow client holds no service connection.
    continueIfExpected(ctx);
    const readAhead = await bufferRequestBody(ctx, {
      limitBytes: options.requestBufferBytes,
      maxBodyBytes: options.maxBodyBytes,
      bodyRate,
      idleTimeoutMs: route.timeoutMs,
      deadlineAt,
      deadlineError: () => uploadOutlivedDeadline(route),
    });
    // The client left while sending it: nothing to forward, and nobody to answer (logged as a client that left).
    if (!readAhead) return;
    await forwardToAnInstance(ctx, route, parent, readAhead, deadlineAt, corsApplied);
  };

  /** Forwards to one instance after another (retries) until one attempt ends the request. */
  async function forwardToAnInstance(ctx: KoaContext, route: CompiledRoute, parent: OtelContext, readAhead: BufferedBody | undefined, deadlineAt: number, corsApplied: boolean): Promise<void> {
    const { pool } = route;
    const serverSpan = trace.getSpan(parent);
    // A retry resends the request, so only requests without a body that are safe to repeat get one.
    const replayable = isReplayable(ctx.method, ctx.req.headers);
    // A body read whole before forwarding can be sent again, as none can be.
    const resendable = !hasBody(ctx.req.headers) || readAhead?.complete === true;
    // The rest of its body is still to come from the client: it takes one of an instance's places for uploads.
    let refusedForUploads = false;
    const room = resendable
      ? hasRoom
      : (instance: UpstreamInstance) => {
          if (!hasRoom(instance)) return false;
          if (uploadsWaitingOnClients(instance.origin) < uploadShare) return true;
          refusedForUploads = true;
          return false;
        };
    // As the CLIENT span and the request histogram record it: outside the conventions' methods, `_OTHER`.
    const method = recordedMethod(ctx.method);
    const tried = new Set<UpstreamInstance>();
    /** Instances this request already counted a failure against: retries on one are one failure of it, not three. */
    const blamed = new Set<UpstreamInstance>();

    for (let attempt = 1; ; attempt++) {
      const instance = pickWithRoom(pool, tried, room, hasFreeConnection);
      // Refused before any exchange took the body: the rest of one read only in part (paused, past the read-ahead) is
      // read and dropped after the answer, as an exchange does. Left unread, it held the keep-alive connection: the
      // client's next request on it was never parsed, and a client sending its whole body first got a reset.
      if ((instance === 'busy' || !instance) && attempt === 1 && readAhead && !readAhead.complete) dropRestOfBody(ctx, readAhead.bytes, options.maxBodyBytes);
      if (instance === 'busy') {
        if (refusedForUploads) throw uploadsOverShare(route.service);
        throw new GatewayError('upstream_busy', `Every connection to the ${route.service} service is busy and ${options.maxPendingRequests} requests already wait; try again shortly.`);
      }
      if (!instance) {
        // How many instances are out is the internal listener's to say (/ready, /health), not every caller's: logged.
        throw new GatewayError('upstream_unavailable', `No healthy instance of the ${route.service} service.`, { cause: new Error(`${pool.size} instance(s) ejected after failing`) });
      }
      tried.add(instance);
      const started = performance.now();
      const exchange = await forward(ctx, instance, attempt, parent, route, corsApplied, deadlineAt, readAhead);
      const outcome = outcomeOf(exchange);
      const status = exchange.handedToCache ?? exchange.status;
      endUpstreamSpan(exchange.span, outcome, status, exchange.failure);
      // Per attempt and until the client had the whole response: a retried request is two observations. With what
      // the CLIENT span records (semconv's http.client.request.duration): the method, the status received, error.type.
      if (upstreamSeries) {
        const ended = performance.now();
        upstreamSeries(method, instance.secure ? 'https' : 'http', route.service, instance.hostname, instance.port, status ?? '', upstreamErrorType(outcome, status) ?? '', outcome).observe(
          (ended - started) / 1000,
          exchange.span.spanContext(),
          ended,
        );
      }
      serverSpan?.setAttribute(ATTR.upstreamService, route.service).setAttribute(ATTR.upstreamUrl, instance.origin).setAttribute(ATTR.upstreamOutcome, outcome).setAttribute(ATTR.upstreamAttempts, attempt);
      if (exchange.notModifiedElsewhere) {
        // RFC 9111 4.3.4: a 304 that selects no stored response leaves the cache to ask for the whole one.
        ctx.state.revalidation = undefined;
        tried.delete(instance);
        pool.reportSuccess(instance);
        continue;
      }
      if (outcome === 'ok') pool.reportSuccess(instance);
      else if (INSTANCE_FAILURES.has(outcome) && !blamed.has(instance)) {
        blamed.add(instance);
        pool.reportFailure(instance, outcome);
      }

      // What never reached the service (a refused connection, or none made in time) may go to another instance
      // whatever its method: nothing of it was sent (nginx's proxy_next_upstream does the same). A request with a body
      // is not, unless the gateway holds all of it (read ahead): the rest has been read from the client by now. A
      // reset may have reached it: idempotent only.
      const neverSent = outcome === 'refused' || (outcome === 'timeout' && exchange.neverConnected === true);
      const retryable = ((replayable && (outcome === 'refused' || outcome === 'reset')) || (resendable && neverSent)) && exchange.status === undefined && !exchange.answeredByService && !ctx.res.headersSent;
      // Another instance first. With none left, a reset before any answer is retried on the same one: it is most
      // often a kept-alive connection the service closed just as it was reused (a race every keep-alive client
      // meets), and the retry goes out on another connection. A refused connection would only be refused again,
      // and one not made in time would wait as long again.
      // Asked without taking: a pick here took another instance's trial (every instance out) and the retry found none.
      const retryOn = !retryable || attempt > MAX_RETRIES || performance.now() >= deadlineAt ? undefined : pool.canPick(tried) ? 'another' : outcome === 'reset' && replayable ? 'same' : undefined;
      if (retryOn) {
        if (retryOn === 'same') tried.delete(instance);
        serverSpan?.addEvent('upstream retry', { [ATTR.upstreamUrl]: instance.origin, [ATTR.upstreamOutcome]: outcome, [ATTR.upstreamAttempts]: attempt });
        upstreamRetries?.inc({ [METRIC_LABEL.upstreamService]: route.service });
        continue;
      }
      switch (outcome) {
        case 'ok':
        case 'client_closed':
        case 'client_backed_up':
          return;
        case 'body_too_large':
          throw bodyTooLarge(options.maxBodyBytes);
        case 'body_too_slow':
          // `Connection: close`: the rest of the body is not worth reading.
          if (exchange.bodyStalled) throw bodyStalledError(route.timeoutMs);
          if (exchange.uploadOutlivedDeadline) throw uploadOutlivedDeadline(route);
          if (exchange.uploadsOverShare) throw uploadsOverShare(route.service, { Connection: 'close' });
          throw bodyTooSlowError(bodyRate);
        case 'deadline':
          throw new GatewayError('upstream_timeout', `The exchange with the ${route.service} service did not finish within ${route.deadlineMs} ms.`);
        case 'no_connection':
          // Not the instance's failure (its connections may all be busy with healthy long answers): busy, as when
          // the queue is full; the requests holding the connections time out on their own if it is hung.
          throw new GatewayError('upstream_busy', `No connection to the ${route.service} service came free within ${route.timeoutMs} ms; try again shortly.`);
        case 'timeout':
          if (exchange.neverConnected) throw new GatewayError('upstream_timeout', `The ${route.service} service accepted no connection within ${exchange.connectTimedOut ? UPSTREAM_CONNECT_TIMEOUT_MS : route.timeoutMs} ms.`);
          throw new GatewayError('upstream_timeout', `The ${route.service} service sent nothing for ${route.timeoutMs} ms.`, { cause: exchange.failure });
        case 'aborted_by_upstream':
          throw new GatewayError('upstream_reset', `The ${route.service} service closed the connection mid-response.`);
        case 'connections_closed':
          throw new GatewayError('upstream_unavailable', `The gateway's connections to the ${route.service} service were replaced by a config reload while this request waited; try again.`, { cause: exchange.failure });
        case 'bad_response': {
          if (exchange.malformedBody) throw new GatewayError('upstream_bad_response', `The ${route.service} service sent a body the gateway could not read past (its response was cut).`, { cause: exchange.failure });
          const malformed = exchange.failure && malformedHeaderFields(exchange.failure);
          if (malformed) throw new GatewayError('upstream_bad_response', `The ${route.service} service answered with header fields the gateway cannot forward.`, { cause: exchange.failure });
          if (exchange.badResponse === undefined) throw upstreamFailure(route.service, exchange.failure);
          throw new GatewayError('upstream_bad_response', `The ${route.service} service answered with ${exchange.badResponse}.`, { cause: exchange.badResponseCause });
        }
        default:
          throw upstreamFailure(route.service, exchange.failure);
      }
    }
  };
}

/**
 * 103 Early Hints passed on per exchange, the rest dropped: browsers act on the first (a navigation's preloads), RFC
 * 8297 allows more; each goes to the client's socket at once, past any back-pressure.
 */
export const MAX_EARLY_HINTS_RELAYED = 4;

/**
 * A service's 103 Early Hints passed on: its `Link` as separate links, as Node's writeEarlyHints takes them (one
 * field listing several, `</a.css>; rel=preload, </b.js>; rel=preload` as RFC 8288 writes them, it refused).
 * A link Node will not write (a quoted parameter with a space: `title="a b"`) drops the hints: they are advisory
 * (RFC 8297), and thrown inside undici's handler the refusal failed the whole exchange, a GET resent to the
 * service and its instance blamed, a POST it had done answered 502.
 */
function relayEarlyHints(res: KoaContext['res'], link: string | string[], responseRule: RouteHeaderRules['response'], ctx: KoaContext): void {
  try {
    // The route's response rule first, as on the final answer: a `Link` the operator hides (proxy.hideUpstreamHeaders,
    // a route's `remove`) went out in the 103 all the same, naming what the final answer no longer did.
    const hints: http.OutgoingHttpHeaders = { link };
    responseRule?.(hints, ctx);
    if (hints.link === undefined) return;
    res.writeEarlyHints({ link: linkValues(hints.link as string | string[]) });
  } catch {
    // Not passed on: the final answer follows as it would without hints.
  }
}

/** The link-values of `Link` fields (RFC 8288 3): split at commas outside `<URI>` and quoted strings. */
function linkValues(field: string | string[]): string[] {
  const links: string[] = [];
  for (const line of Array.isArray(field) ? field : [field]) {
    let start = 0;
    let inUri = false;
    let inQuotes = false;
    for (let at = 0; at < line.length; at++) {
      const char = line[at];
      if (inQuotes) {
        if (char === '\\') at++;
        else if (char === '"') inQuotes = false;
      } else if (inUri) inUri = char !== '>';
      else if (char === '<') inUri = true;
      else if (char === '"') inQuotes = true;
      else if (char === ',') {
        links.push(line.slice(start, at));
        start = at + 1;
      }
    }
    links.push(line.slice(start));
  }
  return links.map((link) => link.trim()).filter((link) => link !== '');
}

/**
 * Bytes of a service's answer the gateway holds for a client that reads slower than the service sends, beyond
 * which it stops reading from the service (back-pressure). Most answers fit, so a slow client does not keep the
 * service's connection, nor lose its answer when the service closes that connection as idle; a bigger one is held
 * paused (the client's send timeout, `server.sendTimeoutMs`, bounds a client that does not take it). Per exchange,
 * only for an answer that may fit (mayFitBuffer), and only CLIENT_BUFFERS exchanges at once.
 */
export const CLIENT_BUFFER_BYTES = 256 * 1024;

/**
 * Exchanges that may hold up to CLIENT_BUFFER_BYTES for their client at once (64 MiB in all, per process); the
 * others pause the service at Node's own mark, as every answer did before. Without a bound, 10,000 connections
 * (`server.maxConnections`), or one HTTP/2 connection's 100 streams per connection, not reading large answers
 * made the gateway hold 256 KiB for each.
 */
const CLIENT_BUFFERS = 256;
let clientBuffersInUse = 0;

/** Extra attempts on other instances after a connection failure, at most. */
const MAX_RETRIES = 2;
const IDEMPOTENT_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);
/** Outcomes that count against an instance's passive health. */
const INSTANCE_FAILURES = new Set<UpstreamOutcome>(['refused', 'reset', 'timeout', 'aborted_by_upstream']);

/**
 * The client has not sent its whole body and the gateway is not pausing it (back-pressure from a service that is
 * not reading): a silence then is the client's, whatever the service does. Counted against the instance, a client
 * that stopped mid-upload (its bytes already over the minimum rate) had the service's instance ejected: three such
 * requests took the only one out.
 */
function clientOwesBody(req: KoaContext['req']): boolean {
  return !req.complete && !req.isPaused();
}

/**
 * The rest of a body nobody will read, once the answer is out: a service that answered before reading it all (its
 * own 401, 409 or 413), or the gateway's 502/504 mid-upload. undici drops the body stream, the pipe from the request
 * stops, and Node does not discard a body that was being read: the connection sat with the rest unread until a
 * timeout destroyed it, and a client that sends its whole body before reading (urllib3, HttpURLConnection) got a
 * reset instead of the answer. Read and dropped, as nginx does, up to the body limit (past it the connection is
 * closed; a body that trickles is Node's `requestTimeout`'s); the connection then serves its next request. HTTP/1
 * only: an HTTP/2 stream ends on its own.
 */
function discardUnreadBodyAfterAnswer(req: KoaContext['req'], res: KoaContext['res'], received: () => number, limit: number): void {
  if (isHttp2Request(req)) return;
  res.once('finish', () => {
    if (req.complete || req.destroyed) return;
    req.unpipe();
    const overLimit = () => {
      if (received() > limit) req.socket.destroy();
    };
    overLimit();
    req.on('data', overLimit);
    req.resume();
  });
}

/** discardUnreadBodyAfterAnswer for a body no exchange read: counted from the `alreadyRead` bytes read ahead. */
function dropRestOfBody(ctx: KoaContext, alreadyRead: number, limit: number): void {
  let received = alreadyRead;
  ctx.req.on('data', (chunk: Buffer) => void (received += chunk.length));
  discardUnreadBodyAfterAnswer(ctx.req, ctx.res, () => received, limit);
}

function hasBody(headers: http.IncomingHttpHeaders): boolean {
  return headers['transfer-encoding'] !== undefined || Number(headers['content-length'] ?? 0) > 0;
}

function isReplayable(method: string, headers: http.IncomingHttpHeaders): boolean {
  return IDEMPOTENT_METHODS.has(method) && !hasBody(headers);
}

/**
 * The service's headers with `Location`, `Content-Location`, the URL of `Refresh` and the targets of `Link` naming
 * the public URL, not the instance (publicLocation; nginx's `proxy_redirect` rewrites `Location` and `Refresh`). A
 * service that builds absolute URLs from the Host it was sent writes its pagination links (`Link: <...>;
 * rel="next"`) and preloads the same way. Each but `Link` is one field at most here: unforwardableResponse refused
 * repeats.
 */
function withPublicLocations(headers: http.IncomingHttpHeaders, instanceOrigin: string, ctx: KoaContext, route: CompiledRoute): http.IncomingHttpHeaders {
  const { location, 'content-location': contentLocation, refresh } = headers as Record<string, string | undefined>;
  const { link } = headers;
  if (location === undefined && contentLocation === undefined && refresh === undefined && link === undefined) return headers;
  const toPublic = publicUrlOf(instanceOrigin, ctx, route);
  if (!toPublic) return headers;
  const rewritten: Record<string, string | string[] | undefined> = { ...headers };
  if (location !== undefined) rewritten.location = toPublic(location);
  if (contentLocation !== undefined) rewritten['content-location'] = toPublic(contentLocation);
  if (refresh !== undefined) rewritten.refresh = publicRefresh(refresh, toPublic);
  if (link !== undefined) rewritten.link = linkFieldsWith(link, toPublic);
  return rewritten;
}

/**
 * publicLocation for this request's answer, or undefined when there is no public origin to name. The Host the client
 * named or, an HTTP/1.0 request naming none, the address it connected to (what the service is told as
 * X-Forwarded-Host): left as it came, such a request was sent the instance's address.
 */
function publicUrlOf(instanceOrigin: string, ctx: KoaContext, route: CompiledRoute): ((url: string) => string) | undefined {
  const host = forwardedHost(ctx);
  if (!host) return undefined;
  const publicOrigin = `${ctx.protocol}://${host}`;
  return (url) => publicLocation(url, instanceOrigin, publicOrigin, route);
}

/** A 103's `Link` fields with their targets naming the public URL (withPublicLocations). */
function publicLinks(link: string | string[], instanceOrigin: string, ctx: KoaContext, route: CompiledRoute): string | string[] {
  const toPublic = publicUrlOf(instanceOrigin, ctx, route);
  return toPublic ? linkFieldsWith(link, toPublic) : link;
}

/** `Link` fields, one or several lines, each with its targets passed through `rewrite` (withLinkTargets). */
function linkFieldsWith(link: string | string[], rewrite: (url: string) => string): string | string[] {
  return Array.isArray(link) ? link.map((line) => withLinkTargets(line, rewrite)) : withLinkTargets(link, rewrite);
}

/**
 * A `Link` field (RFC 8288 3: `<URI-reference>; param=value, ...`) with every `<...>` that holds neither bracket passed
 * through `rewrite`: each target, wherever a stray `<` before it stands (`anchor=x<y, <http://10.0.3.7/b>`: a scan
 * for the `>` after the first `<` took the stray one for the target's and left the next link's as it was), and a
 * quoted parameter's `<...>` too, which rewriting leaves as it is unless it names the instance (never the client's
 * to see). One pass: a match fails only at the next bracket.
 */
function withLinkTargets(line: string, rewrite: (url: string) => string): string {
  return line.includes('<') ? line.replace(LINK_TARGET, (_target, url: string) => `<${rewrite(url)}>`) : line;
}

const LINK_TARGET = /<([^<>]*)>/g;

/**
 * The URLs an answer names in `Location` and `Content-Location`, as the client will see them (withPublicLocations):
 * a write's answer may name the resource it changed (RFC 9111 4.4). A repeated field names none: the answer is
 * refused (unforwardableResponse).
 */
function namedLocations(headers: http.IncomingHttpHeaders, instanceOrigin: string, ctx: KoaContext, route: CompiledRoute): string[] {
  const urls: string[] = [];
  const toPublic = publicUrlOf(instanceOrigin, ctx, route);
  for (const name of ['location', 'content-location']) {
    const value = headers[name];
    if (typeof value === 'string') urls.push(toPublic ? toPublic(value) : value);
  }
  return urls;
}

/**
 * The start of a `Refresh` value up to its URL, as browsers parse it (HTML's shared declarative refresh steps):
 * the delay, `;` or `,`, an optional `url=`, an optional quote.
 */
const REFRESH_URL_START = /^\s*[\d.]+\s*[;,]?\s*(?:url\s*=\s*)?(['"]?)/i;

/** A `Refresh` value (`5; url=http://10.0.3.7:4001/next`) with its URL passed through `rewrite`. */
function publicRefresh(value: string, rewrite: (url: string) => string): string {
  const start = REFRESH_URL_START.exec(value);
  if (!start) return value;
  const from = start[0].length;
  const quote = start[1];
  const to = quote ? (value.indexOf(quote, from) === -1 ? value.length : value.indexOf(quote, from)) : value.trimEnd().length;
  return value.slice(0, from) + rewrite(value.slice(from, to)) + value.slice(to);
}

/**
 * Response fields the gateway rewrites that RFC 9110 allows once (a single URI): repeated, the gateway could not
 * say which to rewrite, and passing them on leaked the instance's address.
 */
const SINGLE_URL_FIELDS = ['location', 'content-location', 'refresh'];

/** The last status code HTTP defines a class for (RFC 9110 15: 1xx-5xx). */
const MAX_STATUS = 599;

/** The least status code (RFC 9110 15: 100-599). */
const MIN_STATUS = 100;

/** unforwardableResponse's reason for a status no client can read. */
function statusOutOfRange(statusCode: number): string {
  return `a status code outside ${MIN_STATUS}-${MAX_STATUS} (${statusCode})`;
}

/** A reason phrase Node writes as it is: visible ASCII, spaces and tabs. */
const WRITABLE_REASON_PHRASE = /^[\t\x20-\x7e]*$/;

/**
 * Why a response cannot be passed on, if it cannot. A status outside 100-599: RFC 9110 15 defines none beyond 599
 * (a client SHOULD take one for a 5xx; Node's HTTP/2 will not write it). Relayed over HTTP/1.1 as it came, the
 * client was handed a `999` whose meaning is private to the service. A repeated field the gateway rewrites
 * (SINGLE_URL_FIELDS). A transfer-coding other than chunked (`gzip, chunked`):
 * undici removes the chunked framing only, and the client would take the still-coded bytes for the body, with
 * no Content-Encoding to say so (nginx and Envoy refuse these too). A 401 refusing the gateway's own signature
 * (its challenge names SIGNATURE_CHALLENGE_SCHEME): the gateway's and the service's keys or clocks are apart, which no
 * credential of the client's would fix; passed on, the client was told to sign in again. Neither is the instance's
 * failure, nor retried (a deployment fault, every instance the same).
 */
function unforwardableResponse(statusCode: number, headers: http.IncomingHttpHeaders): string | undefined {
  if (statusCode > MAX_STATUS) return statusOutOfRange(statusCode);
  for (const name of SINGLE_URL_FIELDS) if (Array.isArray(headers[name])) return `more than one ${name} field`;
  const codings = headers['transfer-encoding'];
  if (codings !== undefined && String(codings).trim().toLowerCase() !== 'chunked') return `a transfer-coding the gateway does not decode (${String(codings).slice(0, 40)})`;
  if (statusCode === 401 && challengesGatewaySignature(headers['www-authenticate'])) return SIGNATURE_REFUSED;
  return undefined;
}

/** unforwardableResponse's reason for a 401 refusing the gateway's signature; the log line adds SIGNATURE_REFUSED_HINT. */
const SIGNATURE_REFUSED = "a 401 refusing the gateway's signature";

/**
 * The service's response headers minus hop-by-hop ones (Node frames the response itself) and the names the gateway
 * owns on the way in (`x-user-*`, `x-gateway-*`, `x-consumer-*`): a service that echoes its request's headers (a
 * debug endpoint, an error page listing them) handed the client the identity the gateway vouched for and its live
 * `X-Gateway-Signature`, and a shared cached copy handed them to every caller. They take precedence over headers
 * the gateway set earlier, except CORS (with a gateway policy, the service's `Access-Control-*` are dropped) and
 * `Vary`, which keeps what the gateway set (Origin, a cached route's varyHeaders) beside whatever the service varies on.
 */
function responseHeaders(source: http.IncomingHttpHeaders, res: http.ServerResponse, corsApplied: boolean): http.OutgoingHttpHeaders {
  const headers: http.OutgoingHttpHeaders = endToEndHeaders(source, corsApplied ? isGatewayOwnedOrCors : isGatewayOwnedHeader);
  // Vary keeps what the gateway's answer varies on (Origin for CORS, a cached route's varyHeaders) beside the service's.
  const gatewayVary = res.getHeader('vary');
  if (gatewayVary !== undefined) {
    const vary = varyOf(gatewayVary, source.vary);
    if (vary) headers.vary = vary;
  }
  return headers;
}


const isGatewayOwnedOrCors = (name: string) => name.startsWith('access-control-') || isGatewayOwnedHeader(name);

function outcomeOf(exchange: Exchange): UpstreamOutcome {
  if (exchange.badResponse) return 'bad_response';
  if (exchange.bodyTooLarge) return 'body_too_large';
  if (exchange.bodyTooSlow || exchange.bodyStalled || exchange.uploadOutlivedDeadline || exchange.uploadsOverShare) return 'body_too_slow';
  if (exchange.deadlineExceeded) return 'deadline';
  if (exchange.timedOut) return exchange.waitedForConnection ? 'no_connection' : 'timeout';
  if (exchange.malformedBody) return 'bad_response';
  if (exchange.upstreamAborted) return 'aborted_by_upstream';
  if (exchange.heldForClient) return 'client_backed_up';
  if (exchange.clientClosed) return 'client_closed';
  if (exchange.failure && closedByGateway(exchange.failure)) return 'connections_closed';
  // An answer that is not HTTP counts as a failed connection (retried elsewhere, ejecting an instance that keeps
  // sending it); only its error code says what it was (upstreamFailure: upstream_bad_response).
  // A 100 (Continue) the HTTP client cannot read past (upstreamSentContinue), or a 101 to a request that asked for no
  // upgrade, is the same: one endpoint's answer.
  // So is a head whose fields the parser refused (exchange.status is then unset: nothing of it was forwarded).
  if (exchange.failure) {
    if (upstreamUnreachable(exchange.failure)) return 'refused';
    if (headersOverflow(exchange.failure) || upstreamSentContinue(exchange.failure) || upstreamSwitchedProtocolsUnasked(exchange.failure)) return 'bad_response';
    return exchange.status === undefined && malformedHeaderFields(exchange.failure) !== undefined ? 'bad_response' : 'reset';
  }
  return 'ok';
}

/**
 * undici refused the dispatch because the gateway had closed (or destroyed) the connections itself: a reload
 * retired them (src/config-reload.ts). Counted against the instance, it ejected a healthy one, and the next
 * config inherited the ejection with the pool.
 */
function closedByGateway(failure: Error): boolean {
  const { code } = failure as NodeJS.ErrnoException;
  return code === 'UND_ERR_CLOSED' || code === 'UND_ERR_DESTROYED';
}

/**
 * A response header block over the limit: one endpoint's answer (a huge cookie, a debug header), not a broken
 * instance, so neither retried nor counted against it (502 upstream_bad_response). An answer that is not HTTP at
 * all is the instance's (retried elsewhere, and ejecting it).
 */
function headersOverflow(failure: Error): boolean {
  return (failure as NodeJS.ErrnoException).code === 'UND_ERR_HEADERS_OVERFLOW';
}

/**
 * Whether undici's parser refused what the service sent (llhttp's `HPE_*`): not what it reports when the connection
 * ends a response that was to close it (`Connection: close`, HTTP/1.0) before its end, a body shorter than its
 * Content-Length (`UND_ERR_RES_CONTENT_LENGTH_MISMATCH`) or a chunked one cut (`HPE_UNEXPECTED_EOF`, "Invalid EOF
 * state"): that is a lost connection (a worker killed mid-answer), counted against the instance as a reset.
 */
function parserRefused(failure: Error): boolean {
  const { code, name, message } = failure as NodeJS.ErrnoException;
  return name === 'HTTPParserError' && code !== 'HPE_UNEXPECTED_EOF' && !message.includes('Invalid EOF state');
}

/**
 * A status line the parser read, then header fields it refused: a framing it must not guess at (Content-Length
 * beside Transfer-Encoding, two Content-Lengths that disagree, one that is no number, a transfer-coding list it
 * cannot parse) or a field that is not a token and a value. One endpoint's answer, as a header block over the limit
 * is: taken for a reset, a GET was sent two more times and three such answers ejected the service's only instance
 * (nginx leaves `invalid_header` out of `proxy_next_upstream`, and its `max_fails`). undici 8.13.1 says which in
 * words only: its HTTPParserError carries no code, just llhttp's reason in its message ("Response does not match
 * the HTTP/1.1 protocol (Invalid header token)"), where a status line that is not HTTP reads "Expected HTTP/" or
 * "Invalid status code"; and with a Content-Length seen before the parser failed it reports the body's length
 * mismatch instead (lib/dispatcher/client-h1.js createError), though no body was read: before any status reached
 * the handler, that is the head's fault too. Undefined when the failure is not one of these.
 */
function malformedHeaderFields(failure: Error): string | undefined {
  const { code, name, message } = failure as NodeJS.ErrnoException;
  if (code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH') return 'a Content-Length its parser refused';
  if (name !== 'HTTPParserError') return undefined;
  const reason = /\(([^)]*(?:header|Content-Length|Transfer-Encoding)[^)]*)\)/i.exec(message)?.[1];
  return reason === undefined ? undefined : reason.slice(0, 80);
}

/**
 * Below this rate over a grace period, an upload on a connection is a slow one (unless the read-ahead a second is
 * larger): 64 KiB/s, the read-ahead's default a second. Uploads at the minimum rate (a few hundred bytes a second) are
 * far below, one at 200 KB/s above. Holding an instance's connections past the uploads' half so costs a client 64 KiB/s
 * on each of them, until the route's deadline.
 */
const SLOW_UPLOAD_BYTES_PER_SECOND = 64 * 1024;

/**
 * The 503 of an upload over the uploads' half of an instance's connections: refused when the instance was picked, or
 * once it had streamed past the grace period (`Connection: close` then: the rest of its body is not worth reading).
 */
function uploadsOverShare(service: string, headers?: Record<string, string>): GatewayError {
  return new GatewayError('upstream_busy', `Half of the connections to the ${service} service already carry uploads still arriving; try again shortly.`, headers && { headers });
}

/** The 408 of a body still arriving when the route's deadline came; `Connection: close`, as for every body cut. */
function uploadOutlivedDeadline(route: CompiledRoute): GatewayError {
  return new GatewayError('request_timeout', `The request body did not arrive within the ${route.deadlineMs} ms the exchange with the ${route.service} service may last.`, { headers: { Connection: 'close' } });
}
