import { exportJWK, exportSPKI, generateKeyPair, importJWK, jwtVerify, SignJWT, type CryptoKey, type JWK, type JWTVerifyGetKey } from 'jose';
import { HEADER } from '../../otel/wire-names';
import { activeConfig, createLiveGateway } from '../../src/config-reload';
import { createGatewayApps } from '../../src/gateway';
import { MAX_JWKS_BYTES } from '../../src/tokens';
import { listen, memoryLogger } from '../helpers/servers';
import { startStack, type TestStack } from '../helpers/stack';
import { shippedConfigFile, testConfig } from '../helpers/test-config';
import { signToken } from '../helpers/tokens';
import { waitFor } from '../helpers/wait';
import { steppableWallClock } from '../helpers/wall-clock';

// jose's own jwtVerify, passed through unless a test holds one verification (holdVerification).
jest.mock('jose', () => {
  const actual = jest.requireActual<typeof import('jose')>('jose');
  return { ...actual, jwtVerify: jest.fn(actual.jwtVerify) };
});
const verifications = jest.mocked(jwtVerify);

/**
 * Holds the gateway's verification of `token` once its key was looked up, before the signature is checked, until
 * `release()`: a verification under way, for as long as the test needs, without sleeping.
 */
function holdVerification(token: string) {
  const actual = jest.requireActual<typeof import('jose')>('jose').jwtVerify;
  let keyFound!: () => void;
  let release!: () => void;
  const found = new Promise<void>((resolve) => (keyFound = resolve));
  const released = new Promise<void>((resolve) => (release = resolve));
  verifications.mockImplementation(((presented: string, key: JWTVerifyGetKey, options: object) => {
    if (presented !== token || typeof key !== 'function') return actual(presented, key, options);
    return actual(presented, async (...args: Parameters<JWTVerifyGetKey>) => {
      const looked = await key(...args);
      keyFound();
      await released;
      return looked;
    }, options);
  }) as typeof jwtVerify);
  return { keyFound: found, release };
}

const ISSUER = 'https://id.example.test/';
const AUDIENCE = 'koa-gateway-api';

interface ProviderKey {
  kid: string;
  alg: 'RS256' | 'ES256';
  privateKey: CryptoKey;
  jwk: JWK;
}

async function providerKey(kid: string, alg: 'RS256' | 'ES256'): Promise<ProviderKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  return { kid, alg, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}

/** The PEM (SPKI) of a key exactly as the provider publishes it in its JWKS. */
async function publicPem(key: ProviderKey): Promise<string> {
  return exportSPKI((await importJWK(key.jwk, key.alg, { extractable: true })) as CryptoKey);
}

/** An identity provider's JWKS endpoint that the test controls: its keys, its speed, its health. */
async function startJwksServer() {
  const state = { keys: [] as ProviderKey[], fetches: 0, mode: 'ok' as 'ok' | 'slow' | 'broken' | 'failing' | 'not-a-key-set' | 'members-not-keys' | 'deeply-nested' | 'byte-order-mark' };
  const server = await listen((_req, res) => {
    state.fetches++;
    if (state.mode === 'slow') return void setTimeout(() => res.end('{"keys":[]}'), 5000).unref();
    if (state.mode === 'failing') return void res.writeHead(500).end('upstream trouble');
    res.setHeader('content-type', 'application/json');
    if (state.mode === 'broken') return void res.end('not json');
    if (state.mode === 'members-not-keys') return void res.end('{"keys":["maintenance",null]}');
    // 10 KB: a member nested 5,000 levels deep, past what jose's structuredClone of the set survives.
    if (state.mode === 'deeply-nested') return void res.end(`{"keys":[{"kty":"RSA","kid":"x","junk":${'['.repeat(5000)}${']'.repeat(5000)}}]}`);
    const keySet = JSON.stringify(state.mode === 'not-a-key-set' ? { error: 'maintenance' } : { keys: state.keys.map((key) => key.jwk) });
    res.end(state.mode === 'byte-order-mark' ? `\uFEFF${keySet}` : keySet);
  });
  return Object.assign(server, { state });
}

function providerToken(key: ProviderKey, claims: Record<string, unknown> = {}, options: { issuer?: string; audience?: string; expiresIn?: string; withoutKid?: boolean; issuedAt?: string } = {}): Promise<string> {
  return new SignJWT({ email: 'dana@example.test', email_verified: true, ...claims })
    .setProtectedHeader(options.withoutKid ? { alg: key.alg } : { alg: key.alg, kid: key.kid })
    .setSubject(typeof claims.sub === 'string' ? claims.sub : 'idp-dana')
    .setIssuer(options.issuer ?? ISSUER)
    .setAudience(options.audience ?? AUDIENCE)
    .setIssuedAt(options.issuedAt)
    .setExpirationTime(options.expiresIn ?? '10m')
    .sign(key.privateKey);
}

/** A gateway verifying provider tokens at `jwksUrl` (refetching for every unknown kid), with the verified-token cache on. */
function startProviderStack(jwksUrl: string, jwks: { timeoutMs: number; cacheMaxAgeMs: number }): Promise<TestStack> {
  return startStack({
    env: { JWKS_URL: `${jwksUrl}/.well-known/jwks.json`, JWKS_ISSUER: ISSUER, JWKS_AUDIENCE: AUDIENCE, RATE_LIMIT_MAX: '100000' },
    overrides: { auth: { jwks: { url: 'http://placeholder', issuer: 'x', audience: 'x', cooldownMs: 0, ...jwks } } },
  });
}

describe('a provider token remembered as verified', () => {
  let jwks: Awaited<ReturnType<typeof startJwksServer>>;
  let stack: TestStack;

  beforeAll(async () => {
    jwks = await startJwksServer();
    // The verified-token cache on (its default), and a key set trusted for one second.
    stack = await startProviderStack(jwks.url, { timeoutMs: 500, cacheMaxAgeMs: 1000 });
  });
  afterAll(async () => {
    await stack.close();
    await jwks.close();
  });

  it('stops working once the provider withdrew its key, though the token is far from expiry (it used to work until a restart)', async () => {
    const withdrawn = await providerKey('withdrawn', 'RS256');
    const next = await providerKey('next', 'RS256');
    jwks.state.keys = [withdrawn];
    const token = await providerToken(withdrawn, {}, { expiresIn: '3650d' });
    const call = () => fetch(`${stack.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${token}` } });
    expect((await call()).status).toBe(200);
    expect((await call()).status).toBe(200);
    jwks.state.keys = [next];
    // Within about the key set's trust (cacheMaxAgeMs), however long the token still runs.
    await waitFor(async () => (await call()).status === 401, 'the token to be refused', 10_000);
  });

  // Remembered until the set's fetch time on the wall clock plus cacheMaxAgeMs: stepped back an hour, the token of a
  // withdrawn key was accepted for the hour, nothing prompting a refetch while clients kept sending it.
  it('stops working once the provider withdrew its key, though the wall clock stepped back meanwhile', async () => {
    const withdrawn = await providerKey('withdrawn-before-step', 'RS256');
    const next = await providerKey('next-after-step', 'RS256');
    jwks.state.keys = [withdrawn];
    // Issued before the step, so that its iat is not in the future on the stepped clock.
    const token = await providerToken(withdrawn, {}, { issuedAt: '2h ago', expiresIn: '3h' });
    const call = () => fetch(`${stack.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${token}` } });
    expect((await call()).status).toBe(200);
    const wallClock = steppableWallClock();
    wallClock.install();
    try {
      jwks.state.keys = [next];
      wallClock.step(-3_600_000);
      // Within about the key set's trust (cacheMaxAgeMs: 1 s), not the step's hour.
      await waitFor(async () => (await call()).status === 401, 'the token to be refused', 10_000);
    } finally {
      wallClock.restore();
    }
  });

  it('refuses a token first seen late in its key set\'s life once a refetch dropped its key (it stayed accepted for cacheMaxAgeMs after)', async () => {
    const old = await providerKey('old-late', 'RS256');
    const fresh = await providerKey('fresh-late', 'RS256');
    jwks.state.keys = [old];
    const call = async (token: string) => (await fetch(`${stack.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${token}` } })).status;
    // The key set is fetched now (kid `old-late` is new to it)...
    expect(await call(await providerToken(old, { sub: 'idp-early' }))).toBe(200);
    await new Promise((resolve) => setTimeout(resolve, 600));
    // ...and this token is first verified 600 ms into the set's second of trust: remembered from then on, it outlived the set.
    const late = await providerToken(old, { sub: 'idp-late' });
    expect(await call(late)).toBe(200);
    jwks.state.keys = [fresh];
    // A token naming a key the set lacks makes the gateway refetch: the set it holds now has no `old-late`.
    const fetches = jwks.state.fetches;
    expect(await call(await providerToken(fresh, { sub: 'idp-fresh' }))).toBe(200);
    expect(jwks.state.fetches).toBeGreaterThan(fetches);
    expect(await call(late)).toBe(401);
  });
});

describe('a provider key withdrawn while a token signed with it is being verified', () => {
  let jwks: Awaited<ReturnType<typeof startJwksServer>>;
  let stack: TestStack;

  beforeAll(async () => {
    jwks = await startJwksServer();
    // The verified-token cache on, a key set trusted far longer than the test runs, and a refetch for every unknown kid.
    stack = await startProviderStack(jwks.url, { timeoutMs: 2000, cacheMaxAgeMs: 600_000 });
  });
  afterAll(async () => {
    await stack.close();
    await jwks.close();
  });
  afterEach(() => verifications.mockImplementation(jest.requireActual<typeof import('jose')>('jose').jwtVerify));

  const call = async (token: string) => (await fetch(`${stack.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${token}` } })).status;
  /** Publishes `keys` and sends a token naming a kid the gateway does not know: the refetch has landed when this resolves. */
  async function rotateTo(keys: ProviderKey[], trigger: ProviderKey) {
    jwks.state.keys = keys;
    const fetches = jwks.state.fetches;
    const status = await call(await providerToken(trigger, { sub: 'idp-trigger' }));
    expect(jwks.state.fetches).toBe(fetches + 1);
    return status;
  }

  // It was remembered as checked against the new set, which it was not, and stayed accepted until its key set aged out.
  it('refuses the token, then and later, when the refetch that dropped its kid landed during its verification', async () => {
    const withdrawn = await providerKey('race-withdrawn', 'RS256');
    const next = await providerKey('race-next', 'RS256');
    jwks.state.keys = [withdrawn];
    expect(await call(await providerToken(withdrawn, { sub: 'idp-before' }))).toBe(200);
    const during = await providerToken(withdrawn, { sub: 'idp-during' });
    const held = holdVerification(during);
    const answer = call(during);
    await held.keyFound;
    expect(await rotateTo([next], next)).toBe(200);
    held.release();
    expect(await answer).toBe(401);
    expect(await call(during)).toBe(401);
  });

  // K named the old key when the verification looked it up, the new one once it finished: the token, signed with a key
  // the provider no longer publishes (replaced under the same kid, as after a leak), was accepted that once.
  it('refuses a token signed with the key its kid named before, when a refetch re-publishing the kid with other key material landed during its verification', async () => {
    const replaced = await providerKey('race-republished', 'RS256');
    const replacement = await providerKey('race-republished', 'RS256');
    jwks.state.keys = [replaced];
    expect(await call(await providerToken(replaced, { sub: 'idp-republished-before' }))).toBe(200);
    const during = await providerToken(replaced, { sub: 'idp-republished-during' });
    const held = holdVerification(during);
    const answer = fetch(`${stack.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${during}` } });
    await held.keyFound;
    const trigger = await providerKey('race-republish-trigger', 'RS256');
    expect(await rotateTo([replacement, trigger], trigger)).toBe(200);
    held.release();
    const refused = await answer;
    expect(refused.status).toBe(401);
    // Its signature fails against the key the kid names now: the key it was signed with is no longer published.
    expect(refused.headers.get('www-authenticate')).toContain('error_description="unknown key"');
    expect(await call(during)).toBe(401);
    // The key published under the kid now works.
    expect(await call(await providerToken(replacement, { sub: 'idp-republished-after' }))).toBe(200);
  });

  it('refuses a token without kid that verified across a refetch withdrawing its key, then and later (it was accepted that once)', async () => {
    const unnamed = await providerKey('race-unnamed', 'RS256');
    const named = await providerKey('race-named-ec', 'ES256');
    const next = await providerKey('race-named', 'RS256');
    // Published without kid: a token without one is checked against the only key of its algorithm.
    const { kid: _, ...jwkWithoutKid } = unnamed.jwk;
    expect(await rotateTo([{ ...unnamed, jwk: jwkWithoutKid }, named], named)).toBe(200);
    expect(await call(await providerToken(unnamed, { sub: 'idp-unnamed-before' }, { withoutKid: true }))).toBe(200);
    const during = await providerToken(unnamed, { sub: 'idp-unnamed-during' }, { withoutKid: true });
    const held = holdVerification(during);
    const answer = call(during);
    await held.keyFound;
    expect(await rotateTo([next], next)).toBe(200);
    held.release();
    // Its key was published when it arrived, but not once it verified: checked again against the set held then.
    expect(await answer).toBe(401);
    expect(await call(during)).toBe(401);
  });

  it('accepts and remembers a token without kid that verified across a refetch still publishing its key', async () => {
    const kept = await providerKey('race-kept', 'RS256');
    const { kid: _, ...jwkWithoutKid } = kept.jwk;
    const unnamed = { ...kept, jwk: jwkWithoutKid };
    const trigger = await providerKey('race-kept-trigger', 'ES256');
    expect(await rotateTo([unnamed, trigger], trigger)).toBe(200);
    const during = await providerToken(kept, { sub: 'idp-kept-during' }, { withoutKid: true });
    const held = holdVerification(during);
    const answer = call(during);
    await held.keyFound;
    const nextTrigger = await providerKey('race-kept-trigger-2', 'ES256');
    expect(await rotateTo([unnamed, nextTrigger], nextTrigger)).toBe(200);
    held.release();
    expect(await answer).toBe(200);
    const checks = verifications.mock.calls.filter(([verified]) => verified === during).length;
    expect(await call(during)).toBe(200);
    // Remembered as checked against the set held now: not verified again.
    expect(verifications.mock.calls.filter(([verified]) => verified === during)).toHaveLength(checks);
  });

  // The check against the set held now is a whole verification: a failure there other than the key's (its `exp`
  // passing in between, here) was reported as unknown_key.
  it('refuses a token whose exp passed between its check and the check against the set held now as expired, not as an unknown key', async () => {
    const kept = await providerKey('race-expiring', 'RS256');
    const { kid: _, ...jwkWithoutKid } = kept.jwk;
    const unnamed = { ...kept, jwk: jwkWithoutKid };
    const trigger = await providerKey('race-expiring-trigger', 'ES256');
    expect(await rotateTo([unnamed, trigger], trigger)).toBe(200);
    const during = await providerToken(kept, { sub: 'idp-expiring-during' }, { withoutKid: true });
    const held = holdVerification(during);
    const answer = fetch(`${stack.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${during}` } });
    await held.keyFound;
    const nextTrigger = await providerKey('race-expiring-trigger-2', 'ES256');
    expect(await rotateTo([unnamed, nextTrigger], nextTrigger)).toBe(200);
    // The second check of the token runs an hour later, as far as its clock says: past the token's exp.
    const actual = jest.requireActual<typeof import('jose')>('jose').jwtVerify;
    verifications.mockImplementation(((presented: string, key: JWTVerifyGetKey, options: object) =>
      actual(presented, key, presented === during ? { ...options, currentDate: new Date(Date.now() + 3_600_000) } : options)) as typeof jwtVerify);
    held.release();
    const response = await answer;
    expect(response.status).toBe(401);
    expect(response.headers.get('www-authenticate')).toContain('error_description="expired"');
    expect(await response.json()).toMatchObject({ code: 'invalid_token', detail: 'The token has expired.' });
  });

  it('stops trusting a remembered token once a refetch publishes other key material under its kid (the kid alone kept it)', async () => {
    const first = await providerKey('race-reused', 'RS256');
    const second = await providerKey('race-reused', 'RS256');
    jwks.state.keys = [first];
    const token = await providerToken(first, { sub: 'idp-reused' });
    expect(await call(token)).toBe(200);
    expect(await call(token)).toBe(200);
    // Remembered: verified once for the two requests.
    expect(verifications.mock.calls.filter(([verified]) => verified === token)).toHaveLength(1);
    expect(await rotateTo([second], await providerKey('race-unpublished', 'RS256'))).toBe(401);
    expect(await call(token)).toBe(401);
  });

  // RFC 7517 4.5 lets keys of different types share a kid. Tracked one key per kid (the last listed), a remembered
  // token signed with the RSA key was judged by the EC one: the RSA key withdrawn and the EC one kept, it stayed
  // accepted for the set's whole trust.
  it('stops trusting a remembered token once its key is withdrawn, though another key of its kid stays', async () => {
    const rsa = await providerKey('shared-kid', 'RS256');
    const ec = await providerKey('shared-kid', 'ES256');
    jwks.state.keys = [rsa, ec];
    const token = await providerToken(rsa, { sub: 'idp-shared' });
    expect(await call(token)).toBe(200);
    expect(await call(token)).toBe(200);
    expect(verifications.mock.calls.filter(([verified]) => verified === token)).toHaveLength(1);
    const trigger = await providerKey('shared-kid-trigger', 'RS256');
    expect(await rotateTo([ec, trigger], trigger)).toBe(200);
    expect(await call(token)).toBe(401);
    // The key kept still works.
    expect(await call(await providerToken(ec, { sub: 'idp-shared-ec' }))).toBe(200);
  });
});

describe('tokens from an identity provider (JWKS)', () => {
  let jwks: Awaited<ReturnType<typeof startJwksServer>>;
  let stack: TestStack;
  let rsa: ProviderKey;
  let ec: ProviderKey;

  beforeAll(async () => {
    jwks = await startJwksServer();
    rsa = await providerKey('rsa-1', 'RS256');
    ec = await providerKey('ec-1', 'ES256');
    jwks.state.keys = [rsa, ec];
    stack = await startStack({
      env: { JWKS_URL: `${jwks.url}/.well-known/jwks.json`, JWKS_ISSUER: ISSUER, JWKS_AUDIENCE: AUDIENCE, RATE_LIMIT_MAX: '100000' },
      overrides: { auth: { verifiedTokenCacheSize: 0, jwks: { url: 'http://placeholder', issuer: 'x', audience: 'x', timeoutMs: 500, cooldownMs: 0 } } },
    });
  });
  afterAll(async () => {
    await stack.close();
    await jwks.close();
  });
  beforeEach(() => {
    jwks.state.mode = 'ok';
  });

  it('passes an unverified email on with auth.jwks.passUnverifiedEmail', async () => {
    const passing = await startStack({
      env: { JWKS_URL: `${jwks.url}/.well-known/jwks.json`, JWKS_ISSUER: ISSUER, JWKS_AUDIENCE: AUDIENCE },
      overrides: { auth: { jwks: { url: 'http://placeholder', issuer: 'x', audience: 'x', timeoutMs: 500, cooldownMs: 0, passUnverifiedEmail: true } } },
    });
    try {
      const response = await fetch(`${passing.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${await providerToken(rsa, { email_verified: false })}` } });
      expect(response.status).toBe(200);
      expect(passing.notifications.requests.at(-1)!.headers[HEADER.userEmail]).toBe('dana@example.test');
    } finally {
      await passing.close();
    }
  });

  const call = (token: string) => fetch(`${stack.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${token}` } });

  it.each([
    { desc: 'RS256', key: () => rsa },
    { desc: 'ES256', key: () => ec },
  ])('accepts a valid $desc token and injects the provider identity (role user by default)', async ({ key }) => {
    const response = await call(await providerToken(key()));
    expect(response.status).toBe(200);
    expect(stack.notifications.requests.at(-1)!.headers).toMatchObject({ [HEADER.userId]: 'idp:idp-dana', [HEADER.userRole]: 'user', [HEADER.userEmail]: 'dana@example.test' });
  });

  it('takes the role from the role claim', async () => {
    expect((await call(await providerToken(rsa, { role: 'admin' }))).status).toBe(200);
    expect(stack.notifications.requests.at(-1)!.headers[HEADER.userRole]).toBe('admin');
  });

  it('treats a role claim that is not a string as role user, never more', async () => {
    expect((await call(await providerToken(rsa, { role: ['admin'] }))).status).toBe(200);
    expect(stack.notifications.requests.at(-1)!.headers[HEADER.userRole]).toBe('user');
  });

  // With many providers a user sets their own address unproven: passed on (and signed) as X-User-Email, a service that
  // matches accounts by email took it for the owner's.
  it.each([
    { desc: 'email_verified false', claims: { email_verified: false } },
    { desc: 'no email_verified', claims: { email_verified: undefined } },
    { desc: 'email_verified as the string "true"', claims: { email_verified: 'true' } },
  ])('leaves out an email with $desc, and takes the token', async ({ claims }) => {
    const response = await call(await providerToken(rsa, { email: 'alice@example.com', ...claims }));
    expect(response.status).toBe(200);
    const seen = stack.notifications.requests.at(-1)!.headers;
    expect(seen[HEADER.userId]).toBe('idp:idp-dana');
    expect(seen[HEADER.userEmail]).toBeUndefined();
  });

  it('leaves out an email that cannot travel as a header instead of failing the request', async () => {
    const response = await call(await providerToken(ec, { email: 'dána@例え.jp' }));
    expect(response.status).toBe(200);
    const seen = stack.notifications.requests.at(-1)!.headers;
    expect(seen[HEADER.userId]).toBe('idp:idp-dana');
    expect(seen[HEADER.userEmail]).toBeUndefined();
  });

  // OpenID Connect Core 2 allows a `sub` of 255 ASCII characters: counted with the `idp:` before it, one of 252-255
  // was refused. The services take the prefixed id (up to 512 characters).
  it('accepts a provider sub of 255 characters, passed on behind the subject prefix', async () => {
    const sub = 's'.repeat(255);
    const response = await call(await providerToken(rsa, { sub }));
    expect(response.status).toBe(200);
    expect(stack.notifications.requests.at(-1)!.headers[HEADER.userId]).toBe(`idp:${sub}`);
    // The characters are judged on the value passed on: behind the prefix a leading space is inside it, and travels.
    expect((await call(await providerToken(rsa, { sub: ' 42' }))).status).toBe(200);
    expect(stack.notifications.requests.at(-1)!.headers[HEADER.userId]).toBe('idp: 42');
  });

  // Such a token used to get a bare text/plain 404: the upstream call failed on the invalid header value.
  it.each([
    { desc: 'a role with a line break (header injection)', claims: { role: 'user\r\nx-user-role: admin' } },
    { desc: 'a role outside Latin-1', claims: { role: '管理者' } },
    { desc: 'a sub outside Latin-1', claims: { sub: '名前' } },
    { desc: 'a sub longer than 255 characters', claims: { sub: 'x'.repeat(256) } },
    // A header value loses the spaces at its ends: the services would see another user, `idp-alice`.
    { desc: 'a sub ending in a space', claims: { sub: 'idp-alice ' } },
    { desc: 'a role starting with a space', claims: { role: ' admin' } },
    // A comma separates list elements (RFC 9110 5.3): a service reading the header as a list would see user 1, or role admin.
    { desc: 'a sub with a comma', claims: { sub: 'mallory, 1' } },
    { desc: 'a role with a comma', claims: { role: 'user,admin' } },
  ])('refuses a provider token with $desc as 401 problem+json, and nothing reaches the service', async ({ claims }) => {
    const before = stack.notifications.requests.length;
    const response = await call(await providerToken(rsa, claims));
    expect(response.status).toBe(401);
    expect(response.headers.get('content-type')).toBe('application/problem+json');
    expect(await response.json()).toMatchObject({ code: 'invalid_token', requestId: response.headers.get(HEADER.requestId) });
    expect(stack.notifications.requests.length).toBe(before);
  });

  it('refetches the key set for an unknown kid after a key rotation', async () => {
    const rotated = await providerKey('rsa-2', 'RS256');
    const before = jwks.state.fetches;
    jwks.state.keys = [rsa, ec, rotated];
    expect((await call(await providerToken(rotated))).status).toBe(200);
    expect(jwks.state.fetches).toBeGreaterThan(before);
  });

  it.each([
    { desc: 'a wrong issuer', token: () => providerToken(rsa, {}, { issuer: 'https://evil.example/' }) },
    { desc: 'a wrong audience', token: () => providerToken(rsa, {}, { audience: 'other-api' }) },
    { desc: 'an expired token', token: () => providerToken(rsa, {}, { expiresIn: '-1m' }) },
    { desc: 'a token issued a day from now (iat past the clock tolerance)', token: () => providerToken(rsa, {}, { issuedAt: '1d from now', expiresIn: '2d' }) },
    { desc: 'a key the provider does not publish', token: async () => providerToken(await providerKey('rsa-1', 'RS256')) },
    // Algorithm confusion: the provider's own published keys as HMAC secrets, claims otherwise perfect (the
    // gateway's issuer and audience, or the provider's): only the alg-picks-the-verifier rule can refuse these.
    { desc: 'HS256 with the provider RSA public key PEM as HMAC secret', token: async () => signToken({ secret: await publicPem(rsa) }) },
    { desc: 'HS256 with the provider RSA public key PEM as HMAC secret and the provider claims', token: async () => signToken({ secret: await publicPem(rsa), issuer: ISSUER, audience: AUDIENCE }) },
    { desc: 'HS256 with the provider EC public key PEM as HMAC secret', token: async () => signToken({ secret: await publicPem(ec) }) },
    { desc: 'HS256 with the provider RSA public JWK (JSON) as HMAC secret', token: async () => signToken({ secret: JSON.stringify(rsa.jwk), issuer: ISSUER, audience: AUDIENCE }) },
  ])('refuses $desc with 401 invalid_token', async ({ token }) => {
    const before = stack.notifications.requests.length;
    const response = await call(await token());
    expect(response.status).toBe(401);
    expect(response.headers.get('www-authenticate')).toContain('error="invalid_token"');
    expect(((await response.json()) as { code: string }).code).toBe('invalid_token');
    expect(stack.notifications.requests.length).toBe(before);
  });

  it('still verifies the gateway own HS256 tokens, and only with its own key', async () => {
    expect((await call(await signToken({ subject: '2', claims: { role: 'user', email: 'bob@example.com' } }))).status).toBe(200);
  });

  it.each([
    { desc: 'answers slower than its timeout', mode: 'slow' as const },
    { desc: 'serves broken JSON', mode: 'broken' as const },
    { desc: 'answers 500', mode: 'failing' as const },
    { desc: 'serves JSON that is not a key set', mode: 'not-a-key-set' as const },
  ])('fails closed with 503 auth_unavailable, promptly, when the JWKS $desc', async ({ mode }) => {
    const unknown = await providerKey(`fresh-${mode}`, 'RS256');
    jwks.state.mode = mode;
    const started = Date.now();
    const response = await call(await providerToken(unknown));
    expect(response.status).toBe(503);
    expect(await response.json()).toMatchObject({ code: 'auth_unavailable', requestId: response.headers.get(HEADER.requestId) });
    // Generous: the 500 ms JWKS timeout applied, not a hang.
    expect(Date.now() - started).toBeLessThan(4000);
    // Meanwhile the gateway's own tokens keep working.
    expect((await call(await signToken({ subject: '2', claims: { role: 'user', email: 'bob@example.com' } }))).status).toBe(200);
  });

  it('keeps serving the gateway own tokens at once while a slow JWKS fetch is pending', async () => {
    jwks.state.mode = 'slow';
    const providerCall = await providerToken(await providerKey('fresh-concurrent', 'RS256'));
    const fetchesBefore = jwks.state.fetches;
    const started = Date.now();
    let providerSettled = false;
    const pending = call(providerCall).then((response) => {
      providerSettled = true;
      return { status: response.status, ms: Date.now() - started };
    });
    // The gateway's JWKS fetch has reached the (slow) provider: from here on it is pending.
    for (let i = 0; i < 300 && jwks.state.fetches === fetchesBefore; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(jwks.state.fetches).toBeGreaterThan(fetchesBefore);
    const own = await call(await signToken({ subject: '2', claims: { role: 'user', email: 'bob@example.com' } }));
    expect(own.status).toBe(200);
    // The own token never waits for the JWKS fetch: it is answered while the provider token is still pending ...
    expect(providerSettled).toBe(false);
    // ... which ends in 503 after about its timeout, not after the provider's 5 s.
    const provider = await pending;
    expect(provider.status).toBe(503);
    expect(provider.ms).toBeLessThan(4000);
  });

  it('fails closed with 503 when the JWKS server is down', async () => {
    const down = await startStack({
      env: { JWKS_URL: 'http://127.0.0.1:9/jwks.json', JWKS_ISSUER: ISSUER, JWKS_AUDIENCE: AUDIENCE },
      overrides: { auth: { jwks: { url: 'http://placeholder', issuer: 'x', audience: 'x', timeoutMs: 500 } } },
    });
    try {
      const response = await fetch(`${down.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${await providerToken(rsa)}` } });
      expect(response.status).toBe(503);
      expect(((await response.json()) as { code: string }).code).toBe('auth_unavailable');
      expect(down.serviceRequests()).toHaveLength(0);
    } finally {
      await down.close();
    }
  });

  it('refuses a key set over MAX_JWKS_BYTES as it arrives (503), reading a bounded part of it', async () => {
    // An answer that never ends within the timeout: what the gateway reads of it is what the server got written.
    let written = 0;
    const endless = await listen((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      const chunk = Buffer.alloc(64 * 1024, 0x20);
      const pump = () => {
        while (!res.destroyed && written < 512 * 1024 * 1024) {
          written += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
      };
      res.write('{"keys":[');
      pump();
    });
    const bounded = await startStack({
      env: { JWKS_URL: `${endless.url}/jwks.json`, JWKS_ISSUER: ISSUER, JWKS_AUDIENCE: AUDIENCE },
      overrides: { auth: { jwks: { url: 'http://placeholder', issuer: 'x', audience: 'x', timeoutMs: 5000, cooldownMs: 0 } } },
    });
    try {
      const response = await fetch(`${bounded.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${await providerToken(rsa)}` } });
      expect(response.status).toBe(503);
      expect(((await response.json()) as { code: string }).code).toBe('auth_unavailable');
      // The limit, plus what the sockets on the way buffered: nowhere near the hundreds of MiB it used to read.
      expect(written).toBeLessThan(MAX_JWKS_BYTES + 16 * 1024 * 1024);
    } finally {
      await bounded.close();
      await endless.close();
    }
  });

  it.each([
    { desc: 'a failed key-set fetch', mode: 'failing' as const },
    { desc: 'a key set whose members are not keys (jose refused it, and each provider token fetched again)', mode: 'members-not-keys' as const },
    { desc: 'a key set nested thousands of levels deep (jose refused it, and each provider token fetched again)', mode: 'deeply-nested' as const },
  ])('remembers $desc for a moment: provider tokens get 503 at once, without a fetch each', async ({ mode }) => {
    const failing = await startJwksServer();
    failing.state.mode = mode;
    const backingOff = await startStack({
      env: { JWKS_URL: `${failing.url}/jwks.json`, JWKS_ISSUER: ISSUER, JWKS_AUDIENCE: AUDIENCE },
      overrides: { auth: { verifiedTokenCacheSize: 0, jwks: { url: 'http://placeholder', issuer: 'x', audience: 'x', timeoutMs: 500 } } },
    });
    try {
      const token = await providerToken(rsa);
      const statuses: number[] = [];
      for (let i = 0; i < 10; i++) statuses.push((await fetch(`${backingOff.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${token}` } })).status);
      expect(statuses).toEqual(Array(10).fill(503));
      // One fetch; the nine after it within the back-off (the default cooldown caps it at 5 s) asked nobody.
      expect(failing.state.fetches).toBe(1);
    } finally {
      await backingOff.close();
      await failing.close();
    }
  });

  // Buffer's toString kept the mark and JSON.parse refused the set: every provider token was 503 while jose reads it.
  it('reads a key set that starts with a UTF-8 byte-order mark, as jose does', async () => {
    const marked = await startJwksServer();
    marked.state.mode = 'byte-order-mark';
    marked.state.keys = [rsa];
    const stack = await startStack({
      env: { JWKS_URL: `${marked.url}/jwks.json`, JWKS_ISSUER: ISSUER, JWKS_AUDIENCE: AUDIENCE },
      overrides: { auth: { jwks: { url: 'http://placeholder', issuer: 'x', audience: 'x', timeoutMs: 500 } } },
    });
    try {
      const response = await fetch(`${stack.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${await providerToken(rsa)}` } });
      expect(response.status).toBe(200);
      expect(marked.state.fetches).toBe(1);
    } finally {
      await stack.close();
      await marked.close();
    }
  });

  it('asks the provider again once the back-off has passed, though the wall clock stepped back meanwhile', async () => {
    const failing = await startJwksServer();
    failing.state.mode = 'failing';
    failing.state.keys = [rsa];
    const backingOff = await startStack({
      env: { JWKS_URL: `${failing.url}/jwks.json`, JWKS_ISSUER: ISSUER, JWKS_AUDIENCE: AUDIENCE, RATE_LIMIT_MAX: '100000' },
      overrides: { auth: { verifiedTokenCacheSize: 0, jwks: { url: 'http://placeholder', issuer: 'x', audience: 'x', timeoutMs: 500, cooldownMs: 200 } } },
    });
    // Issued before the step, so that its iat is not in the future on the stepped clock.
    const token = await providerToken(rsa, {}, { issuedAt: '2h ago', expiresIn: '3h' });
    const wallClock = steppableWallClock();
    try {
      expect((await fetch(`${backingOff.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${token}` } })).status).toBe(503);
      // The provider is back, and NTP steps the wall clock back an hour.
      failing.state.mode = 'ok';
      wallClock.install();
      wallClock.step(-3_600_000);
      // Past authentication: what the service then says of a gateway signature made on the stepped clock is not this test's.
      const status = async () => (await fetch(`${backingOff.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${token}` } })).status;
      await waitFor(async () => (await status()) !== 503, 'a provider token to be verified again');
      expect(await status()).not.toBe(401);
      expect(failing.state.fetches).toBe(2);
    } finally {
      wallClock.restore();
      await backingOff.close();
      await failing.close();
    }
  });

  it('fetches the set again for a rotated-in kid once the cooldown has passed, though the wall clock stepped back meanwhile', async () => {
    const rotating = await startJwksServer();
    const before = await providerKey('before-rotation', 'RS256');
    const after = await providerKey('after-rotation', 'RS256');
    rotating.state.keys = [before];
    const stack = await startStack({
      env: { JWKS_URL: `${rotating.url}/jwks.json`, JWKS_ISSUER: ISSUER, JWKS_AUDIENCE: AUDIENCE, RATE_LIMIT_MAX: '100000' },
      overrides: { auth: { verifiedTokenCacheSize: 0, jwks: { url: 'http://placeholder', issuer: 'x', audience: 'x', timeoutMs: 500, cooldownMs: 200, cacheMaxAgeMs: 600_000 } } },
    });
    // Issued before the step, so that their iat is not in the future on the stepped clock.
    const oldToken = await providerToken(before, {}, { issuedAt: '2h ago', expiresIn: '3h' });
    const newToken = await providerToken(after, {}, { issuedAt: '2h ago', expiresIn: '3h' });
    const status = async (token: string) => (await fetch(`${stack.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${token}` } })).status;
    const wallClock = steppableWallClock();
    try {
      expect(await status(oldToken)).toBe(200);
      // The provider rotates a key in, and NTP steps the wall clock back an hour. jose's cooldown, timed on the wall
      // clock, held the refetch off for the hour: the new key's tokens were 401.
      rotating.state.keys = [before, after];
      wallClock.install();
      wallClock.step(-3_600_000);
      // Past authentication: what the service then says of a gateway signature made on the stepped clock is not this test's.
      await waitFor(async () => (await status(newToken)) !== 401, 'a token of the rotated-in key to be verified');
      expect(rotating.state.fetches).toBe(2);
    } finally {
      wallClock.restore();
      await stack.close();
      await rotating.close();
    }
  });

  it('refuses provider algorithms when no JWKS is configured', async () => {
    const plain = await startStack();
    try {
      const response = await fetch(`${plain.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${await providerToken(rsa)}` } });
      expect(response.status).toBe(401);
    } finally {
      await plain.close();
    }
  });
});


// A reload rebuilt the token service whatever changed: the provider's key set fetched before an outage, the verified
// tokens and the fetch back-off went with it, and a reload that changed a rate limit turned the outage into 503s for
// every provider token (in a cluster, in every worker at once).
describe('the provider key set across a config reload', () => {
  it('keeps verifying provider tokens from the set fetched before the provider went down, across a reload that left auth alone', async () => {
    const jwks = await startJwksServer();
    const key = await providerKey('reload-kid', 'RS256');
    jwks.state.keys = [key];
    const orders = await listen((_req, res) => void res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}'));
    const { logger } = memoryLogger('gateway');
    const config = (max: number) =>
      testConfig({ users: 'http://127.0.0.1:9', orders: orders.url, notifications: 'http://127.0.0.1:9' }, {
        rateLimit: { max, windowMs: 60_000 },
        auth: { ...(shippedConfigFile().auth as object), verifiedTokenCacheSize: 0, jwks: { url: `${jwks.url}/jwks.json`, issuer: ISSUER, audience: AUDIENCE, timeoutMs: 500, cacheMaxAgeMs: 600_000, cooldownMs: 0 } },
      });
    // A build that fails after it was made (as one can: a bug), for the failed reloads below.
    let failBuilds = false;
    const live = createLiveGateway(
      activeConfig(config(1000)),
      (active, kept) => {
        const built = createGatewayApps(active.config, { logger, metrics: false, kept, configVersion: active.version });
        if (failBuilds) throw new Error('injected build failure');
        return built;
      },
      logger,
    );
    const gateway = await listen(live.listener);
    const token = await providerToken(key);
    const status = async () => (await fetch(`${gateway.url}/api/orders`, { headers: { authorization: `Bearer ${token}` } })).status;
    try {
      expect(await status()).toBe(200);
      jwks.state.mode = 'failing';
      // No verified-token cache: each request is checked against the held set, which the outage does not touch.
      expect(await status()).toBe(200);
      expect(live.apply(activeConfig(config(1001)))).toBeUndefined();
      expect(await status()).toBe(200);
      // Two reloads with other provider settings whose builds fail: the running token service stays the one kept.
      failBuilds = true;
      for (const cacheMaxAgeMs of [400_000, 300_000]) {
        expect(live.apply(activeConfig({ ...config(1001), auth: { ...config(1001).auth, jwks: { ...config(1001).auth.jwks!, cacheMaxAgeMs } } }))).toBe('injected build failure');
      }
      failBuilds = false;
      expect(live.apply(activeConfig(config(1002)))).toBeUndefined();
      expect(await status()).toBe(200);
      expect(jwks.state.fetches).toBe(1);
      // A reload that changes the provider's settings starts from nothing, as it must: the set may be another's.
      expect(live.apply(activeConfig({ ...config(1001), auth: { ...config(1001).auth, jwks: { ...config(1001).auth.jwks!, cacheMaxAgeMs: 500_000 } } }))).toBeUndefined();
      expect(await status()).toBe(503);
    } finally {
      await gateway.close();
      await orders.close();
      await jwks.close();
    }
  });
});
