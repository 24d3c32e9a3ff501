import { createHmac } from 'node:crypto';
import fc from 'fast-check';
import { decodeProtectedHeader, jwtVerify } from 'jose';
import { createTokenService, TokenRejectedError } from '../../src/tokens';

/**
 * The gateway checks its own HS256 tokens' signatures on node:crypto and leaves the header and the claims to jose
 * (src/tokens.ts ownTokenVerifier), where jose's jwtVerify checked all of it. Generated tokens (headers, claims,
 * signing keys, spellings of the signature and of the token itself) are judged by both: the gateway must take
 * exactly the tokens jwtVerify takes (and whose `iat` is not in the future, the gateway's own rule after either),
 * and refuse the rest for the same reason whenever the signature itself is right (with a wrong one it may say so
 * before what jose would have said first).
 */

const SECRET = 'own-token-verification-secret-long-enough';
const OTHER_SECRET = 'another-gateway-secret-that-is-long-enough';
const ISSUER = 'koa-gateway';
const AUDIENCE = 'koa-gateway-api';
const TOLERANCE = 5;
const options = { secret: SECRET, issuer: ISSUER, audience: AUDIENCE, tokenTtlSeconds: 60, clockToleranceSeconds: TOLERANCE, cacheSize: 0 };
const joseOptions = { algorithms: ['HS256'], issuer: ISSUER, audience: AUDIENCE, clockTolerance: TOLERANCE, requiredClaims: ['sub', 'exp', 'iat'] };
const joseKey = new TextEncoder().encode(SECRET);

const REASON_BY_JOSE_CODE: Record<string, string> = {
  ERR_JWT_EXPIRED: 'expired',
  ERR_JWS_SIGNATURE_VERIFICATION_FAILED: 'bad_signature',
  ERR_JWT_CLAIM_VALIDATION_FAILED: 'bad_claims',
  ERR_JOSE_ALG_NOT_ALLOWED: 'algorithm_not_allowed',
  ERR_JOSE_NOT_SUPPORTED: 'algorithm_not_allowed',
};

const b64 = (value: unknown) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
const now = () => Math.floor(Date.now() / 1000);

const header = fc.oneof(
  fc.constant({ alg: 'HS256', typ: 'JWT' }),
  fc.constant({ alg: 'HS256' }),
  fc.constant({ alg: 'HS256', kid: 'k1', extra: [1, 2] }),
  fc.constant({ alg: 'HS256', crit: ['b64'], b64: true }),
  fc.constant({ alg: 'HS256', crit: ['b64'], b64: false }),
  fc.constant({ alg: 'HS256', crit: ['b64'] }),
  fc.constant({ alg: 'HS256', crit: ['b64'], b64: 'yes' }),
  fc.constant({ alg: 'HS256', crit: [] }),
  fc.constant({ alg: 'HS256', crit: 'b64', b64: true }),
  fc.constant({ alg: 'HS256', crit: [''] }),
  fc.constant({ alg: 'HS256', b64: false }),
  fc.constant({ alg: 'HS256', typ: 'at+jwt' }),
);

const claims = fc.record({
  sub: fc.constantFrom('42', 'alice', undefined),
  email: fc.constantFrom('ada@example.com'),
  role: fc.constantFrom('user', 'admin'),
  iss: fc.constantFrom(ISSUER, 'someone-else', undefined, 7),
  aud: fc.constantFrom<unknown>(AUDIENCE, [AUDIENCE, 'other'], ['other'], 'other', undefined, 3),
  exp: fc.constantFrom<unknown>(3600, -3600, -3, 3, undefined, '3600', 1e20),
  iat: fc.constantFrom<unknown>(-10, 0, 3, 3600, undefined, 'now'),
  nbf: fc.constantFrom<unknown>(undefined, -10, 3, 3600, 'soon'),
});

/** A number is seconds from now; anything else goes as it is. */
const relative = (value: unknown) => (typeof value === 'number' && Math.abs(value) < 1e9 ? now() + value : value);

type Spelling = 'as signed' | 'flipped character' | 'other last character' | 'padded' | 'short' | 'extra part' | 'two parts' | 'five parts' | 'no signature' | 'payload not JSON' | 'non-ASCII lookalike';

function spell(token: string, spelling: Spelling, secret: string): string {
  const [h, p, s] = token.split('.') as [string, string, string];
  switch (spelling) {
    case 'as signed':
      return token;
    case 'flipped character':
      return `${h}.${p}.${s[0] === 'A' ? 'B' : 'A'}${s.slice(1)}`;
    case 'other last character':
      // The same bytes under base64url's unused bits, or not: never the signature as the gateway writes it.
      return `${h}.${p}.${s.slice(0, -1)}${s.endsWith('A') ? 'B' : 'A'}`;
    case 'padded':
      return `${token}=`;
    case 'short':
      return `${h}.${p}.${s.slice(0, -2)}`;
    case 'extra part':
      return `${token}.${s}`;
    case 'two parts':
      return `${h}.${p}`;
    case 'five parts':
      // A JWE's count of parts: its header decodes (decodeProtectedHeader takes 3 or 5), the rest must not pass.
      return `${token}.${s}.${s}`;
    case 'no signature':
      return `${h}.${p}.`;
    case 'payload not JSON': {
      const body = b64('not json');
      return `${h}.${body}.${createHmac('sha256', secret).update(`${h}.${body}`).digest('base64url')}`;
    }
    case 'non-ASCII lookalike':
      // The first character moved past U+00FF: cut to one byte (latin1), it is the character it replaced.
      return `${h}.${p}.${String.fromCharCode(0x100 | s.charCodeAt(0))}${s.slice(1)}`;
  }
}

/** One service for every draw: it keeps the last header it decoded, which the draws before (their headers repeat) left. */
const longLived = createTokenService(options);

async function verdictOf(service: ReturnType<typeof createTokenService>, token: string): Promise<string> {
  try {
    await service.verify(token);
    return 'accepted';
  } catch (error) {
    if (error instanceof TokenRejectedError) return error.reason;
    throw error;
  }
}

/** The gateway's verdict, the same from a service that saw the tokens before and from a new one. */
async function gatewayVerdict(token: string): Promise<string> {
  const [seasoned, fresh] = [await verdictOf(longLived, token), await verdictOf(createTokenService(options), token)];
  expect(seasoned).toBe(fresh);
  return fresh;
}

/** What the gateway judged with jose's jwtVerify: its own rules before (`crit`) and after (`iat`, identity) included. */
async function joseVerdict(token: string): Promise<string> {
  try {
    const { crit } = decodeProtectedHeader(token);
    if (Array.isArray(crit) && crit.some((name) => name !== 'b64')) return 'unsupported_critical_header';
  } catch {
    return 'malformed';
  }
  try {
    const { payload } = await jwtVerify(token, joseKey, joseOptions);
    if (typeof payload.iat === 'number' && payload.iat > Date.now() / 1000 + TOLERANCE) return 'bad_claims';
    if (typeof payload.sub !== 'string' || typeof payload.email !== 'string' || typeof payload.role !== 'string') return 'bad_claims';
    return 'accepted';
  } catch (error) {
    return REASON_BY_JOSE_CODE[(error as { code?: string }).code ?? ''] ?? 'malformed';
  }
}

describe('own HS256 tokens, checked on node:crypto, against jose jwtVerify', () => {
  it('takes exactly what jwtVerify takes, and refuses the rest for its reason when the signature is right', async () => {
    await fc.assert(
      fc.asyncProperty(
        header,
        claims,
        fc.constantFrom(SECRET, OTHER_SECRET),
        fc.constantFrom<Spelling>('as signed', 'as signed', 'as signed', 'flipped character', 'other last character', 'padded', 'short', 'extra part', 'two parts', 'five parts', 'no signature', 'payload not JSON', 'non-ASCII lookalike'),
        async (head, body, secret, spelling) => {
          const payload = Object.fromEntries(Object.entries(body).flatMap(([name, value]) => (value === undefined ? [] : [[name, ['exp', 'iat', 'nbf'].includes(name) ? relative(value) : value]])));
          const signingInput = `${b64(head)}.${b64(payload)}`;
          const token = spell(`${signingInput}.${createHmac('sha256', secret).update(signingInput).digest('base64url')}`, spelling, secret);
          const [gateway, jose] = await Promise.all([gatewayVerdict(token), joseVerdict(token)]);
          if (spelling === 'other last character' || spelling === 'padded' || spelling === 'non-ASCII lookalike') {
            // Spellings of a signature other than the one written: refused, whatever jose makes of them.
            expect(gateway).not.toBe('accepted');
            return;
          }
          expect(gateway === 'accepted').toBe(jose === 'accepted');
          const signatureRight = secret === SECRET && (spelling === 'as signed' || spelling === 'payload not JSON');
          if (signatureRight) expect(gateway).toBe(jose);
          else expect(gateway).not.toBe('accepted');
        },
      ),
      { seed: 39, numRuns: 1500 },
    );
  });

  it('takes a token the gateway issued, and refuses it under another secret', async () => {
    const issued = await createTokenService(options).issue({ id: '1', email: 'alice@example.com', role: 'admin' });
    await expect(createTokenService(options).verify(issued.token)).resolves.toEqual({ id: '1', email: 'alice@example.com', role: 'admin' });
    await expect(createTokenService({ ...options, secret: OTHER_SECRET }).verify(issued.token)).rejects.toMatchObject({ reason: 'bad_signature' });
  });
});
