import { timingSafeEqual, webcrypto } from 'node:crypto';
import { SignJWT, UnsecuredJWT, createLocalJWKSet, createRemoteJWKSet, customFetch, decodeProtectedHeader, jwksCache, jwtVerify, type ExportedJWKSCache, type FetchImplementation, type JSONWebKeySet, type JWTClaimVerificationOptions, type JWTPayload, type JWTVerifyGetKey, type JWTVerifyOptions, type ProtectedHeaderParameters } from 'jose';
import { IDENTITY_CLAIM_LIMITS, IDENTITY_VALUE } from '../otel/wire-names';
import { redactUrl } from '../otel/redact-url';
import type { AuthenticatedUser } from './context';
import { readAtMost } from './bounded-body';
import { keyedMac } from './gateway-signature';
import { nestedAtMost } from './json-depth';

/** The only algorithm the gateway's own tokens use; verification accepts nothing else (no `none`). */
export const TOKEN_ALGORITHM = 'HS256';

/** Tokens from an external identity provider, verified with the keys its JWKS URL publishes. */
export interface JwksOptions {
  url: string;
  issuer: string;
  audience: string;
  /** Asymmetric algorithms accepted from this provider. */
  algorithms: readonly string[];
  /** Longest wait for the key set, ms. */
  timeoutMs: number;
  /** Least time between two refetches for an unknown `kid`, ms. */
  cooldownMs: number;
  /** How long a fetched key set is trusted, ms. */
  cacheMaxAgeMs: number;
  clockToleranceSeconds: number;
  /** Claim holding the caller's role; a token without it gets role `user`, never more. */
  roleClaim: string;
  /** Put before `sub` in the caller id, keeping provider ids apart from the gateway's own. */
  subjectPrefix: string;
  /** Pass `email` on without `email_verified: true` (default false: an unproven address is left out). */
  passUnverifiedEmail?: boolean;
}

export interface TokenServiceOptions {
  secret: string;
  issuer: string;
  audience: string;
  /** Lifetime of issued tokens, s. */
  tokenTtlSeconds: number;
  /** Accepted clock skew, s. */
  clockToleranceSeconds: number;
  jwks?: JwksOptions;
  /** Verified tokens remembered until they expire, at most. Default 10 000; 0 turns the cache off. */
  cacheSize?: number;
}

export interface IssuedToken {
  token: string;
  expiresIn: number;
}

/** Why a presented token was refused; jose's error code decides it, never its message text. */
export type TokenRejection = 'expired' | 'bad_signature' | 'bad_claims' | 'malformed' | 'algorithm_not_allowed' | 'unknown_key' | 'unsupported_critical_header';

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
  ERR_JWKS_NO_MATCHING_KEY: 'unknown_key',
  ERR_JWKS_MULTIPLE_MATCHING_KEYS: 'unknown_key',
};

/**
 * Failures of the provider's key lookup that are the token's fault: it names a key the set does not hold, or
 * (without `kid`) several keys match. Every other failure there (refused, timeout, non-200, bad JSON, a broken
 * key) means the provider's keys could not be had.
 */
const TOKEN_FAULT_KEY_LOOKUP_CODES = new Set(['ERR_JWKS_NO_MATCHING_KEY', 'ERR_JWKS_MULTIPLE_MATCHING_KEYS', 'ERR_JOSE_NOT_SUPPORTED']);

const REJECTION_MESSAGE: Record<TokenRejection, string> = {
  expired: 'The token has expired.',
  bad_signature: 'The token signature is not valid.',
  bad_claims: 'The token was not issued for this gateway (issuer, audience or time claims).',
  malformed: 'The token is malformed.',
  algorithm_not_allowed: 'The token algorithm is not allowed here.',
  unknown_key: 'The token was signed with a key the identity provider does not publish.',
  unsupported_critical_header: 'The token has a critical header parameter (crit) the gateway does not support.',
};

/**
 * The `crit` header parameters jose's jwtVerify understands (`b64`, RFC 7797). A token naming any other must be
 * refused (RFC 7515 4.1.11); jose does so with ERR_JOSE_NOT_SUPPORTED, a code its key lookup shares, which read as
 * algorithm_not_allowed.
 */
const UNDERSTOOD_CRITICAL_PARAMETERS: ReadonlySet<unknown> = new Set(['b64']);

/** Whether a header's `crit` names a parameter jose does not understand (a malformed `crit` is jose's to refuse). */
function namesUnsupportedCritical(crit: unknown): boolean {
  return Array.isArray(crit) && crit.some((name) => !UNDERSTOOD_CRITICAL_PARAMETERS.has(name));
}

/**
 * A token issued later than now (beyond the clock tolerance) is refused, as one not yet valid (`nbf`) is: jose
 * compares `iat` with the clock only under `maxTokenAge`, which would also make `iat` required of a provider's
 * tokens. An `iat` a year ahead is a clock or an issuer gone wrong, or a token minted to outlive a key rotation.
 */
function refuseIssuedInFuture(payload: JWTPayload, toleranceSeconds: number): void {
  if (typeof payload.iat === 'number' && payload.iat > Date.now() / 1000 + toleranceSeconds) {
    throw new TokenRejectedError('bad_claims', REJECTION_MESSAGE.bad_claims);
  }
}

/** How far past tokenTtlSeconds an own token's `exp - iat` may be: issued by a release that read the clock twice. */
const ISSUING_CLOCK_SLACK_SECONDS = 1;

/**
 * A token of the gateway's own that would live longer than the gateway issues them for (`exp - iat` past
 * `auth.tokenTtlSeconds`) is refused: the gateway never made it, whoever holds the secret did (a leak, a tool), and
 * it was taken for as long as its `exp` said (issued in 1970, expiring in the year 5138), remembered for all that time.
 * So is one issued for longer than a lowered `tokenTtlSeconds` now allows: the operator's limit holds from the reload.
 */
function refuseLongerThanIssued(payload: JWTPayload, tokenTtlSeconds: number): void {
  // One second over is taken: releases before this one read the clock twice when they issued, a second apart at times.
  if (typeof payload.exp === 'number' && typeof payload.iat === 'number' && payload.exp - payload.iat > tokenTtlSeconds + ISSUING_CLOCK_SLACK_SECONDS) {
    throw new TokenRejectedError('bad_claims', REJECTION_MESSAGE.bad_claims);
  }
}

/**
 * Verifies one of the gateway's own HS256 tokens as jose's jwtVerify does, with the signature checked on `node:crypto`:
 * jwtVerify checks it with WebCrypto, a thread-pool job, 34.5 µs of CPU per token against 4.1 µs for an HMAC here
 * (bench/RESULTS.md, thirty-ninth session), paid on the first sight of every token. Only the signature is checked
 * here: the token must be exactly three parts and its signature exactly the base64url HMAC-SHA256 of the first two
 * under the secret (compared in constant time; no other spelling of the same bytes). Everything else is jose's, on
 * the same header and payload: UnsecuredJWT.decode judges the header's `crit` and `b64` and the claims (issuer,
 * audience, `exp`, `nbf`, required claims, clock tolerance) with the validation jwtVerify runs, the header given
 * to it as the token's own with `alg` set to `none` (its `alg` was checked to be HS256 before this is called).
 */
function ownTokenVerifier(secret: string, options: JWTClaimVerificationOptions): (token: string, header: DecodedHeader) => JWTPayload {
  const mac = keyedMac(secret);
  return (token, header) => {
    const parts = token.split('.');
    if (parts.length !== 3) throw new TokenRejectedError('malformed', REJECTION_MESSAGE.malformed);
    const [encodedHeader, encodedPayload, signature] = parts as [string, string, string];
    const expected = Buffer.from(mac(`${encodedHeader}.${encodedPayload}`), 'latin1');
    // UTF-8, not latin1: a character past U+00FF would be cut to one byte and could read as the expected one.
    const given = Buffer.from(signature, 'utf8');
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw new TokenRejectedError('bad_signature', REJECTION_MESSAGE.bad_signature);
    header.unsecured ??= Buffer.from(JSON.stringify({ ...header.parameters, alg: 'none' }), 'utf8').toString('base64url');
    return UnsecuredJWT.decode(`${header.unsecured}.${encodedPayload}.`, options).payload;
  };
}

/** Whether a token is 3 or 5 dot-separated parts, `firstDot` being where its first dot is (-1: none). */
function threeOrFiveParts(token: string, firstDot: number): boolean {
  let dots = 0;
  for (let at = firstDot; at !== -1 && dots < 5; at = token.indexOf('.', at + 1)) dots++;
  return dots === 2 || dots === 4;
}

/** A token's protected header: as sent, as jose decodes it, and (once asked for) as ownTokenVerifier hands it to jose. */
interface DecodedHeader {
  encoded: string;
  parameters: ProtectedHeaderParameters;
  /** base64url of the header with `alg` set to `none`. */
  unsecured?: string;
}

/**
 * Decodes a token's protected header, or hands back the last token's when the two are spelt alike: every token the
 * gateway issues has the same header (`{"alg":"HS256","typ":"JWT"}`), and a provider's one per signing key, so a
 * first-seen token's is nearly always the one before's. Decoding it again (base64url, UTF-8, JSON, jose's checks)
 * and encoding its unsecured form cost ~1.5 µs of a first-seen token's ~8 (bench/RESULTS.md). The same string decodes
 * to the same header, so nothing a token is judged by changes; the header is read, never changed.
 */
function headerDecoder(): (token: string) => DecodedHeader {
  let last: DecodedHeader | undefined;
  return (token) => {
    const dot = token.indexOf('.');
    const encoded = dot === -1 ? token : token.slice(0, dot);
    // Only for what decodeProtectedHeader takes (3 parts, or 5: a JWE): anything else is its to refuse.
    if (last !== undefined && last.encoded === encoded && threeOrFiveParts(token, dot)) return last;
    const decoded: DecodedHeader = { encoded, parameters: decodeProtectedHeader(token) };
    last = decoded;
    return decoded;
  };
}

/** The keys to verify a token could not be fetched (JWKS down, slow or broken): fail closed, but say so. */
export class TokenVerifierUnavailableError extends Error {
  override name = 'TokenVerifierUnavailableError';
}

export interface TokenService {
  issue(user: AuthenticatedUser): Promise<IssuedToken>;
  /**
   * Resolves with the caller; rejects with a TokenRejectedError (the token's fault: 401) or a
   * TokenVerifierUnavailableError (the provider's keys could not be had: fail closed, 503).
   */
  verify(token: string): Promise<AuthenticatedUser>;
  /** Whether `token` verified before and is remembered (it may have expired since: `verify` says). */
  remembers(token: string): boolean;
}

/**
 * Issues and verifies the gateway's HS256 tokens, and verifies RS256/ES256 tokens of an identity provider
 * through its JWKS. The verifier is chosen from the token's `alg` before any verification, so a token can
 * never make one key type be used as another (HS256 signed with an RSA public key as the HMAC secret fails).
 * The HMAC key is imported once as a CryptoKey (jose would re-import a raw secret on every call). Verified
 * tokens are remembered until they expire: the same signed string verifies the same way until then.
 */
export function createTokenService(options: TokenServiceOptions): TokenService {
  // For issuing: jose signs with it (jose would re-import a raw secret on every call).
  const key = webcrypto.subtle.importKey('raw', new TextEncoder().encode(options.secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify']);
  const verifyOwn = ownTokenVerifier(options.secret, {
    issuer: options.issuer,
    audience: options.audience,
    clockTolerance: options.clockToleranceSeconds,
    requiredClaims: ['sub', 'exp', 'iat'],
  });
  const jwks = options.jwks;
  const providerKeys = jwks && providerKeyLookup(jwks);
  const providerOptions = jwks && {
    algorithms: [...jwks.algorithms],
    issuer: jwks.issuer,
    audience: jwks.audience,
    clockTolerance: jwks.clockToleranceSeconds,
    requiredClaims: ['sub', 'exp'],
  };
  const cache = new VerifiedTokenCache(options.cacheSize ?? 10_000);
  const decodeHeader = headerDecoder();

  /**
   * The caller a token proves, until when (epoch ms) that may be remembered without checking it again, and for a
   * provider token whether the key that signed it is still published.
   */
  async function verifyWithKeys(token: string): Promise<{ user: AuthenticatedUser; trustedUntilMs: number; stillPublished?: () => boolean }> {
    let header: DecodedHeader;
    try {
      header = decodeHeader(token);
    } catch {
      throw new TokenRejectedError('malformed', REJECTION_MESSAGE.malformed);
    }
    const { alg, crit } = header.parameters;
    // Before any key is looked up, where jose checks it too.
    if (crit !== undefined && namesUnsupportedCritical(crit)) throw new TokenRejectedError('unsupported_critical_header', REJECTION_MESSAGE.unsupported_critical_header);
    try {
      if (alg === TOKEN_ALGORITHM) {
        const payload = verifyOwn(token, header);
        refuseIssuedInFuture(payload, options.clockToleranceSeconds);
        refuseLongerThanIssued(payload, options.tokenTtlSeconds);
        return { user: ownIdentity(payload), trustedUntilMs: expiryMs(payload) };
      }
      if (providerKeys && providerOptions && jwks && alg !== undefined && jwks.algorithms.includes(alg)) {
        // The set jose holds can change while a verification is under way (its key looked up, the signature checked
        // on the thread pool, a refetch landing in between), so what the token is checked against is the set held
        // once it verified: a key the provider withdrew (rotated, leaked) must stop working at once, for a token
        // verified during the refetch too, and for one seen before, however far off the token's `exp`.
        const before = providerKeys.current();
        const { payload, protectedHeader } = await jwtVerify(token, providerKeys.getKey, providerOptions);
        refuseIssuedInFuture(payload, jwks.clockToleranceSeconds);
        const user = providerIdentity(payload, jwks);
        const after = providerKeys.current();
        const { kid } = protectedHeader;
        if (kid !== undefined && after?.keys.get(kid) === undefined) throw new TokenRejectedError('unknown_key', REJECTION_MESSAGE.unknown_key);
        // The key that signed it is surely the one `after` publishes under its `kid` when the set did not change
        // under the verification, or the `kid` named that key before too, or named none before and `after` is the
        // very next set (the key can only have come from it). Otherwise (the `kid` re-published with other key
        // material, as after a leak, or a token without `kid` across a refetch) the key looked up may be one `after`
        // no longer publishes: the token is checked again against the set held now, and refused if it fails there.
        const nextSet = after !== undefined && after.generation === (before?.generation ?? 0) + 1;
        const earlier = kid === undefined ? undefined : before?.keys.get(kid);
        const certain = after !== undefined && (before === after || (kid === undefined ? nextSet && before === undefined : earlier === after.keys.get(kid) || (nextSet && earlier === undefined)));
        const held = certain ? after : await verifiedAgainstHeldSet(token, providerKeys, providerOptions);
        const published = kid === undefined ? undefined : held.keys.get(kid);
        // No longer than the set that publishes its key is trusted (cacheMaxAgeMs from its fetch, not from this check,
        // on the monotonic clock), nor past a refetch that drops or changes its key (stillPublished).
        return {
          user,
          trustedUntilMs: expiryMs(payload),
          stillPublished: () => providerKeys.stillPublished(held, kid, published),
        };
      }
    } catch (error) {
      if (error instanceof TokenRejectedError || error instanceof TokenVerifierUnavailableError) throw error;
      const reason = REJECTION_BY_JOSE_CODE[(error as { code?: string }).code ?? ''] ?? 'malformed';
      throw new TokenRejectedError(reason, REJECTION_MESSAGE[reason]);
    }
    throw new TokenRejectedError('algorithm_not_allowed', REJECTION_MESSAGE.algorithm_not_allowed);
  }

  return {
    async issue(user) {
      const issuedAt = Math.floor(Date.now() / 1000);
      const token = await new SignJWT({ email: user.email, role: user.role })
        .setProtectedHeader({ alg: TOKEN_ALGORITHM, typ: 'JWT' })
        .setSubject(user.id)
        .setIssuer(options.issuer)
        .setAudience(options.audience)
        // One clock reading for both: read twice (jose's default), a second could turn between them, and the token's
        // lifetime was one second longer than tokenTtlSeconds.
        .setIssuedAt(issuedAt)
        .setExpirationTime(issuedAt + options.tokenTtlSeconds)
        .sign(await key);
      return { token, expiresIn: options.tokenTtlSeconds };
    },

    remembers(token) {
      return cache.has(token);
    },

    async verify(token) {
      const known = cache.get(token);
      if (known) return known;
      const { user, trustedUntilMs, stillPublished } = await verifyWithKeys(token);
      cache.set(token, user, trustedUntilMs, stillPublished);
      return user;
    },
  };
}

/** A key set as jose holds it: since when, and each key it publishes by `kid`. */
interface FetchedKeySet {
  /** 1 for the first set jose held, then one more for each set it switched to. */
  generation: number;
  /**
   * performance.now() when jose switched to it. On the wall clock, a step back (NTP, a resumed VM) kept a token
   * verified with a key the provider has since withdrawn trusted for the step's length past cacheMaxAgeMs.
   */
  fetchedAtMonotonicMs: number;
  /** Each `kid` with its JWK as published (JSON, members sorted): a `kid` reused for other key material is another key. */
  keys: ReadonlyMap<string, string>;
  /** Looks keys up in this set alone (never refetching): a token checked again against it (verifiedAgainstHeldSet). */
  getKey: JWTVerifyGetKey;
}

/** Times a token is checked again when the set keeps changing under each check; then the keys are taken as unavailable. */
const MAX_KEY_SET_RECHECKS = 3;

/**
 * Why a token that verified is refused by its check against the set held now. Its key gone from that set, or its
 * `kid` (or, without one, its algorithm) now naming other key material, so that the signature no longer verifies,
 * is unknown_key; any other failure (its `exp` passed between the two checks) is what it would be on a first check.
 */
function recheckRejection(error: unknown): TokenRejectedError {
  const code = (error as { code?: string }).code ?? '';
  const reason = code === 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED' ? 'unknown_key' : (REJECTION_BY_JOSE_CODE[code] ?? 'malformed');
  return new TokenRejectedError(reason, REJECTION_MESSAGE[reason]);
}

/**
 * The set jose holds now, once `token` verified against that set alone, with no refetch landing during the check; a
 * token that fails there is refused (recheckRejection: unknown_key when its key is no longer published). Used when a refetch
 * landed during a verification and the key it looked up may have been replaced since.
 */
async function verifiedAgainstHeldSet(token: string, providerKeys: ReturnType<typeof providerKeyLookup>, options: JWTVerifyOptions): Promise<FetchedKeySet> {
  for (let attempt = 0; attempt < MAX_KEY_SET_RECHECKS; attempt++) {
    const held = providerKeys.current();
    if (held === undefined) break;
    try {
      await jwtVerify(token, held.getKey, options);
    } catch (error) {
      throw recheckRejection(error);
    }
    if (providerKeys.current() === held) return held;
  }
  throw new TokenVerifierUnavailableError(`The identity provider's key set could not be held still for a check of the token (${MAX_KEY_SET_RECHECKS} tries).`);
}

/**
 * The provider's keys (cached, refetched on an unknown `kid` at most once per cooldown, each fetch bounded by
 * `timeoutMs`), with failures sorted at this boundary: a key the token names but the set lacks is the token's
 * fault; failing to get the set at all is a TokenVerifierUnavailableError. jwtVerify passes both on unchanged.
 * `current` is the key set jose verifies with now; `stillPublished` says whether a token remembered as verified
 * against `used` may still be trusted: the set is the same, or its `kid` still names the same key (`published`).
 */
function providerKeyLookup(jwks: JwksOptions): {
  getKey: JWTVerifyGetKey;
  current(): FetchedKeySet | undefined;
  stillPublished(used: FetchedKeySet, kid: string | undefined, published: string | undefined): boolean;
} {
  let current: FetchedKeySet | undefined;
  // jose writes its cache export at the moment it switches to a newly fetched set, and only then (not for a set
  // it refuses as malformed, nor for an older fetch that lands late): mirrored from there, `current` is always
  // the set jose looks keys up in, never one a fetch returned that jose does not use yet. Its `uat` of 0 is
  // never fresh, so jose starts without a set, as without this option.
  const mirror = {
    uat: 0,
    set jwks(keySet: JSONWebKeySet) {
      current = { generation: (current?.generation ?? 0) + 1, fetchedAtMonotonicMs: performance.now(), keys: publishedKeys(keySet), getKey: createLocalJWKSet(keySet) };
    },
  } as ExportedJWKSCache;
  const remote = createRemoteJWKSet(new URL(jwks.url), {
    timeoutDuration: jwks.timeoutMs,
    cooldownDuration: jwks.cooldownMs,
    cacheMaxAge: jwks.cacheMaxAgeMs,
    [jwksCache]: mirror,
    [customFetch]: jwksFetch(Math.min(jwks.cooldownMs, JWKS_FAILURE_BACKOFF_MS)),
  });
  return {
    getKey: providerKey,
    current: () => current,
    // The set held now, while it is trusted (the token then goes through lookUp, which refetches), and publishes the key.
    stillPublished: (used, kid, published) =>
      current !== undefined && performance.now() - current.fetchedAtMonotonicMs < jwks.cacheMaxAgeMs && (used === current || (kid !== undefined && current.keys.get(kid) === published)),
  };
  /**
   * jose's key lookup, with the set's age also judged on the monotonic clock. jose times its cache on the wall clock
   * (Date.now() against the fetch's): stepped back an hour, the held set stayed fresh and the refetch for an unknown
   * kid cooling down for the hour, so a withdrawn key was still accepted and a rotated-in one refused (401) until
   * the wall clock caught up. A refetch made here resets jose's times too.
   */
  async function lookUp(header: Parameters<JWTVerifyGetKey>[0], token: Parameters<JWTVerifyGetKey>[1]) {
    const sinceFetch = () => performance.now() - (current?.fetchedAtMonotonicMs ?? -Infinity);
    if (remote.fresh && sinceFetch() >= jwks.cacheMaxAgeMs) await remote.reload();
    try {
      return await remote(header, token);
    } catch (error) {
      if ((error as { code?: unknown }).code !== 'ERR_JWKS_NO_MATCHING_KEY' || !remote.coolingDown || sinceFetch() < jwks.cooldownMs) throw error;
      await remote.reload();
      return await remote(header, token);
    }
  }

  async function providerKey(...[header, token]: Parameters<JWTVerifyGetKey>) {
    try {
      return await lookUp(header, token);
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      if (typeof code === 'string' && TOKEN_FAULT_KEY_LOOKUP_CODES.has(code)) throw error;
      const why = typeof code === 'string' ? code : `${(error as Error).name}: ${(error as Error).message}`;
      // The URL as every logged URL is (a key-set URL may carry `?api_key=`): this message reaches the log and the span.
      throw new TokenVerifierUnavailableError(`The identity provider's keys could not be fetched from ${redactUrl(jwks.url)} (${why}).`, { cause: error });
    }
  };
}

/**
 * The keys of a set by `kid`: every key published under it, each as its JSON with sorted members (the same key
 * however the provider orders them), in one string. RFC 7517 4.5 lets keys of different types share a kid; kept one
 * per kid (the last listed), a token verified with the RSA key was judged by the EC one, and stayed trusted after
 * its own key was withdrawn. Any key of the kid withdrawn or replaced changes the string.
 */
function publishedKeys(keySet: JSONWebKeySet): Map<string, string> {
  const byKid = new Map<string, string[]>();
  for (const key of keySet.keys) {
    if (typeof key.kid !== 'string') continue;
    const keys = byKid.get(key.kid) ?? [];
    keys.push(JSON.stringify(key, Object.keys(key).sort()));
    byKid.set(key.kid, keys);
  }
  return new Map([...byKid].map(([kid, keys]) => [kid, keys.sort().join('\n')]));
}

/** Largest key set read, bytes: a real one is a few KB (tens with certificate chains); a bigger answer is refused unread. */
export const MAX_JWKS_BYTES = 512 * 1024;

/** Longest time a failed key-set fetch is remembered, ms (the `Retry-After` of auth_unavailable). */
const JWKS_FAILURE_BACKOFF_MS = 5000;

/**
 * The key-set fetch jose makes, bounded: an answer over MAX_JWKS_BYTES is cut off as it arrives (a client with a
 * made-up token makes the gateway fetch: hundreds of MiB were buffered within the timeout), and anything but a
 * 200 with a JSON key set is a failure that later fetches repeat for `backoffMs` without asking the provider
 * again, instead of sending it one request per provider token while it is failing.
 */
function jwksFetch(backoffMs: number): FetchImplementation {
  // On the monotonic clock: on the wall clock, a step back (NTP, a resumed VM) kept the last failure "recent" for
  // the step's length, and every provider token was 503 auth_unavailable that long with the provider long back.
  let lastFailure: { at: number; error: unknown } | undefined;
  return async (url, init) => {
    if (lastFailure && performance.now() - lastFailure.at < backoffMs) throw lastFailure.error;
    try {
      const response = await fetch(url, init);
      const text = await boundedText(response, MAX_JWKS_BYTES);
      if (response.status !== 200) throw Object.assign(new Error(`the JWKS answered ${response.status}`), { code: 'ERR_JWKS_STATUS' });
      const keySet: unknown = JSON.parse(text);
      if (!isKeySet(keySet)) throw Object.assign(new Error('the JWKS answer is not a key set'), { code: 'ERR_JWKS_INVALID' });
      lastFailure = undefined;
      return new Response(text, { status: 200, headers: { 'content-type': 'application/json' } });
    } catch (error) {
      lastFailure = { at: performance.now(), error };
      throw error;
    }
  };
}

/**
 * Whether parsed JSON is a key set jose takes: an object whose `keys` are all objects, nested no deeper than a key
 * set is (MAX_KEY_SET_DEPTH). One whose members are not (a string, null) passed as a success here, jose then refused
 * it, and the back-off never engaged: every request with a provider token fetched the set again. So did one nested
 * some 3,300 levels deep (10 KB): jose's structuredClone of it overflows the stack and jose refuses the set.
 */
function isKeySet(value: unknown): boolean {
  const isObject = (each: unknown) => typeof each === 'object' && each !== null && !Array.isArray(each);
  const keys = isObject(value) ? (value as { keys?: unknown }).keys : undefined;
  return Array.isArray(keys) && keys.every(isObject) && nestedAtMost(value, MAX_KEY_SET_DEPTH);
}

/**
 * Deepest nesting of a key set, counting the set itself: the set, `keys`, a key, its `x5c` or `oth` (RFC 7518
 * 6.3.2.7), an `oth` member; a few levels more for members a provider adds.
 */
const MAX_KEY_SET_DEPTH = 8;

/** A response body as text, refused (and left unread) past `limit` bytes. */
async function boundedText(response: Response, limit: number): Promise<string> {
  const tooLarge = () => Object.assign(new Error(`the JWKS answer is over ${limit} bytes`), { code: 'ERR_JWKS_TOO_LARGE' });
  if (Number(response.headers.get('content-length') ?? 0) > limit) {
    await response.body?.cancel();
    throw tooLarge();
  }
  if (!response.body) return '';
  const bytes = await readAtMost(response.body, limit);
  if (bytes === undefined) throw tooLarge();
  // Without a byte-order mark (TextDecoder drops one, as the Fetch API's json() does, and jose with it): kept, as
  // Buffer's toString keeps it, JSON.parse refused a set saved by Windows tools that jose itself reads.
  return new TextDecoder().decode(bytes);
}

/**
 * Identity claims become request headers (`X-User-Id`, `X-User-Role`, `X-User-Email`): beyond printable ASCII a
 * value either fails the upstream call (control characters, anything past Latin-1: Node refuses it) or arrives
 * garbled (Latin-1 bytes), so such a `sub` or role, or one of absurd length, refuses the token. An email that cannot be sent is left out instead (it is informative, and optional for
 * provider tokens): an internationalised address must not lock its owner out.
 */
// IDENTITY_VALUE has no space at either end, so the gateway's signature over a value verifies where it arrives,
// and no comma, so `X-User-Role: user,admin` is never read as a list holding admin.
const headerSafe = (value: string, max: number) => value.length <= max && IDENTITY_VALUE.test(value);

function identity(sub: unknown, role: string, email: unknown, subMaxLength: number = IDENTITY_CLAIM_LIMITS.subMaxLength): AuthenticatedUser {
  if (typeof sub !== 'string' || !headerSafe(sub, subMaxLength) || !headerSafe(role, IDENTITY_CLAIM_LIMITS.roleMaxLength)) {
    throw new TokenRejectedError('bad_claims', 'The token\'s sub or role claim cannot be passed on (printable ASCII without commas, at most 255 and 64 characters).');
  }
  return { id: sub, email: typeof email === 'string' && headerSafe(email, IDENTITY_CLAIM_LIMITS.emailMaxLength) ? email : '', role };
}

function ownIdentity(payload: JWTPayload): AuthenticatedUser {
  const { sub, email, role } = payload;
  if (typeof sub !== 'string' || sub === '' || typeof email !== 'string' || typeof role !== 'string') {
    throw new TokenRejectedError('bad_claims', 'The token lacks the sub, email or role claim.');
  }
  return identity(sub, role, email);
}

/** A provider token's role: the configured claim when it is a non-empty string, else `user` (never more). */
function providerIdentity(payload: JWTPayload, { roleClaim, subjectPrefix, passUnverifiedEmail = false }: JwksOptions): AuthenticatedUser {
  const { sub } = payload;
  // An address the provider did not say it proved is no identity the gateway vouches for (signed, as X-User-Email).
  const email = passUnverifiedEmail || payload.email_verified === true ? payload.email : undefined;
  const role = payload[roleClaim];
  if (typeof sub !== 'string' || sub === '') throw new TokenRejectedError('bad_claims', 'The token lacks the sub claim.');
  // The value checked is the one passed on (the prefix is printable, without spaces or commas: config), the length
  // limit the provider's `sub`'s (OpenID Connect Core 2: up to 255 ASCII characters): counted with the prefix, a
  // `sub` of 252-255 characters was refused behind `idp:`.
  return identity(`${subjectPrefix}${sub}`, typeof role === 'string' && role !== '' ? role : 'user', email, IDENTITY_CLAIM_LIMITS.subMaxLength + subjectPrefix.length);
}

/** `exp` of a token that verified, in epoch ms. */
function expiryMs(payload: JWTPayload): number {
  return typeof payload.exp === 'number' ? payload.exp * 1000 : 0;
}

/**
 * How many of a token's last characters key the remembered tokens: its signature's end (a JWS ends with its
 * signature, 43 or more base64url characters), so distinct tokens practically never share a key; a shared one is
 * only a miss (the whole token is compared), and only a token that verified is ever stored under one.
 */
const TOKEN_KEY_CHARACTERS = 24;

/** The key a token is remembered under: a Map hashes all of a new string's characters (~20 per character, ~4k
 * instructions for a 200-character token on every request), 24 of them cost a tenth of that. */
function tokenKey(token: string): string {
  return token.length > TOKEN_KEY_CHARACTERS ? token.slice(-TOKEN_KEY_CHARACTERS) : token;
}

/**
 * Remembers verified tokens until their `exp` (a provider's, no longer than its key set is trusted): verifying one of
 * the gateway's own tokens costs ~10 µs of CPU, a provider's (jwtVerify, WebCrypto) several times that, a Map lookup
 * almost nothing. Bounded; when full, the oldest
 * entries go first. Keyed by the token's end (tokenKey), each entry holding the whole token it is for.
 */
class VerifiedTokenCache {
  private readonly entries = new Map<string, { token: string; user: AuthenticatedUser; expiresAtMs: number; stillTrusted?: () => boolean }>();
  /**
   * Where the next eviction looks: one iterator kept over the entries, each entry it passed evicted. A fresh
   * `keys().next()` per eviction walked every slot the evictions before it had emptied (a Map keeps them until it
   * rehashes): 9.5 µs of a first-seen token's 19.7 with 10,000 entries, where the check itself is ~10.
   */
  private evictFrom: Iterator<string> = this.entries.keys();
  constructor(private readonly maxEntries: number) {}

  private evictOldest(): void {
    let oldest = this.evictFrom.next();
    // Done for good once at the end (added entries are not seen then): the oldest one is the first of a new walk.
    if (oldest.done) {
      this.evictFrom = this.entries.keys();
      oldest = this.evictFrom.next();
    }
    if (!oldest.done) this.entries.delete(oldest.value);
  }

  has(token: string): boolean {
    return this.entries.get(tokenKey(token))?.token === token;
  }

  get(token: string): AuthenticatedUser | undefined {
    const key = tokenKey(token);
    const entry = this.entries.get(key);
    if (!entry || entry.token !== token) return undefined;
    if (entry.expiresAtMs <= Date.now() || entry.stillTrusted?.() === false) {
      this.entries.delete(key);
      return undefined;
    }
    return entry.user;
  }

  /** `stillTrusted`: checked on every use besides the expiry (a provider token's key still published). */
  set(token: string, user: AuthenticatedUser, expiresAtMs: number, stillTrusted?: () => boolean): void {
    if (this.maxEntries === 0) return;
    // Not past exp even within the clock tolerance that let it verify: expired tokens must fail again.
    if (expiresAtMs <= Date.now()) return;
    const key = tokenKey(token);
    if (this.entries.size >= this.maxEntries && !this.entries.has(key)) this.evictOldest();
    this.entries.set(key, { token, user, expiresAtMs, stillTrusted });
  }
}
