import type { Middleware } from 'koa';
import { trace } from '@opentelemetry/api';
import { fieldLineCount } from '../../otel/lifecycle';
import { ATTR, AUTH_REALM, HEADER } from '../../otel/wire-names';
import type { AuthMethod } from '../config';
import type { ConsumerRegistry } from '../consumers';
import { GatewayError } from '../errors';
import { TokenRejectedError, TokenVerifierUnavailableError, type TokenService } from '../tokens';

export interface AuthenticateOptions {
  tokens: TokenService;
  /** API-key consumers (src/consumers.ts); absent when none are declared, and API keys are then refused. */
  consumers?: ConsumerRegistry;
  /** `realm` of the `WWW-Authenticate` challenge. Default DEFAULT_REALM. */
  realm?: string;
}

/** `realm` of the gateway's `WWW-Authenticate` challenges. */
export const DEFAULT_REALM = AUTH_REALM;

/** Which credential failed, and why, for the challenge's `error_description`. */
export interface CredentialFailure {
  method: AuthMethod;
  description: string;
}

/**
 * The `WWW-Authenticate` header of a 401, which must carry at least one challenge (RFC 9110 11.6.1): one per
 * credential `methods` takes, following RFC 6750 section 3: no error code when the credential is missing,
 * `invalid_token` (or `invalid_key`) for the one that `failed`.
 */
export function authenticationChallenge(realm: string, methods: Iterable<AuthMethod>, failed?: CredentialFailure): Record<string, string> {
  const accepted = new Set(methods);
  const challenges: string[] = [];
  if (accepted.has('jwt')) {
    challenges.push(failed?.method === 'jwt' ? `Bearer realm="${realm}", error="invalid_token", error_description="${failed.description}"` : `Bearer realm="${realm}"`);
  }
  if (accepted.has('apiKey')) {
    challenges.push(failed?.method === 'apiKey' ? `ApiKey realm="${realm}", error="invalid_key", error_description="${failed.description}"` : `ApiKey realm="${realm}"`);
  }
  return { 'WWW-Authenticate': challenges.join(', ') };
}

/**
 * Compact JWS: three base64url parts. Anything else is refused before any crypto runs. The token's characters
 * exclude the space, so the match never backtracks.
 */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/** `bearer`, lower case, as char codes: the scheme name is case-insensitive (RFC 9110 section 11.1). */
const BEARER_SCHEME = [...'bearer'].map((letter) => letter.charCodeAt(0));

/**
 * What follows `Bearer` and one or more spaces, only spaces (`1*SP`: RFC 9110 section 11.4, RFC 6750 section
 * 2.1; a tab there is refused), or undefined when nothing does, of a header that starts with the scheme
 * (startsWithBearer). Its shape is checked apart (COMPACT_JWS), and only for a token not verified before: the
 * regular expression over a whole token was ~4k instructions of every authenticated request, a token the cache
 * remembers passed it when it was verified.
 */
function bearerCredential(header: string): string | undefined {
  const { length } = BEARER_SCHEME;
  let start = length;
  while (header.charCodeAt(start) === 0x20) start++;
  return start === length ? undefined : header.slice(start);
}

/** Whether the header starts with `Bearer`, in any case: a credential of that scheme, if perhaps a malformed one. */
function startsWithBearer(header: string): boolean {
  // `| 0x20` lower-cases an ASCII letter, and maps nothing else onto one.
  for (let index = 0; index < BEARER_SCHEME.length; index++) if ((header.charCodeAt(index) | 0x20) !== BEARER_SCHEME[index]) return false;
  return true;
}

/**
 * `Authorization: ApiKey <key>`, the scheme in any case and `1*SP` after it, as for Bearer; the key's own shape
 * is the registry's to judge.
 */
const API_KEY_SCHEME = /^apikey(?: +(.*))?$/is;

/**
 * Verifies the credential on routes that require one, by the methods the route accepts: a bearer token
 * (caller in `ctx.state.user`) or an API key in `X-API-Key` / `Authorization: ApiKey` (caller in
 * `ctx.state.consumer`). The proxy turns either into the identity headers services trust
 * (src/upstream-headers.ts). Public routes pass through untouched (forged identity headers never reach a
 * service on any route).
 */
export function createAuthenticate(options: AuthenticateOptions): Middleware {
  const realm = options.realm ?? DEFAULT_REALM;
  const { consumers } = options;
  // API keys are challenged for only where they can be checked.
  const challenge = (methods: ReadonlySet<AuthMethod>, failed?: CredentialFailure) =>
    authenticationChallenge(realm, consumers ? methods : [...methods].filter((method) => method !== 'apiKey'), failed);

  return async function authenticate(ctx, next) {
    const route = ctx.state.route;
    if (route?.auth !== 'required') return next();
    const methods = route.authMethods;

    const header = ctx.req.headers[HEADER.authorization];
    const apiKeyHeader = ctx.req.headers[HEADER.apiKey];
    const hasAuthorization = header !== undefined && header !== '';
    const hasApiKeyHeader = apiKeyHeader !== undefined && apiKeyHeader !== '';
    // Node keeps the first of several Authorization lines (a single-value field, RFC 9110 11.6.2) and drops the
    // rest: the gateway judged one credential while a proxy in front, or a log, went by another. Counted whenever
    // the field is there: an empty first line made it look absent, and the X-API-Key beside a bearer token in the
    // second passed both this check and the one below.
    if (header !== undefined && fieldLineCount(ctx.req.rawHeaders, HEADER.authorization) > 1) {
      throw new GatewayError('bad_request', 'Send one Authorization header field, not several.');
    }
    if (hasAuthorization && hasApiKeyHeader) {
      // Two credentials: which one the gateway checked and which one a service reads must never differ.
      throw new GatewayError('bad_request', 'Send one credential: an X-API-Key or an Authorization header, not both.');
    }
    const schemeMatch = hasAuthorization ? API_KEY_SCHEME.exec(header) : null;
    if (hasApiKeyHeader || schemeMatch) {
      if (!methods.has('apiKey') || !consumers) {
        throw new GatewayError('missing_token', 'This route does not accept API keys; it needs an Authorization: Bearer token.', { headers: challenge(methods) });
      }
      // Node joins a repeated X-API-Key with ", ", which no key matches.
      const key = hasApiKeyHeader ? (Array.isArray(apiKeyHeader) ? apiKeyHeader.join(', ') : apiKeyHeader) : (schemeMatch![1] ?? '');
      const verdict = consumers.verify(key);
      if (!verdict.ok) {
        // The client hears one answer for every refusal; operators see which one it was.
        trace.getActiveSpan()?.setAttribute(ATTR.apiKeyRejection, verdict.reason);
        throw new GatewayError('invalid_api_key', 'The API key is not valid.', { headers: challenge(methods, { method: 'apiKey', description: 'invalid key' }) });
      }
      ctx.state.consumer = verdict.consumer;
      return next();
    }
    if (!methods.has('jwt')) {
      throw new GatewayError('missing_token', 'This route needs an API key (X-API-Key or Authorization: ApiKey <key>).', { headers: challenge(methods) });
    }
    // Another scheme (`Basic`, `Digest`, ...) is no token at all: RFC 6750 3.1 counts a request that tried an unsupported
    // method as lacking authentication, whose challenge SHOULD NOT carry an error code (error="invalid_token" would
    // tell the client its bearer token is bad, and send it to refresh one it never sent).
    if (!hasAuthorization || !startsWithBearer(header)) {
      throw new GatewayError('missing_token', `This route needs an Authorization: Bearer token${methods.has('apiKey') && consumers ? ' or an API key' : ''}.`, { headers: challenge(methods) });
    }
    const token = bearerCredential(header);
    if (token === undefined || (!options.tokens.remembers(token) && !COMPACT_JWS.test(token))) {
      throw new GatewayError('invalid_token', 'The Authorization header must be "Bearer <JWT>".', { headers: challenge(methods, { method: 'jwt', description: 'malformed authorization header' }) });
    }
    let user;
    try {
      user = await options.tokens.verify(token);
    } catch (error) {
      if (error instanceof TokenVerifierUnavailableError) {
        // Fail closed, but not as the caller's fault: a 401 would make clients throw away a good token.
        throw new GatewayError('auth_unavailable', 'Tokens of the identity provider cannot be verified right now; try again shortly.', { cause: error, headers: { 'Retry-After': '5' } });
      }
      if (!(error instanceof TokenRejectedError)) throw error;
      throw new GatewayError('invalid_token', error.message, { headers: challenge(methods, { method: 'jwt', description: error.reason.replaceAll('_', ' ') }), cause: error });
    }

    ctx.state.user = user;
    await next();
  };
}
