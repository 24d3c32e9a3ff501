import { webcrypto } from 'node:crypto';
import { SignJWT, jwtVerify, type JWTPayload } from 'jose';
import type { AuthenticatedUser } from './context';

/** The only algorithm the gateway's own tokens use; verification accepts nothing else (no `none`). */
export const TOKEN_ALGORITHM = 'HS256';

export interface TokenServiceOptions {
  secret: string;
  issuer: string;
  audience: string;
  /** Lifetime of issued tokens, s. */
  tokenTtlSeconds: number;
  /** Accepted clock skew, s. */
  clockToleranceSeconds: number;
}

export interface IssuedToken {
  token: string;
  expiresIn: number;
}

/** Why a presented token was refused; jose's error code decides it, never its message text. */
export type TokenRejection = 'expired' | 'bad_signature' | 'bad_claims' | 'malformed' | 'algorithm_not_allowed';

export class TokenRejectedError extends Error {
  override name = 'TokenRejectedError';
  constructor(
    readonly reason: TokenRejection,
    message: string,
  ) {
    super(message);
  }
}

const REJECTION_BY_JOSE_CODE: Record<string, TokenRejection> = {
  ERR_JWT_EXPIRED: 'expired',
  ERR_JWS_SIGNATURE_VERIFICATION_FAILED: 'bad_signature',
  ERR_JWT_CLAIM_VALIDATION_FAILED: 'bad_claims',
  ERR_JOSE_ALG_NOT_ALLOWED: 'algorithm_not_allowed',
  ERR_JOSE_NOT_SUPPORTED: 'algorithm_not_allowed',
};

const REJECTION_MESSAGE: Record<TokenRejection, string> = {
  expired: 'The token has expired.',
  bad_signature: 'The token signature is not valid.',
  bad_claims: 'The token was not issued for this gateway (issuer, audience or time claims).',
  malformed: 'The token is malformed.',
  algorithm_not_allowed: `The token algorithm is not allowed (only ${TOKEN_ALGORITHM}).`,
};

export interface TokenService {
  issue(user: AuthenticatedUser): Promise<IssuedToken>;
  /** Resolves with the caller, or rejects with a TokenRejectedError. */
  verify(token: string): Promise<AuthenticatedUser>;
}

/**
 * Issues and verifies the gateway's HS256 tokens. The HMAC key is imported once as a CryptoKey: jose would
 * otherwise re-import a raw secret on every call (about 1.7x slower, see ../shared/NOTES.md).
 */
export function createTokenService(options: TokenServiceOptions): TokenService {
  const key = webcrypto.subtle.importKey('raw', new TextEncoder().encode(options.secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify']);
  const verifyOptions = {
    algorithms: [TOKEN_ALGORITHM],
    issuer: options.issuer,
    audience: options.audience,
    clockTolerance: options.clockToleranceSeconds,
    requiredClaims: ['sub', 'exp', 'iat'],
  };

  return {
    async issue(user) {
      const token = await new SignJWT({ email: user.email, role: user.role })
        .setProtectedHeader({ alg: TOKEN_ALGORITHM, typ: 'JWT' })
        .setSubject(user.id)
        .setIssuer(options.issuer)
        .setAudience(options.audience)
        .setIssuedAt()
        .setExpirationTime(`${options.tokenTtlSeconds}s`)
        .sign(await key);
      return { token, expiresIn: options.tokenTtlSeconds };
    },

    async verify(token) {
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(token, await key, verifyOptions));
      } catch (error) {
        const reason = REJECTION_BY_JOSE_CODE[(error as { code?: string }).code ?? ''] ?? 'malformed';
        throw new TokenRejectedError(reason, REJECTION_MESSAGE[reason]);
      }
      const { sub, email, role } = payload;
      if (typeof sub !== 'string' || sub === '' || typeof email !== 'string' || typeof role !== 'string') {
        throw new TokenRejectedError('bad_claims', 'The token lacks the sub, email or role claim.');
      }
      return { id: sub, email, role };
    },
  };
}
