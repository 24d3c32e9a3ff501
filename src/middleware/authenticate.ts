import type { Middleware } from 'koa';
import { HEADER } from '../../otel/wire-names';
import { GatewayError } from '../errors';
import { TokenRejectedError, TokenVerifierUnavailableError, type TokenService } from '../tokens';

export interface AuthenticateOptions {
  tokens: TokenService;
  /** `realm` of the `WWW-Authenticate` challenge. Default `koa-gateway`. */
  realm?: string;
}

/**
 * Compact JWS: three base64url parts. Anything else is refused before any crypto runs. The scheme name is
 * case-insensitive (RFC 9110 section 11.1).
 */
const BEARER = /^[Bb][Ee][Aa][Rr][Ee][Rr] ([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*)$/;

/**
 * Verifies the bearer token on routes that require one and records the caller in `ctx.state.user`; the proxy
 * turns it into the identity headers services trust (src/upstream-headers.ts). Public routes pass through
 * untouched (forged identity headers never reach a service on any route).
 * Challenges follow RFC 6750 section 3: no error code when the token is missing, `invalid_token` otherwise.
 */
export function createAuthenticate(options: AuthenticateOptions): Middleware {
  const realm = options.realm ?? 'koa-gateway';
  const challenge = (description?: string) => ({
    'WWW-Authenticate': description === undefined ? `Bearer realm="${realm}"` : `Bearer realm="${realm}", error="invalid_token", error_description="${description}"`,
  });

  return async function authenticate(ctx, next) {
    if (ctx.state.route?.auth !== 'required') return next();

    const header = ctx.req.headers[HEADER.authorization];
    if (header === undefined || header === '') {
      throw new GatewayError('missing_token', 'This route needs an Authorization: Bearer token.', { headers: challenge() });
    }
    const match = BEARER.exec(header);
    if (!match) {
      throw new GatewayError('invalid_token', 'The Authorization header must be "Bearer <JWT>".', { headers: challenge('malformed authorization header') });
    }
    let user;
    try {
      user = await options.tokens.verify(match[1]!);
    } catch (error) {
      if (error instanceof TokenVerifierUnavailableError) {
        // Fail closed, but not as the caller's fault: a 401 would make clients throw away a good token.
        throw new GatewayError('auth_unavailable', 'Tokens of the identity provider cannot be verified right now; try again shortly.', { cause: error, headers: { 'Retry-After': '5' } });
      }
      if (!(error instanceof TokenRejectedError)) throw error;
      throw new GatewayError('invalid_token', error.message, { headers: challenge(error.reason.replaceAll('_', ' ')), cause: error });
    }

    ctx.state.user = user;
    await next();
  };
}
