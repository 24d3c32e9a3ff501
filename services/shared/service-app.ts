import type { IncomingMessage } from 'node:http';
import { bodyParser } from '@koa/bodyparser';
import { context, propagation, trace } from '@opentelemetry/api';
import { getRPCMetadata, RPCType } from '@opentelemetry/core';
import type Router from '@koa/router';
import Koa, { type Context } from 'koa';
import { request, type Dispatcher } from 'undici';
import { z } from 'zod';
import type { Logger } from '../../otel/logger';
import { redactCredentialShapes } from '../../otel/redact-url';
import { ATTR, AUTH_REALM, CALL_NOT_ALLOWED_CODE, HEADER, SIGNATURE_CHALLENGE_SCHEME, SIGNATURE_REFUSED_CODE } from '../../otel/wire-names';
import { describeFirstIssue } from './input-limits';
import { nestedAtMost } from '../../src/json-depth';
import { duplicateJsonKey } from '../../src/json-duplicate-keys';
import { readsAsUtf8 } from '../../src/unicode-text';
import { callerKeysOf, SIGNED_HEADERS, verifyGatewaySignature, type CallerKeys, type CallerRules, type GatewaySigner, type SignatureProblem, type SignedRequest, type SignedValues } from '../../src/gateway-signature';
import { serviceRequestId } from '../../src/middleware/request-id';

/** An error a service answers with; `code` is stable, `detail` is for humans. */
export class ServiceError extends Error {
  override name = 'ServiceError';
  constructor(
    readonly status: number,
    readonly code: string,
    detail: string,
    /** Sent with the answer (a 401's `WWW-Authenticate`). */
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(detail);
  }
}

/**
 * The challenges of a 401 for a request that carries no identity the service serves: every 401 must carry one (RFC
 * 9110 11.6.1), and it reaches the client unchanged through the gateway. A users-only endpoint asked by an API-key
 * consumer answered 401 with none: it names the credential that would be served, a bearer token (and, where
 * consumers are served too, an API key), in the gateway's realm.
 */
export const USER_CHALLENGE = { 'WWW-Authenticate': `Bearer realm="${AUTH_REALM}"` };
const OWNER_CHALLENGE = { 'WWW-Authenticate': `Bearer realm="${AUTH_REALM}", ApiKey realm="${AUTH_REALM}"` };
/** A signature refusal's: the gateway's proxy answers a 401 naming it 502, a fault of its deployment, not the client's. */
const SIGNATURE_CHALLENGE = { 'WWW-Authenticate': `${SIGNATURE_CHALLENGE_SCHEME} realm="${AUTH_REALM}"` };

/** The caller, as the gateway vouched for it in the identity headers. */
export interface Caller {
  id: string;
  role: string;
  email: string;
}

/**
 * Services trust identity headers because only the gateway can set them: it strips client-sent ones, and
 * signs its own (with `GATEWAY_SIGNING_KEY`, checked by createServiceApp before any route runs). No
 * `X-User-Id` means the request did not come through an authenticated route: 401.
 */
export function requireCaller(ctx: Context): Caller {
  const id = ctx.get(HEADER.userId);
  if (!id) throw new ServiceError(401, 'missing_identity', 'This endpoint needs the caller identity the gateway injects.', USER_CHALLENGE);
  return { id, role: ctx.get(HEADER.userRole), email: ctx.get(HEADER.userEmail) };
}

/**
 * Who a request acts for, where a service serves API-key consumers (`X-Consumer-Id`, src/consumers.ts) as well as
 * users: one or the other, never compared with each other (a consumer named `1` is not user 1). `key` names the
 * owner of what the request creates and reads.
 */
export type Owner = { kind: 'user'; key: string; user: Caller } | { kind: 'consumer'; key: string; consumerId: string };

/** The user the gateway vouched for or, with none, the API-key consumer; 401 with neither. */
export function requireOwner(ctx: Context): Owner {
  if (ctx.get(HEADER.userId)) {
    const user = requireCaller(ctx);
    return { kind: 'user', key: `user:${user.id}`, user };
  }
  const consumerId = ctx.get(HEADER.consumerId);
  if (!consumerId) throw new ServiceError(401, 'missing_identity', 'This endpoint needs the caller identity the gateway injects.', OWNER_CHALLENGE);
  return { kind: 'consumer', key: `consumer:${consumerId}`, consumerId };
}

/** Parses `ctx.request.body` with a zod schema; failures are 400 with the first problem named. */
export function validBody<T extends z.ZodType>(ctx: Context, schema: T): z.output<T> {
  const result = schema.safeParse(ctx.request.body);
  if (!result.success) throw new ServiceError(400, 'invalid_body', describeFirstIssue(result.error));
  return result.data;
}

/** The path variable `name` (`:id`), checked with a zod schema; failures are 400 naming it. */
export function validParam<T extends z.ZodType>(ctx: Context & { params?: Record<string, string> }, name: string, schema: T): z.output<T> {
  const result = schema.safeParse(ctx.params?.[name]);
  if (!result.success) throw new ServiceError(400, 'invalid_param', describeFirstIssue(result.error, name));
  return result.data;
}

/**
 * The query's parameters, checked with a zod object schema; failures are 400 naming the parameter. A parameter given
 * twice is refused: read as a list, or as its first or last value, by whatever reads it in front, it could mean two
 * things.
 */
export function validQuery<T extends z.ZodType>(ctx: Context, schema: T): z.output<T> {
  // Without a prototype: a parameter named `__proto__` is a name like any other.
  const values: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const [name, value] of Object.entries(ctx.query)) {
    // The name is not echoed: it is the caller's text.
    if (typeof value !== 'string') throw new ServiceError(400, 'invalid_query', 'A query parameter is given more than once.');
    values[name] = value;
  }
  const result = schema.safeParse(values);
  if (!result.success) throw new ServiceError(400, 'invalid_query', describeFirstIssue(result.error, 'query'));
  return result.data;
}

/** The media types of the bodies the services read: JSON, under its own name or a `+json` suffix (RFC 6839). */
const JSON_BODY_TYPES = ['application/json', '+json'];

/** The methods whose bodies the services read (the body parser's). */
const BODY_METHODS: ReadonlySet<string> = new Set(['POST', 'PUT', 'PATCH']);

/** Deepest nesting of a body the services take: theirs are a few levels deep (an order's items: three). */
const MAX_BODY_DEPTH = 32;

/** Codes for errors Koa or the body parser throw (http-errors carry only a status). */
const CODE_BY_STATUS: Partial<Record<number, string>> = {
  404: 'not_found',
  405: 'method_not_allowed',
  501: 'not_implemented',
  413: 'payload_too_large',
  415: 'unsupported_media_type',
  500: 'internal',
};

/** The code of an error answer that only has a status. */
function codeForStatus(status: number): string {
  return CODE_BY_STATUS[status] ?? (status >= 500 ? 'internal' : 'bad_request');
}

export interface ServiceAppOptions {
  serviceName: string;
  logger: Logger;
  router: Router;
  /** Largest JSON body, bytes. Default 1 MiB. */
  bodyLimitBytes?: number;
  /**
   * This service's signing key (`GATEWAY_SIGNING_KEY`: its own, derived from the gateway's, src/gateway-signature.ts
   * serviceSigningKey): every request but `GET /health` must carry the gateway's
   * signature over its method, target and identity headers (src/gateway-signature.ts), or is refused with 401.
   * Unset (development and tests only; production refuses to start without it): identity headers are believed
   * from any peer.
   */
  signingKey?: string;
  /**
   * Another key whose signatures are believed too (`GATEWAY_SIGNING_KEY_ACCEPTED`), never used to sign: during a key
   * rotation the next key (before the gateway signs with it) or the previous one (while other services still sign
   * their calls with it). Only beside `signingKey`.
   */
  acceptedSigningKey?: string;
  /**
   * The name this service goes by in the gateway's `services` (`GATEWAY_SIGNATURE_AUDIENCE`): a signature is believed
   * only when made for it, never one the gateway made for another service (src/gateway-signature.ts).
   */
  signatureAudience: string;
  /**
   * The calls this service takes from other services, by caller (src/gateway-signature.ts CallerRules): a caller's
   * signature (`by=<caller>`, made with the key derived from this service's for it) is believed for those alone, and
   * any other call it signs is refused with 403. Default none.
   */
  callers?: CallerRules;
  /**
   * Continue each believed request's `traceparent`, `tracestate` and `baggage` in its context by hand, for the
   * calls made within it to pass on (callService `propagate`): for a process without the http instrumentation,
   * which does it otherwise (telemetry off: service-main.ts). A request the gateway did not sign is not continued,
   * as with the instrumentation. Default false.
   */
  continueTraceContext?: boolean;
}

/** The identity the gateway vouched for in `ctx`'s request (absent headers as ''): what a call to another service carries on. */
/** The request id each request is logged and answered under (logRequest decides it: the inbound one, or minted). */
const requestIds = new WeakMap<Context, string>();

/** The id this request goes by, for the calls it makes to other services ('' with none): never the raw header. */
export function requestIdOf(ctx: Context): string {
  return requestIds.get(ctx) ?? '';
}

export function identityOf(ctx: Context): SignedValues {
  return SIGNED_HEADERS.map((name) => ctx.get(name)) as unknown as SignedValues;
}

/**
 * The identity headers of a call to another service (absent ones left out) and, with the key's signer, the
 * signature for that call: a service signs each of its own calls, since a signature is good only for the request
 * it was made for (src/gateway-signature.ts).
 */
export function signedIdentityHeaders(identity: SignedValues, request: SignedRequest, sign: GatewaySigner | undefined): Record<string, string> {
  const headers: Record<string, string> = {};
  SIGNED_HEADERS.forEach((name, index) => {
    if (identity[index] !== '') headers[name] = identity[index]!;
  });
  if (sign) headers[HEADER.gatewaySignature] = sign(request, identity);
  return headers;
}

/**
 * Each request's signature verdict, with the key it was decided by. Both the http instrumentation (telemetry on:
 * signedByGateway, asked before the app runs) and logRequest ask about every request; the HMAC is computed once.
 * Keyed by the request, so a verdict lives only as long as its request.
 */
const verdicts = new WeakMap<IncomingMessage, { keys: string; problem: SignatureProblem | undefined }>();

/**
 * The keys a service believes signatures of (its own, and the one it also accepts), the audience they must name (the
 * service's own), and the one string a verdict is kept by.
 */
interface BelievedKeys {
  list: readonly string[];
  audience: string;
  /** The other services it takes calls from, with their keys (derived from `list`) and rules. */
  callers: CallerKeys;
  id: string;
}

function believedKeys(signingKey: string, acceptedSigningKey: string | undefined, audience: string, callers: CallerRules = {}): BelievedKeys {
  const list = acceptedSigningKey === undefined ? [signingKey] : [signingKey, acceptedSigningKey];
  return { list, audience, callers: callerKeysOf(list, callers), id: `${audience}\n${Object.keys(callers).join(',')}\n${list.join('\n')}` };
}

/** What is wrong with `request`'s gateway signature, over the request as it arrived (method and target); undefined when it verifies. */
function signatureProblemOf(keys: BelievedKeys, request: IncomingMessage): SignatureProblem | undefined {
  const decided = verdicts.get(request);
  if (decided?.keys === keys.id) return decided.problem;
  const problem = verifyGatewaySignature(keys.list, { audience: keys.audience, method: request.method ?? '', target: request.url ?? '' }, (name) => request.headers[name], Date.now(), keys.callers);
  verdicts.set(request, { keys: keys.id, problem });
  return problem;
}

/** Whether a request carries the gateway's valid signature for itself: what a service believes the trace context of (service-main.ts). */
export function signedByGateway(signingKey: string, acceptedSigningKey: string | undefined, audience: string, callers?: CallerRules): (request: IncomingMessage) => boolean {
  const keys = believedKeys(signingKey, acceptedSigningKey, audience, callers);
  return (request) => signatureProblemOf(keys, request) === undefined;
}

/**
 * The bootstrap the three services share: request id echo, one log line per request, problem+json
 * errors (the same shape the gateway uses), a JSON body parser and `GET /health`.
 */
export function createServiceApp(options: ServiceAppOptions): Koa {
  const { logger, serviceName, signingKey } = options;
  const keys = signingKey === undefined ? undefined : believedKeys(signingKey, options.acceptedSigningKey, options.signatureAudience, options.callers);
  const continueTraceContext = options.continueTraceContext ?? false;
  const app = new Koa();
  /** Why a request's signature failed, decided once before anything records it (logRequest), refused by requireGatewaySignature. */
  const refusedSignatures = new WeakMap<Context, SignatureProblem>();

  app.use(async function logRequest(ctx, next) {
    const started = performance.now();
    // Only what the gateway signed is believed, its request id included: a peer sending a forged X-Request-Id
    // would otherwise have its 401 logged under someone else's id. It gets one of its own (and its forged
    // traceparent and baggage were not continued either: otel/telemetry.ts continueTraceContextOnlyWhen).
    const problem = keys === undefined || ctx.path === '/health' ? undefined : signatureProblemOf(keys, ctx.req);
    if (problem !== undefined) refusedSignatures.set(ctx, problem);
    // Held to the gateway's own rule too (isWellFormedRequestId): `/health` is answered unsigned, and it echoed and
    // logged whatever id a peer sent, 10 KB of it or with bytes a log reader trips on.
    const requestId = serviceRequestId(ctx.get(HEADER.requestId) || undefined, problem === undefined);
    if (requestId !== undefined) requestIds.set(ctx, requestId);
    if (requestId) {
      ctx.set(HEADER.requestId, requestId);
      // On the SERVER span too: a believed id arrives in baggage (otel/request-id-span-processor.ts), but one minted
      // here for a request not believed (unsigned, a forged id) reached the log line and not the span. The HTTP
      // instrumentation's span, as it leaves it in the context for the Koa instrumentation (whose own middleware
      // span is the active one here).
      const rpc = getRPCMetadata(context.active());
      (rpc?.type === RPCType.HTTP ? rpc.span : trace.getActiveSpan())?.setAttribute(ATTR.requestId, requestId);
    }
    try {
      // Not for `/health`: answered unsigned (problem is never set for it), its caller's context is nobody's to believe.
      if (continueTraceContext && problem === undefined && ctx.path !== '/health') await context.with(propagation.extract(context.active(), ctx.req.headers), next);
      else await next();
    } finally {
      // The path's credential shapes (a magic link's token) redacted, as the SERVER span's url.path and the gateway's
      // own access line have them: the line went to the logs and over OTLP with the whole token.
      logger.info('request handled', { method: ctx.method, url: redactCredentialShapes(ctx.path), status: ctx.status, duration_ms: Math.round((performance.now() - started) * 1000) / 1000, request_id: requestId });
    }
  });

  const answerProblem = (ctx: Context, status: number, code: string, detail: string) => {
    ctx.status = status;
    ctx.type = 'application/problem+json';
    // A 503 says when to try again, as the gateway's own do.
    if (status === 503) ctx.set('Retry-After', '1');
    // The body names this request: a shared cache (the gateway's, a CDN) must not give it to another caller, whose
    // support ticket would then quote someone else's request id. A 404 is cacheable by default (RFC 9111 4.2.2).
    ctx.set('Cache-Control', 'no-store');
    // The id logRequest chose and echoed (a refused request's is not the one it sent).
    ctx.body = { type: `urn:koa-gateway:problem:${code}`, title: code.replaceAll('_', ' '), status, detail, code, requestId: ctx.response.get(HEADER.requestId) || undefined, service: serviceName };
  };
  app.use(async function handleErrors(ctx, next) {
    try {
      await next();
    } catch (thrown) {
      const status = thrown instanceof ServiceError ? thrown.status : typeof (thrown as { status?: unknown }).status === 'number' ? (thrown as { status: number }).status : 500;
      const code = thrown instanceof ServiceError ? thrown.code : codeForStatus(status);
      const exposed = status < 500 || thrown instanceof ServiceError;
      // The request id named here: with telemetry off no context manager carries it to the line.
      if (!exposed) logger.error('request failed', { error: thrown instanceof Error ? thrown.message : String(thrown), request_id: requestIdOf(ctx) });
      answerProblem(ctx, status, code, exposed ? (thrown as Error).message : 'Internal error');
      if (thrown instanceof ServiceError) ctx.set(thrown.headers);
      return;
    }
    // What no route answered (Koa's 404) or the router refused without throwing (405 and 501, with Allow): Koa
    // would send its plain-text status line, without the request id every other error carries.
    if (ctx.status >= 400 && ctx.body == null) {
      // The path not named: it is this service's, not the public one the client sent (the problem leaves out
      // `instance` for the same reason), and the gateway passes the answer on.
      answerProblem(ctx, ctx.status, codeForStatus(ctx.status), ctx.status === 404 ? 'No resource at this path.' : ctx.status === 405 ? `This resource does not take ${ctx.method}.` : `${ctx.method} is not supported.`);
    }
  });

  app.use(async function health(ctx, next) {
    if (ctx.path !== '/health') return next();
    // Read-only, as every other path's methods are enforced (a DELETE answered 200 `ok`): 405 with Allow otherwise.
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') {
      ctx.status = 405;
      ctx.set('Allow', 'GET, HEAD');
      return;
    }
    ctx.body = { status: 'ok', service: serviceName };
  });
  if (signingKey !== undefined) {
    // Before the body is read: an unsigned request costs the service nothing.
    app.use(function requireGatewaySignature(ctx, next) {
      // Over the request as it arrived: a signature made for another method or target does not verify.
      const problem = refusedSignatures.get(ctx);
      // Another service's signature, good, for a call it is not let make: who it is is known, the call is not its.
      if (problem === 'outside-scope') throw new ServiceError(403, CALL_NOT_ALLOWED_CODE, "This service does not take this call from the service that signed it.");
      if (problem) throw new ServiceError(401, SIGNATURE_REFUSED_CODE, `This service answers only requests signed by the gateway (signature ${problem}).`, SIGNATURE_CHALLENGE);
      return next();
    });
  }
  // Every JSON media type (`application/json`, `application/*+json`), not only the parser's own short list.
  const parseBody = bodyParser({ enableTypes: ['json'], detectJSON: (ctx) => typeof ctx.request.is(JSON_BODY_TYPES) === 'string', jsonLimit: options.bodyLimitBytes ?? 1024 * 1024, encoding: 'utf-8' });
  app.use(async function readBody(ctx, next) {
    // Only for a request a route takes: a wrong method or path is the router's 405 or 404 (with Allow), which a
    // body check before it turned into 415 or 400 (a `PUT /orders` with text), and a wrong-method JSON body was
    // parsed for nothing. Node discards the unread body after the answer.
    if (!options.router.match(ctx.path, ctx.method).route) return next();
    // The parser skips a body it does not read (text, a form, one without a Content-Type), which a route then
    // saw as no body: a 400 about missing fields the client did send. An empty body (`Content-Length: 0`) is none.
    const hasBody = (ctx.request.length ?? 0) > 0 || ctx.req.headers['transfer-encoding'] !== undefined;
    if (hasBody && BODY_METHODS.has(ctx.method) && ctx.request.is(JSON_BODY_TYPES) === false) {
      throw new ServiceError(415, 'unsupported_media_type', `The body must be JSON (Content-Type: application/json), not ${ctx.request.type || 'untyped'}.`);
    }
    // JSON is UTF-8 (RFC 8259 8.1) and the parser reads every body as UTF-8: a Latin-1 or UTF-16 body it was told
    // about was read as other text than the client sent (each byte that is not UTF-8 a U+FFFD), and stored (readsAsUtf8).
    if (hasBody && BODY_METHODS.has(ctx.method) && !readsAsUtf8(ctx.request.charset)) {
      throw new ServiceError(415, 'unsupported_media_type', 'The body must be UTF-8 JSON (no other charset).');
    }
    try {
      await parseBody(ctx, async () => {});
    } catch (error) {
      // The parser's own refusals carry a 4xx status (413, 415, 400 for bad JSON). Bad JSON's message is V8's, which
      // quotes the body around the error (a password among it): one fixed detail instead, as the gateway answers.
      // A body whose gzip, deflate or br encoding is corrupt fails in zlib with none, which would read as a 500.
      const status = (error as { status?: unknown }).status;
      // The parser refuses a `__proto__` key (prototype pollution) with a SyntaxError of its own: valid JSON, told so.
      if (error instanceof SyntaxError && error.message === RESERVED_KEY_REFUSAL) throw new ServiceError(400, 'invalid_body', 'The body names a reserved key (__proto__).');
      // Valid JSON, but a bare value (`null`, `5`, `"x"`): the parser takes objects and arrays only, and said it was not JSON.
      if (error instanceof SyntaxError && error.message === NOT_OBJECT_OR_ARRAY) throw new ServiceError(400, 'invalid_body', 'The body must be a JSON object.');
      if (error instanceof SyntaxError) throw new ServiceError(400, 'invalid_body', 'The body is not valid JSON.');
      if (typeof status === 'number') throw error;
      throw new ServiceError(400, 'bad_request', 'The body could not be decoded (its Content-Encoding does not match its bytes).');
    }
    // JSON.parse keeps the last of two equal keys: a WAF or an audit log in front that reads the first saw another
    // body than the one stored (`"quantity":-5,"quantity":2`). One that could be read two ways is refused.
    // Checked for depth first: JSON.parse takes nesting a recursive scan does not survive (a 1 MiB body of `[`).
    if (!nestedAtMost(ctx.request.body, MAX_BODY_DEPTH)) throw new ServiceError(400, 'invalid_body', `The body is nested deeper than ${MAX_BODY_DEPTH} levels.`);
    const raw = (ctx.request as { rawBody?: unknown }).rawBody;
    if (typeof raw === 'string' && raw !== '' && duplicateJsonKey(raw) !== undefined) throw new ServiceError(400, 'invalid_body', 'The body names a key twice in one object.');
    return next();
  });
  app.use(options.router.routes());
  app.use(options.router.allowedMethods());
  // What Koa could not answer itself (a client that hung up mid-body, a socket error) goes to the service's
  // JSON log, not to Koa's default console.error.
  app.on('error', (error: Error & { code?: string }) => logger.warn('request stream failed', { error: error.message, code: error.code }));
  return app;
}

/** @hapi/bourne's refusal (under @koa/bodyparser) of a body naming `__proto__`. */
const RESERVED_KEY_REFUSAL = 'Object contains forbidden prototype property';

/** co-body's refusal (under @koa/bodyparser, strict) of a body that is JSON but neither an object nor an array. */
const NOT_OBJECT_OR_ARRAY = 'invalid JSON, only supports object and array';

/**
 * Calls another service with a deadline, passing the request id and the caller's identity on, signed for this
 * call to that service (`audience`, its name in the gateway's `services`) when the service holds the key (`sign`), and with `propagate` the active context's `traceparent`,
 * `tracestate` and `baggage` (only without the undici instrumentation: it writes them itself, and a call would
 * then carry two of each). Through undici's request API, as the gateway's proxy: fetch refuses the Fetch standard's
 * "bad ports" (6000, 6665-6669, 10080, ...), on which the gateway reaches a service fine. The caller reads or dumps the body.
 */
export async function callService(url: string, init: { method?: string; body?: unknown; requestId?: string; identity: SignedValues; sign: GatewaySigner | undefined; audience: string; propagate?: boolean; timeoutMs?: number }): Promise<Dispatcher.ResponseData> {
  const method = init.method ?? 'GET';
  // The target as undici sends it: the URL's path and query.
  const { pathname, search } = new URL(url);
  const headers = signedIdentityHeaders(init.identity, { audience: init.audience, method, target: pathname + search, requestId: init.requestId ?? '' }, init.sign);
  if (init.body !== undefined) headers['content-type'] = 'application/json';
  if (init.requestId) headers[HEADER.requestId] = init.requestId;
  if (init.propagate) propagation.inject(context.active(), headers);
  return request(url, {
    method,
    headers,
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
    signal: AbortSignal.timeout(init.timeoutMs ?? 3000),
  });
}
