import { createHmac } from 'node:crypto';
import { createTokenService, TokenRejectedError } from '../../src/tokens';

// The signature check every verification of an own token makes (the HMAC of its first two parts), counted: a cache
// hit is a verify() that never reaches it. (The header's decoding is no count: the last header is kept.)
const mockSignedInputs: string[] = [];
jest.mock('../../src/gateway-signature', () => {
  const actual = jest.requireActual<typeof import('../../src/gateway-signature')>('../../src/gateway-signature');
  return {
    ...actual,
    keyedMac: (key: string) => {
      const mac = actual.keyedMac(key);
      return (text: string) => {
        mockSignedInputs.push(text);
        return mac(text);
      };
    },
  };
});
/** How often each token was really verified (signature and claims), in the order given. */
const verifiedCounts = (...tokens: string[]) => tokens.map((token) => mockSignedInputs.filter((input) => input === token.split('.').slice(0, 2).join('.')).length);

describe('token service', () => {
  const options = { secret: 'unit-test-secret-that-is-long-enough!!', issuer: 'koa-gateway', audience: 'koa-gateway-api', tokenTtlSeconds: 1, clockToleranceSeconds: 0 };
  const alice = { id: '1', email: 'alice@example.com', role: 'admin' };
  /** Distinct callers, so tokens issued within the same second are distinct strings. */
  const caller = (id: number) => ({ id: String(id), email: `user${id}@example.com`, role: 'user' });

  beforeEach(() => void mockSignedInputs.splice(0));
  afterEach(() => jest.useRealTimers());

  it('verifies what it issued, again and again (from its cache)', async () => {
    const tokens = createTokenService({ ...options, tokenTtlSeconds: 60 });
    const { token, expiresIn } = await tokens.issue(alice);
    expect(expiresIn).toBe(60);
    for (let i = 0; i < 3; i++) await expect(tokens.verify(token)).resolves.toEqual(alice);
    expect(verifiedCounts(token)).toEqual([1]);
  });

  it('never takes a token that ends as a remembered one does for it (a forged payload under a copied signature)', async () => {
    const tokens = createTokenService({ ...options, tokenTtlSeconds: 60 });
    const { token } = await tokens.issue(alice);
    await expect(tokens.verify(token)).resolves.toEqual(alice);
    expect(tokens.remembers(token)).toBe(true);
    // The remembered token's header and signature around another caller's claims: the same last characters.
    const [header, , signature] = token.split('.');
    const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as Record<string, unknown>;
    const forged = `${header}.${Buffer.from(JSON.stringify({ ...claims, sub: 'mallory', role: 'admin' })).toString('base64url')}.${signature}`;
    expect(forged.slice(-40)).toBe(token.slice(-40));
    expect(tokens.remembers(forged)).toBe(false);
    await expect(tokens.verify(forged)).rejects.toMatchObject({ reason: 'bad_signature' });
    await expect(tokens.verify(token)).resolves.toEqual(alice);
    expect(verifiedCounts(token, forged)).toEqual([1, 1]);
  });

  it('verifies every time with cacheSize 0', async () => {
    const tokens = createTokenService({ ...options, tokenTtlSeconds: 60, cacheSize: 0 });
    const { token } = await tokens.issue(alice);
    for (let i = 0; i < 3; i++) await expect(tokens.verify(token)).resolves.toEqual(alice);
    expect(verifiedCounts(token)).toEqual([3]);
  });

  it('evicts the oldest entry when the cache is full, and keeps the others', async () => {
    const tokens = createTokenService({ ...options, tokenTtlSeconds: 60, cacheSize: 2 });
    const [first, second, third] = await Promise.all([1, 2, 3].map(async (id) => (await tokens.issue(caller(id))).token));
    await tokens.verify(first!);
    await tokens.verify(second!);
    await tokens.verify(first!);
    await tokens.verify(second!);
    expect(verifiedCounts(first!, second!, third!)).toEqual([1, 1, 0]);
    // A third token pushes out the first (oldest in), not the second.
    await expect(tokens.verify(third!)).resolves.toEqual(caller(3));
    await expect(tokens.verify(second!)).resolves.toEqual(caller(2));
    await expect(tokens.verify(third!)).resolves.toEqual(caller(3));
    expect(verifiedCounts(first!, second!, third!)).toEqual([1, 1, 1]);
    await expect(tokens.verify(first!)).resolves.toEqual(caller(1));
    expect(verifiedCounts(first!, second!, third!)).toEqual([2, 1, 1]);
  });

  // Evictions walk one kept iterator: across many of them, and entries added after it reached the end, the ones
  // remembered must still be exactly the newest, in the order they came.
  it('keeps exactly the newest entries across many evictions, a token seen again coming in as the newest', async () => {
    const tokens = createTokenService({ ...options, tokenTtlSeconds: 60, cacheSize: 3 });
    const issued = await Promise.all(Array.from({ length: 12 }, async (_, id) => (await tokens.issue(caller(id + 10))).token));
    const remembered = () => issued.flatMap((token, index) => (tokens.remembers(token) ? [index] : []));
    for (const token of issued) await tokens.verify(token);
    expect(remembered()).toEqual([9, 10, 11]);
    // The first one again: verified anew, it pushes out 9, the oldest in.
    await tokens.verify(issued[0]!);
    expect(remembered()).toEqual([0, 10, 11]);
    for (const index of [1, 2]) await tokens.verify(issued[index]!);
    expect(remembered()).toEqual([0, 1, 2]);
    await tokens.verify(issued[5]!);
    expect(remembered()).toEqual([1, 2, 5]);
  });

  it('never serves a cached token past its expiry', async () => {
    // Only Date is faked (crypto and promises run as usual): the clock moves when the test says so.
    jest.useFakeTimers({ doNotFake: ['hrtime', 'nextTick', 'performance', 'queueMicrotask', 'requestAnimationFrame', 'cancelAnimationFrame', 'requestIdleCallback', 'cancelIdleCallback', 'setImmediate', 'clearImmediate', 'setInterval', 'clearInterval', 'setTimeout', 'clearTimeout'] });
    const tokens = createTokenService({ ...options, tokenTtlSeconds: 2 });
    const { token } = await tokens.issue(alice);
    await expect(tokens.verify(token)).resolves.toEqual(alice);
    await expect(tokens.verify(token)).resolves.toEqual(alice);
    expect(verifiedCounts(token)).toEqual([1]);
    // iat is whole seconds, so 3.1 s later the 2 s token is surely past exp, and so is its cache entry.
    jest.setSystemTime(Date.now() + 3100);
    const rejection = await tokens.verify(token).catch((error: unknown) => error);
    expect(rejection).toBeInstanceOf(TokenRejectedError);
    expect((rejection as TokenRejectedError).reason).toBe('expired');
    expect(verifiedCounts(token)).toEqual([2]);
  });

  it('refuses a token of another gateway instance with another secret, cached or not', async () => {
    const other = createTokenService({ ...options, secret: 'another-secret-that-is-long-enough!!!', tokenTtlSeconds: 60 });
    const { token } = await other.issue(alice);
    await expect(other.verify(token)).resolves.toEqual(alice);
    const tokens = createTokenService({ ...options, tokenTtlSeconds: 60 });
    await expect(tokens.verify(token)).rejects.toMatchObject({ reason: 'bad_signature' });
  });

  /** An HS256 token with exactly this header, signed with the service's secret (jose's signer refuses an unknown `crit`). */
  const signedWithHeader = (header: Record<string, unknown>) => {
    const now = Math.floor(Date.now() / 1000);
    const claims = { sub: '1', email: 'alice@example.com', role: 'admin', iss: options.issuer, aud: options.audience, iat: now, exp: now + 60 };
    const signingInput = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
    return `${signingInput}.${createHmac('sha256', options.secret).update(signingInput).digest('base64url')}`;
  };

  it.each([
    { desc: 'one the gateway does not know', header: { alg: 'HS256', typ: 'JWT', crit: ['exp-ext'], 'exp-ext': 1 } },
    { desc: 'a known one beside an unknown one', header: { alg: 'HS256', typ: 'JWT', crit: ['b64', 'x-policy'], b64: true, 'x-policy': 'strict' } },
  ])('refuses a token whose crit names $desc as an unsupported critical header, not as a disallowed algorithm', async ({ header }) => {
    const tokens = createTokenService({ ...options, tokenTtlSeconds: 60 });
    const rejection = await tokens.verify(signedWithHeader(header)).catch((error: unknown) => error);
    expect(rejection).toBeInstanceOf(TokenRejectedError);
    expect(rejection).toMatchObject({ reason: 'unsupported_critical_header', message: 'The token has a critical header parameter (crit) the gateway does not support.' });
  });

  it('still takes a well-signed token whose header has no crit', async () => {
    await expect(createTokenService({ ...options, tokenTtlSeconds: 60 }).verify(signedWithHeader({ alg: 'HS256', typ: 'JWT' }))).resolves.toEqual(alice);
  });

  /** An HS256 token with these time claims, signed with the service's secret. */
  const signedWithTimes = (iat: number, exp: number) => {
    const claims = { sub: '1', email: 'alice@example.com', role: 'admin', iss: options.issuer, aud: options.audience, iat, exp };
    const signingInput = `${Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT' })).toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
    return `${signingInput}.${createHmac('sha256', options.secret).update(signingInput).digest('base64url')}`;
  };

  // Whoever holds the secret could mint a token for any lifetime: issued in 1970 and expiring in the year 5138, it was
  // taken (and remembered) for all of it.
  // jose's setIssuedAt() and setExpirationTime('60s') each read the clock: a second turning between them made a token
  // one second longer-lived than the lifetime.
  it('issues tokens whose exp is exactly tokenTtlSeconds after their iat, whenever the clock turns', async () => {
    const tokens = createTokenService({ ...options, tokenTtlSeconds: 60 });
    const RealDate = Date;
    let reads = 0;
    // Every clock reading (Date.now() or new Date()) half a second after the one before, from just before a second turns.
    const start = Math.ceil(RealDate.now() / 1000) * 1000 - 1;
    const reading = () => start + 500 * reads++;
    class SteppingDate extends RealDate {
      constructor(...args: unknown[]) {
        if (args.length === 0) super(reading());
        else super(...(args as [number]));
      }
      static override now(): number {
        return reading();
      }
    }
    globalThis.Date = SteppingDate as DateConstructor;
    try {
      const { token } = await tokens.issue(alice);
      const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { iat: number; exp: number };
      expect(claims.exp - claims.iat).toBe(60);
    } finally {
      globalThis.Date = RealDate;
    }
  });

  it('refuses a token of its own that lives longer than tokenTtlSeconds, however well signed', async () => {
    const tokens = createTokenService({ ...options, tokenTtlSeconds: 60 });
    const now = Math.floor(Date.now() / 1000);
    await expect(tokens.verify(signedWithTimes(0, 100_000_000_000))).rejects.toMatchObject({ reason: 'bad_claims' });
    await expect(tokens.verify(signedWithTimes(now, now + 62))).rejects.toMatchObject({ reason: 'bad_claims' });
    expect(tokens.remembers(signedWithTimes(now, now + 62))).toBe(false);
    await expect(tokens.verify(signedWithTimes(now, now + 60))).resolves.toEqual(alice);
    // A second over: what a release that read the clock twice as it issued could make.
    await expect(tokens.verify(signedWithTimes(now, now + 61))).resolves.toEqual(alice);
    await expect(tokens.verify(signedWithTimes(now - 30, now + 30))).resolves.toEqual(alice);
    // What it issued under a longer lifetime, once the lifetime is lowered.
    const { token } = await createTokenService({ ...options, tokenTtlSeconds: 120 }).issue(alice);
    await expect(tokens.verify(token)).rejects.toMatchObject({ reason: 'bad_claims' });
  });
});
