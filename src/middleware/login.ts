import { createHmac, hkdfSync } from 'node:crypto';
import { bodyParser } from '@koa/bodyparser';
import { context, type Tracer } from '@opentelemetry/api';
import type { Context, Middleware } from 'koa';
import { request, type Dispatcher } from 'undici';
import type { Logger } from '../../otel/logger';
import { CREDENTIAL_LIMITS, HEADER, LOG_FIELD, SIGNATURE_AUDIENCE, SIGNATURE_REFUSED_CODE } from '../../otel/wire-names';
import type { AuthenticatedUser } from '../context';
import { DEFAULT_RETRY_AFTER_SECONDS, GatewayError, invalidJsonBody, isGatewayError, toGatewayError, upstreamFailure, type ErrorCode } from '../errors';
import type { TokenService } from '../tokens';
import type { UpstreamPool } from '../upstream-pool';
import { endUpstreamSpan, startUpstreamSpan, traceHeaders } from '../upstream-span';
import { authenticationChallenge, DEFAULT_REALM } from './authenticate';
import { refuseAtOnce, type RateLimiter, type Refuse } from './rate-limit';
import { continueIfExpected } from './request-head';
import { readWithinRate, type BodyRate } from '../body-rate';
import { jsonAtMost } from '../bounded-body';
import { SIGNATURE_REFUSED_HINT, type GatewaySigner } from '../gateway-signature';
import { nestedAtMost } from '../json-depth';
import { duplicateJsonKey } from '../json-duplicate-keys';
import { isIntactCredential, readsAsUtf8 } from '../unicode-text';
import { routeKey } from '../routes';

/** Where user-service checks credentials. Outside `/users`, so no public route can reach it. */
export const CREDENTIALS_CHECK_PATH = '/internal/credentials/verify';


export interface LoginOptions {
  tokens: TokenService;
  /** user-service's instances. */
  users: UpstreamPool;
  /** Largest accepted body, bytes. */
  bodyLimitBytes: number;
  /** How long user-service may take to check credentials, ms. Default 5000. */
  timeoutMs?: number;
  /** Makes the CLIENT span of the credential check. */
  tracer: Tracer;
  /** Login attempts per client (network), counted before the body is even read. */
  clientLimit: RateLimiter;
  /** Login attempts per account (`accountKey` of the submitted email), counted once the body is valid. */
  accountLimit: RateLimiter;
  /** The per-account limit's key for an email (createAccountKey): the store never holds the address. */
  accountKey: (email: string) => string;
  /** For refusals of the credential check that are not a wrong password (warn: the client's fault, not ours). */
  logger: Logger;
  /** The body's least rate (config `server`), as on proxied routes: a login body dripped in gets 408. */
  bodyRate: BodyRate;
  /** Signs the credential check for user-service (config `proxy.signingKey`); none without a key. */
  sign?: GatewaySigner;
}

interface Credentials {
  email: string;
  password: string;
}

/** Deepest nesting of a login body read further: its fields are two strings. */
const MAX_LOGIN_BODY_DEPTH = 8;

function readCredentials(body: unknown): Credentials {
  const { email, password } = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>;
  if (typeof email !== 'string' || email === '' || typeof password !== 'string' || password === '') {
    throw new GatewayError('invalid_body', 'Send a JSON object with string fields "email" and "password".');
  }
  // The values themselves are never echoed: the password is a secret, and either could be a log-injection payload.
  if (email.length > CREDENTIAL_LIMITS.emailMaxLength) throw new GatewayError('invalid_body', `"email" must be at most ${CREDENTIAL_LIMITS.emailMaxLength} characters.`);
  if (password.length > CREDENTIAL_LIMITS.passwordMaxLength) throw new GatewayError('invalid_body', `"password" must be at most ${CREDENTIAL_LIMITS.passwordMaxLength} characters.`);
  // Hashed as UTF-8, an unpaired surrogate is U+FFFD, and so is each byte of the body that was not UTF-8: many strings
  // would be one password (user-service refuses them too).
  if (!isIntactCredential(email) || !isIntactCredential(password)) throw new GatewayError('invalid_body', '"email" and "password" must be UTF-8 text (no unpaired surrogates, no bytes that are not UTF-8).');
  return { email, password };
}

/** HKDF `info` of the per-account key's HMAC key: the JWT secret's bytes are never used as they are (RFC 8725 3.5). */
const ACCOUNT_KEY_INFO = 'koa-gateway login account key';

/**
 * The per-account limit's store key for an email: trimmed and lower-cased (user-service folds case too, so every
 * spelling it takes for one account is one key), then an HMAC-SHA256 under a key derived from `secret` (the JWT
 * secret, which every worker and replica sharing the store holds). A plain SHA-256 of an address is no secret: anyone
 * reading the store (a shared Redis) could hash a list of addresses and see which of them tried to log in.
 */
export function createAccountKey(secret: string): (email: string) => string {
  const key = Buffer.from(hkdfSync('sha256', secret, '', ACCOUNT_KEY_INFO, 32));
  return (email) => createHmac('sha256', key).update(email.trim().toLowerCase()).digest('hex');
}

/**
 * A 4xx from the credential check is about this request, so the client gets a 4xx, never a 502 (that would
 * page someone for a typo). Statuses not listed become `bad_request`, except 404 and 405: the check's fixed
 * internal path missing means a broken deployment (no one can log in), which is the gateway's 502.
 */
const REFUSALS: Partial<Record<number, { code: ErrorCode; detail: string }>> = {
  400: { code: 'invalid_body', detail: 'The email or password is not acceptable.' },
  401: { code: 'invalid_credentials', detail: 'The email or password is wrong.' },
  403: { code: 'forbidden', detail: 'This account may not log in.' },
  413: { code: 'payload_too_large', detail: 'The login request is too large.' },
  415: { code: 'unsupported_media_type', detail: 'The login request has the wrong media type.' },
  422: { code: 'invalid_body', detail: 'The email or password is not acceptable.' },
  429: { code: 'rate_limited', detail: 'Too many login attempts; try again later.' },
};

/**
 * A failed login's challenge: a 401 must carry one (RFC 9110 11.6.1), and some clients refuse a 401 without it.
 * It names the credential the login issues, as the gateway's other 401s do.
 */
const LOGIN_CHALLENGE = authenticationChallenge(DEFAULT_REALM, ['jwt']);

/** Content codings the body parser decodes (`inflation`), lower case; `identity` is no coding. */
const DECODED_CODINGS = new Set(['identity', 'gzip', 'deflate', 'br']);

/**
 * The one content coding a `Content-Encoding` list applies, lower case: `identity` entries are no coding
 * (RFC 9110 8.4.1) and drop out (`gzip, identity` is gzip; none left, or an empty header, is identity).
 * Undefined when more than one remains: codings applied one after another, which the parser does not undo.
 */
function appliedCoding(header: string): string | undefined {
  let applied: string | undefined;
  for (const entry of header.split(',')) {
    const coding = entry.trim().toLowerCase();
    if (coding === '' || coding === 'identity') continue;
    if (applied !== undefined) return undefined;
    applied = coding;
  }
  return applied ?? 'identity';
}

/** `Accept-Encoding` of a 415 for another coding: the codings a login body may come in (RFC 9110 12.5.3). */
const ACCEPTED_CODINGS = 'gzip, deflate, br';

/** Statuses of the credential check that say its endpoint is missing, not that the request was wrong. */
const CHECK_MISSING = new Set([404, 405]);

/** Largest answer of the credential check read (a user, or a problem with its code): a few hundred bytes in fact. */
export const MAX_CREDENTIAL_CHECK_ANSWER_BYTES = 64 * 1024;

/**
 * The credential check's answer as JSON, undefined when it is not JSON, is longer than any user-service answer
 * (a user, or a problem) or does not arrive whole: read whole with `body.json()`, an answer of hundreds of MB was held in memory for as
 * long as the check's timeout let the service send.
 */
function credentialCheckAnswer(body: Dispatcher.ResponseData['body']): Promise<unknown> {
  return jsonAtMost(body, MAX_CREDENTIAL_CHECK_ANSWER_BYTES).catch(() => undefined);
}

/** `upstreamCode`: the `code` of the check's problem body, when it had one. */
function refusal(response: Dispatcher.ResponseData, upstreamCode: string | undefined): GatewayError {
  if (CHECK_MISSING.has(response.statusCode)) {
    return new GatewayError('upstream_bad_response', `The users service answered the credential check with ${response.statusCode}.`, { cause: new Error('is it a version without the check?') });
  }
  // A 401 is a wrong password unless it refused the gateway's signature (the gateway's and the service's signing
  // keys, or clocks, apart): read as one, every login was "wrong password", nothing logged, each attempt spending the
  // account's limit, until real users were locked out at 429.
  if (response.statusCode === 401 && upstreamCode === SIGNATURE_REFUSED_CODE) {
    // The hint is the operator's (logged); the client is told only that the check failed.
    return new GatewayError('upstream_bad_response', "The users service could not check the credentials.", { cause: new Error(`the users service refused the gateway's credential check itself (401 ${upstreamCode}): ${SIGNATURE_REFUSED_HINT}`) });
  }
  const { code, detail } = REFUSALS[response.statusCode] ?? { code: 'bad_request' as const, detail: 'The login request was refused.' };
  if (code === 'invalid_credentials') return new GatewayError(code, detail, { headers: LOGIN_CHALLENGE });
  if (code !== 'rate_limited') return new GatewayError(code, detail);
  // Every 429 says when to come back; user-service's own delay when it gave one in seconds.
  const given = response.headers[HEADER.retryAfter];
  const retryAfter = typeof given === 'string' ? given : '';
  return new GatewayError(code, detail, { headers: { 'Retry-After': /^\d{1,6}$/.test(retryAfter) ? retryAfter : String(DEFAULT_RETRY_AFTER_SECONDS) } });
}

function isUser(value: unknown): value is AuthenticatedUser {
  const user = value as Partial<AuthenticatedUser> | null;
  return typeof user?.id === 'string' && typeof user.email === 'string' && typeof user.role === 'string';
}

/**
 * `POST /api/auth/login`, answered by the gateway: user-service checks the credentials, the gateway issues
 * the token. The body is parsed here only; proxied routes must never have their body consumed. Returns the
 * steps in order: client limit, media type, body, validation, account limit, credential check.
 */
export function createLogin(options: LoginOptions): Middleware[] {
  const timeoutMs = options.timeoutMs ?? 5000;
  const parseJson = bodyParser({ enableTypes: ['json'], jsonLimit: options.bodyLimitBytes, encoding: 'utf-8' });
  /** The 413's detail, for a declared length and a decoded body alike. */
  const tooLarge = `The login body is larger than ${options.bodyLimitBytes} bytes.`;
  // Handed from validation to the steps after it without widening the typed ctx.state.
  const credentialsOf = new WeakMap<Context, Credentials>();

  async function limitLoginClient(ctx: Context, next: () => Promise<void>) {
    await options.clientLimit.check(ctx, next);
  }

  async function requireJson(ctx: Context, next: () => Promise<void>) {
    // First, before the media type's 415s: a declared length over the limit is refused whatever the body is, and the
    // connection closes. Not read, the body cannot stay on it (as after the proxy's 413): kept alive, Node read and
    // dropped every declared byte, 15 GiB in 10 s of a 100 GB Content-Length on loopback, at the client's pace. A coded
    // body's declared length is the coded one, and the parser bounds only what it decodes: a coded one over the limit
    // was invited (100 Continue) and read whole, however long (gzip's empty stored blocks decode to nothing). Coding
    // adds a few bytes per 64 KiB to what it codes: no honest login body is over the limit coded.
    const declared = ctx.get('content-length');
    if (Number(declared) > options.bodyLimitBytes) throw new GatewayError('payload_too_large', tooLarge, { headers: { Connection: 'close' } });
    if (!ctx.is('application/json')) throw new GatewayError('unsupported_media_type', 'Login expects Content-Type: application/json.');
    // JSON is UTF-8 (RFC 8259 8.1): the parser would read a UTF-16 body as UTF-8 and see other credentials.
    if (!readsAsUtf8(ctx.request.charset)) throw new GatewayError('unsupported_media_type', 'Login expects a UTF-8 JSON body.');
    // What the head alone decides is decided before the body is invited: the parser refused a coding it cannot
    // decode (415) or a declared length over the limit (413) only after 100 Continue had asked the client to send it.
    const coding = appliedCoding(ctx.get('content-encoding'));
    if (coding === undefined || !DECODED_CODINGS.has(coding)) {
      throw new GatewayError('unsupported_media_type', 'The login body is in a content coding the gateway cannot decode.', { headers: { 'Accept-Encoding': ACCEPTED_CODINGS } });
    }
    // Coding names are case-insensitive (RFC 9110 8.4.1), the parser's match is not: it refused `GZIP`, and
    // `Identity` too, and any list; so the one coding applied is written alone, in lower case.
    if (ctx.req.headers['content-encoding'] !== undefined) ctx.req.headers['content-encoding'] = coding;
    // Without a declared length nothing bounds a coded body's bytes (chunked, or HTTP/2 without the field): 5-byte
    // empty deflate blocks decode to nothing, and 2.3 GB was read and inflated in 8 s against a 16 KiB limit until
    // the request timeout. RFC 9110 15.5.12: the length is required. Not read, the body cannot stay on the connection.
    if (declared === '' && coding !== 'identity') {
      throw new GatewayError('length_required', 'A content-coded login body must declare its Content-Length.', { headers: { Connection: 'close' } });
    }
    // The body is read next: a client waiting for 100 Continue may send it now.
    continueIfExpected(ctx);
    await next();
  }

  async function validateCredentials(ctx: Context, next: () => Promise<void>) {
    // JSON.parse keeps the last of two equal keys: `{"email":"alice@...","email":"bob@...",...}` logged in as Bob
    // while anything in front that read the first saw Alice. A body that could be read two ways is refused.
    // Depth first: the duplicate-key scan recurses, and JSON.parse takes nesting it would not survive.
    if (!nestedAtMost(ctx.request.body, MAX_LOGIN_BODY_DEPTH)) throw new GatewayError('invalid_body', 'Send a JSON object with string fields "email" and "password".');
    const raw = (ctx.request as { rawBody?: unknown }).rawBody;
    if (typeof raw === 'string' && duplicateJsonKey(raw) !== undefined) throw new GatewayError('invalid_body', 'The login body names a key twice in one object.');
    credentialsOf.set(ctx, readCredentials(ctx.request.body));
    await next();
  }

  // After validation, so a malformed body costs the account nothing; before the check, so a limited
  // account costs user-service nothing. Counted for every attempt, right or wrong, from any client.
  async function limitLoginAccount(ctx: Context, next: () => Promise<void>) {
    await options.accountLimit.check(ctx, next, options.accountKey(credentialsOf.get(ctx)!.email));
  }

  async function login(ctx: Context) {
    const credentials = credentialsOf.get(ctx)!;
    const instance = options.users.pick();
    if (!instance) throw new GatewayError('upstream_unavailable', 'No healthy instance of the users service.');
    const checkUrl = instance.origin + CREDENTIALS_CHECK_PATH;
    const span = startUpstreamSpan(options.tracer, { method: 'POST', instance, target: CREDENTIALS_CHECK_PATH, service: 'users' });
    let response: Dispatcher.ResponseData;
    try {
      // undici's request API, as the proxy's: fetch refuses the Fetch standard's "bad ports" (6000, 6665-6669,
      // 10080, ...), which the proxy reaches, so a user-service on one failed every login (as a reset).
      response = await request(checkUrl, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          [HEADER.requestId]: ctx.state.requestId,
          ...traceHeaders(span, context.active()),
          // No one is signed in yet: the signature says only that the gateway asks (user-service, config `services.users`).
          ...(options.sign && { [HEADER.gatewaySignature]: options.sign({ audience: SIGNATURE_AUDIENCE.users, method: 'POST', target: CREDENTIALS_CHECK_PATH, requestId: ctx.state.requestId }, ['', '', '', '']) }),
        },
        body: JSON.stringify(credentials),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (error) {
      const failure = upstreamFailure('users', error);
      const outcome = failure.code === 'upstream_timeout' ? 'timeout' : failure.code === 'upstream_refused' ? 'refused' : 'reset';
      endUpstreamSpan(span, outcome, undefined, error);
      options.users.reportFailure(instance, outcome);
      throw failure;
    }
    const { statusCode: status, body } = response;
    endUpstreamSpan(span, 'ok', status);
    options.users.reportSuccess(instance);
    if (status >= 400 && status < 500) {
      const problem = (await credentialCheckAnswer(body)) as { code?: unknown } | null | undefined;
      const upstreamCode = typeof problem?.code === 'string' ? problem.code.slice(0, 64) : undefined;
      const refused = refusal(response, upstreamCode);
      // A wrong password is routine (the access log has it); any other refusal means the gateway passed
      // something user-service would not take, worth a look but not an error of ours.
      if (refused.code !== 'invalid_credentials') options.logger.warn('credential check refused the login', { status, upstream_code: upstreamCode, code: refused.code, [LOG_FIELD.requestId]: ctx.state.requestId });
      throw refused;
    }
    // Read once: a body json() has consumed is not dumped too.
    const user: unknown = status >= 200 && status < 300 ? await credentialCheckAnswer(body) : await body.dump();
    if (!isUser(user)) {
      throw new GatewayError('upstream_bad_response', `The users service answered the credential check with ${status}.`);
    }
    ctx.state.user = user;
    const { token, expiresIn } = await options.tokens.issue(user);
    ctx.set('Cache-Control', 'no-store');
    ctx.body = { token, tokenType: 'Bearer', expiresIn, user: { id: user.id, email: user.email, role: user.role } };
  }

  async function readBody(ctx: Context, next: () => Promise<void>) {
    try {
      await readWithinRate(ctx.req, options.bodyRate, () => parseJson(ctx, async () => {}));
    } catch (error) {
      // Bad JSON is a SyntaxError (with status 400) whose message quotes the body, password included.
      if (error instanceof SyntaxError) throw invalidJsonBody(error);
      if (isGatewayError(error)) throw error;
      // The parser's other refusals carry a 4xx status (413, 415). A body whose gzip, deflate or br encoding is
      // corrupt fails in zlib with none, which would read as the gateway's own 500. Either way the parser stopped
      // reading: the connection closes after the answer (RFC 9112 9.6), as after the proxy's 413. Kept alive, nothing
      // read the rest of the body, and a request behind it on the connection waited unanswered until the idle timeout.
      const refused = typeof (error as { status?: unknown }).status === 'number' ? toGatewayError(error) : new GatewayError('bad_request', 'The login body could not be decoded (its Content-Encoding does not match its bytes).');
      // A coded body that decodes past the limit: the parser's own words ("request entity too large") said less than
      // the declared-length refusal above does.
      const detail = refused.code === 'payload_too_large' ? tooLarge : refused.message;
      throw new GatewayError(refused.code, detail, { cause: error, headers: { ...refused.headers, Connection: 'close' } });
    }
    await next();
  }

  return [limitLoginClient, requireJson, readBody, validateCredentials, limitLoginAccount, login];
}

/**
 * Where login answers: its path matched as the route table matches one (routeKey: any letter case, a trailing
 * slash, encoded letters), so `/API/auth/login/` is the login as `/API/users/` is the users route, not a 404.
 * POST runs `steps` (createLogin's); any other method is 405 with `Allow: POST`, once it spent the rate limit
 * (`refuse`: gateway.ts, createRefusalRateLimit). `ctx.routerPath` (the spans' and
 * metrics' `http.route`) is the configured path, whatever the spelling.
 */
export function createLoginEndpoint(path: string, steps: readonly Middleware[], refuse: Refuse = refuseAtOnce): Middleware {
  const key = routeKey(path);
  // Not async: a request for another path costs a length check (routeKey only for a spelling that could be this one).
  return function answerLogin(ctx, next) {
    const requested = ctx.path;
    const couldBeLogin = requested.length === key.length || requested.length === key.length + 1 || requested.includes('%');
    if (!couldBeLogin || routeKey(requested) !== key) return next();
    ctx.routerPath = path;
    // Another method's 405 spends the rate limit as a route's or a probe's does: thrown at once, it was never limited.
    if (ctx.method !== 'POST') return refuse(ctx, new GatewayError('method_not_allowed', 'Login accepts POST only.', { headers: { Allow: 'POST' } }));
    // The login answers: nothing after it runs, as nothing after a router's matched route did.
    const step = async (index: number): Promise<void> => {
      if (index < steps.length) await steps[index]!(ctx, () => step(index + 1));
    };
    return step(0);
  };
}
