import { createTokenService, TokenRejectedError } from '../../src/tokens';

describe('token service', () => {
  const options = { secret: 'unit-test-secret-that-is-long-enough!!', issuer: 'koa-gateway', audience: 'koa-gateway-api', tokenTtlSeconds: 1, clockToleranceSeconds: 0 };
  const alice = { id: '1', email: 'alice@example.com', role: 'admin' };

  it('verifies what it issued, again and again (from its cache)', async () => {
    const tokens = createTokenService({ ...options, tokenTtlSeconds: 60 });
    const { token, expiresIn } = await tokens.issue(alice);
    expect(expiresIn).toBe(60);
    for (let i = 0; i < 3; i++) await expect(tokens.verify(token)).resolves.toEqual(alice);
  });

  it('never serves a cached token past its expiry', async () => {
    // iat is whole seconds, so a 1 s token issued at x.999 would already be expired at x+1.001: with 2 s it
    // still has more than 1 s left when verified right away, and is surely expired 3.1 s later.
    const tokens = createTokenService({ ...options, tokenTtlSeconds: 2 });
    const { token } = await tokens.issue(alice);
    await expect(tokens.verify(token)).resolves.toEqual(alice);
    await new Promise((resolve) => setTimeout(resolve, 3100));
    const rejection = await tokens.verify(token).catch((error: unknown) => error);
    expect(rejection).toBeInstanceOf(TokenRejectedError);
    expect((rejection as TokenRejectedError).reason).toBe('expired');
  });

  it('refuses a token of another gateway instance with another secret, cached or not', async () => {
    const other = createTokenService({ ...options, secret: 'another-secret-that-is-long-enough!!!', tokenTtlSeconds: 60 });
    const { token } = await other.issue(alice);
    await expect(other.verify(token)).resolves.toEqual(alice);
    const tokens = createTokenService({ ...options, tokenTtlSeconds: 60 });
    await expect(tokens.verify(token)).rejects.toMatchObject({ reason: 'bad_signature' });
  });
});
