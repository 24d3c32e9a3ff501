import { defaultTextMapGetter, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Attributes, type Context, type Tracer } from '@opentelemetry/api';
import type { IncomingHttpHeaders } from 'node:http';
import type { Context as KoaContext, Middleware } from 'koa';
import {
  ATTR_CLIENT_ADDRESS,
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_REQUEST_METHOD_ORIGINAL,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_HTTP_ROUTE,
  ATTR_NETWORK_PROTOCOL_VERSION,
  ATTR_SERVER_ADDRESS,
  ATTR_SERVER_PORT,
  ATTR_URL_PATH,
  ATTR_URL_QUERY,
  ATTR_URL_SCHEME,
  ATTR_USER_AGENT_ORIGINAL,
} from '@opentelemetry/semantic-conventions';
import { startSpanOwning } from '../../otel/gateway-tracer';
import { recordedMethod, sentMethod, spanNameMethod } from '../../otel/http-method';
import { layeredContext } from '../../otel/layered-context';
import { redactCredentialShapes, redactQuery } from '../../otel/redact-url';
import { isProbeRequest } from '../../otel/telemetry-config';
import { TRACE_FLAG_RANDOM } from '../../otel/trace-context';
import { setRandomTraceIdFlag, traceresponseOf, TraceContextPropagator } from '../../otel/trace-context-propagator';
import { TRACE_ID_FROM_REQUEST_ID, traceIdFromRequestId, withTraceId } from '../../otel/trace-ids';
import { ATTR, HEADER, IDENTITY_CLAIM_LIMITS } from '../../otel/wire-names';
import { isWellFormedRequestId } from './request-id';
import { traceContextTrust } from './trusted-proxies';
import { clientLeft, onResponseClosed, sentStatus, serverErrorType } from '../response-closed';
import { remembered } from '../remembered';
import { arrivalOf } from '../request-arrival';

export interface TracingOptions {
  tracer: Tracer;
  /**
   * Continue a client's `traceparent`, with its `tracestate` and random flag, as W3C Trace Context Level 2 says
   * (otel/trace-context.ts), and accept its `baggage`. Default false: the gateway is the edge, and an untrusted
   * client could otherwise pick trace ids (colliding with or polluting other traces) and force sampling
   * decisions; its trace headers are then dropped and a new trace starts. Turn it on when a trusted proxy or
   * client-side tracing sits in front.
   */
  trustTraceparent?: boolean;
  /**
   * With `trustTraceparent`: the proxies (addresses, CIDR ranges: config `trustedProxies`) whose trace context is
   * continued; any other peer's is dropped and its request starts a new trace. Unset: every peer's is continued.
   */
  trustedProxies?: readonly string[];
  /**
   * Give a request whose client sent a UUID or 32-hex `X-Request-Id` that id as its trace id (the UUID
   * without dashes), so the id the client logged opens the trace. Default true. Such a root span is marked
   * `gateway.trace_id.source=request_id`, and the telemetry bootstrap's sampler then decides it by a fresh coin
   * flip rather than from the id (otel/trace-ids.ts). False: the client's id stays `request.id` only and the
   * trace gets a random id of its own.
   */
  mapRequestIdToTraceId?: boolean;
  /** The running configuration's version, set as `gateway.config.version` on every SERVER span. None when absent. */
  configVersion?: string;
}

/** The route template for span names: the matched gateway route's, or the path @koa/router matched (login), or nothing. */
function routeOf(ctx: KoaContext): string | undefined {
  return ctx.state.route?.template ?? ctx.routerPath;
}

/**
 * The port a scheme implies when the authority names none (RFC 9110 4.2.1, 4.2.2); undefined for any other. Not a
 * lookup in an object: a trusted proxy's `X-Forwarded-Proto: __proto__` found Object.prototype there, exported as
 * `server.port`.
 */
function defaultPort(scheme: string): number | undefined {
  return scheme === 'https' ? 443 : scheme === 'http' ? 80 : undefined;
}

/**
 * `server.port` as the HTTP semantic conventions take it from the request's authority (`Host`, `:authority`, or a
 * trusted `X-Forwarded-Host`): the port it names after the host (after the `]` of an IPv6 literal), else the
 * scheme's default (an empty port too, RFC 3986 3.2.3); undefined for anything else. No allocation: per request.
 */
function authorityPort(host: string, scheme: string): number | undefined {
  const colon = host.indexOf(':', host.charCodeAt(0) === 0x5b ? host.indexOf(']') : 0);
  if (colon === -1 || colon === host.length - 1) return defaultPort(scheme);
  if (host.length - colon > 6) return undefined;
  let port = 0;
  for (let i = colon + 1; i < host.length; i++) {
    const digit = host.charCodeAt(i) - 0x30;
    if (digit < 0 || digit > 9) return undefined;
    port = port * 10 + digit;
  }
  return port <= 0xffff ? port : undefined;
}

/**
 * What a trusted client sent: its baggage (and whatever else the registered propagators read), with the trace
 * part decided by the strict Level 2 parser alone, whichever trace propagator is registered globally.
 */
function trustedParent(w3c: TraceContextPropagator, headers: IncomingHttpHeaders): Context {
  return w3c.extract(trace.deleteSpan(propagation.extract(ROOT_CONTEXT, headers)), headers, defaultTextMapGetter);
}

/**
 * The gateway's SERVER span, started by hand (no http/koa instrumentation on the gateway's hot path). It
 * decides which trace a request belongs to: a trusted inbound `traceparent`, else (with `mapRequestIdToTraceId`)
 * the client's request id when it is a UUID or 32-hex id, else a new trace whose id becomes the request id
 * when the client sent none (createRequestId reads it).
 * Inbound trace headers are always removed; the proxy injects the gateway's own. The Level 2 random flag, which
 * the SDK's spans cannot carry, is recorded in the request's context (trace-context-propagator.ts): a continued
 * trace keeps its caller's; a new trace's id is random unless the client's request id chose it.
 */
export function createTracing(options: TracingOptions): Middleware {
  const { tracer } = options;
  const trusts = traceContextTrust(options.trustTraceparent ?? false, options.trustedProxies);
  const mapRequestId = options.mapRequestIdToTraceId ?? true;
  const w3c = new TraceContextPropagator();
  const { configVersion } = options;
  // The SERVER span's name per method and route (`GET /api/users/*`), made once rather than concatenated per
  // request: that string was kept with its span until the batch was exported, and flattened when the encoder read
  // it. Methods are the conventions' (recordedMethod), routes the config's templates and router paths.
  const spanNames = new Map<string, (route: string) => string>();
  const spanNameOf = (method: string, route: string): string => {
    let byRoute = spanNames.get(method);
    if (byRoute === undefined) spanNames.set(method, (byRoute = remembered((template) => `${spanNameMethod(method)} ${template}`)));
    return byRoute(route);
  };
  // `user.roles` as one frozen array per role, shared by every span of that role: the tracer keeps a frozen array
  // of primitives as it is (gateway-tracer.ts copiedPrimitiveArray), where an array made per request was copied
  // and the copy kept until the batch was exported. The table holds roles of the length a token's role claim may
  // have (IDENTITY_CLAIM_LIMITS), at most 512 of them.
  const rolesOf = remembered((role) => Object.freeze([role]) as string[], { maxKeyLength: IDENTITY_CLAIM_LIMITS.roleMaxLength });

  return async function traceRequest(ctx, next) {
    const headers = ctx.req.headers;
    // Probes (compose health checks every few seconds) would drown the traces that matter; a POST there is no probe.
    const traced = !isProbeRequest(ctx.path, ctx.method);
    const parent = traced && trusts(ctx.req.socket.remoteAddress) ? trustedParent(w3c, headers) : ROOT_CONTEXT;
    // Deleted only when present: a `delete` of an absent key still costs a runtime call per request.
    if (headers[HEADER.traceparent] !== undefined) delete headers[HEADER.traceparent];
    if (headers[HEADER.tracestate] !== undefined) delete headers[HEADER.tracestate];
    if (headers[HEADER.baggage] !== undefined) delete headers[HEADER.baggage];
    if (!traced) return next();

    const inboundId = headers[HEADER.requestId];
    const remote = trace.getSpanContext(parent);
    const continuing = remote !== undefined;
    const requestedTraceId =
      mapRequestId && !continuing && typeof inboundId === 'string' && isWellFormedRequestId(inboundId) ? traceIdFromRequestId(inboundId) : undefined;

    // Assigned one by one, not written as a literal with computed keys (`{ [ATTR_URL_PATH]: ... }`): until V8's
    // top tier compiles this function, each computed key in a literal is a runtime call (~0.15 µs each here).
    const attributes: Attributes = {};
    // PROPFIND, PURGE and the other methods Node parses are `_OTHER`, named `HTTP` (semconv), as the metrics count them.
    const method = recordedMethod(ctx.method);
    attributes[ATTR_HTTP_REQUEST_METHOD] = method;
    // What the client sent beside it, none past a length (HTTP/2 carries a `:method` of any): as over HTTP/1.1's parser.
    if (method !== ctx.method) {
      const sent = sentMethod(ctx.method);
      if (sent !== undefined) attributes[ATTR_HTTP_REQUEST_METHOD_ORIGINAL] = sent;
    }
    // A gateway API key or a JSON Web Token in a path is recognised by its shape (redactCredentialShapes), as in the access log.
    attributes[ATTR_URL_PATH] = redactCredentialShapes(ctx.path);
    // Conditionally required when the request had one; its secrets redacted as in the access log.
    const query = ctx.querystring;
    if (query !== '') attributes[ATTR_URL_QUERY] = redactQuery(query);
    const scheme = ctx.protocol;
    attributes[ATTR_URL_SCHEME] = scheme;
    // From the authority the client addressed (semconv "Setting server.address and server.port"); none without one.
    const host = ctx.host;
    if (host !== '') {
      // ctx.hostname without reading the headers again; an IPv6 literal goes through it (URL normalises it).
      const colon = host.indexOf(':');
      const address = host.charCodeAt(0) === 0x5b ? ctx.hostname : colon === -1 ? host : host.slice(0, colon);
      if (address !== '') {
        attributes[ATTR_SERVER_ADDRESS] = address;
        const port = authorityPort(host, scheme);
        if (port !== undefined) attributes[ATTR_SERVER_PORT] = port;
      }
    }
    attributes[ATTR_CLIENT_ADDRESS] = ctx.ip;
    // The conventions write HTTP/2 as `2` (Node says `2.0`).
    attributes[ATTR_NETWORK_PROTOCOL_VERSION] = ctx.req.httpVersionMajor === 2 ? '2' : ctx.req.httpVersion;
    const userAgent = headers['user-agent'];
    if (userAgent) attributes[ATTR_USER_AGENT_ORIGINAL] = userAgent;
    // Read by the sampler (ClientTraceIdSampler): the client chose this trace id, so it must not decide sampling.
    if (requestedTraceId !== undefined) attributes[ATTR.traceIdSource] = TRACE_ID_FROM_REQUEST_ID;
    if (configVersion !== undefined) attributes[ATTR.configVersion] = configVersion;
    // Handed over: the gateway's tracer keeps this object as the span's instead of copying it.
    // Started when the request arrived, its wait for the pipeline included (src/request-arrival.ts).
    const span = withTraceId(requestedTraceId, () => startSpanOwning(tracer, spanNameMethod(method), { kind: SpanKind.SERVER, attributes }, parent, arrivalOf(ctx.req)));
    const spanContext = span.spanContext();
    const random = remote ? (remote.traceFlags & TRACE_FLAG_RANDOM) !== 0 : requestedTraceId === undefined;
    // Layered: this request's contexts (here, its baggage in createRequestId, the CLIENT span's for `traceparent`)
    // derive without copying the API context's Map each time.
    const active = setRandomTraceIdFlag(trace.setSpan(layeredContext(parent), span), spanContext.traceId, random);
    const traceresponse = traceresponseOf(span, active);
    if (traceresponse !== undefined) ctx.res.setHeader(HEADER.traceresponse, traceresponse);

    // Ended once both the response is really over (streamed proxy responses are timed whole) and the
    // middleware below has returned (the proxy records the upstream outcome after the response finished).
    // The status sent, none when the client left before one was (semconv: "if and only if one was sent"; the
    // access log's 499 is not a status anyone sent).
    let status: number | undefined;
    // Read when the response closed, with the status, as the access log and the metrics read them: an error the
    // pipeline throws after that (a client gone before a step failed) changes none of the three.
    let errorCode: string | undefined;
    let left = false;
    let pending = 2;
    const finish = () => {
      if (--pending > 0) return;
      const route = routeOf(ctx);
      if (route) {
        span.updateName(spanNameOf(method, route));
        span.setAttribute(ATTR_HTTP_ROUTE, route);
      }
      if (ctx.state.route) span.setAttribute(ATTR.routeName, ctx.state.route.name);
      const { user, consumer } = ctx.state;
      if (user) span.setAttribute(ATTR.userId, user.id).setAttribute(ATTR.userRoles, rolesOf(user.role));
      if (consumer) span.setAttribute(ATTR.consumerId, consumer.id).setAttribute(ATTR.userRoles, rolesOf(consumer.role));
      if (status !== undefined) span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, status);
      // What the pipeline threw (handleErrors) or the server answered or cut itself (otel/lifecycle.ts, through
      // clientLeft).
      if (errorCode !== undefined) span.setAttribute(ATTR.errorCode, errorCode);
      // The rule the request's metric follows too (serverErrorType): a 4xx is the client's error, no `error.type`.
      const errorType = serverErrorType(ctx, status, errorCode, left);
      if (errorType !== undefined) {
        span.setAttribute(ATTR_ERROR_TYPE, errorType);
        span.setStatus(errorCode === undefined ? { code: SpanStatusCode.ERROR } : { code: SpanStatusCode.ERROR, message: errorCode });
      }
      span.end();
    };
    onResponseClosed(ctx, () => {
      left = clientLeft(ctx);
      status = sentStatus(ctx);
      errorCode = ctx.state.errorCode;
      finish();
    });

    // Entered by createRequestId, the next middleware, with the request id's baggage added: one context switch.
    ctx.state.traceContext = active;
    if (continuing) ctx.state.traceContinued = true;
    try {
      await next();
    } finally {
      finish();
    }
  };
}
