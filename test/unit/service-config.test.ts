import { randomBytes } from 'node:crypto';
import { loadServiceEnv } from '../../services/shared/service-config';

/** As `openssl rand -base64 48` or `npm run service-key` give them. */
const key = () => randomBytes(32).toString('base64url');

describe("order-service's keys of the services it calls", () => {
  const own = key();
  const production = { NODE_ENV: 'production', GATEWAY_SIGNING_KEY: own };

  it('takes a key for each, different from its own, in production', () => {
    const users = key();
    const notifications = key();
    expect(loadServiceEnv('orders', { ...production, USER_SERVICE_SIGNING_KEY: users, NOTIF_SERVICE_SIGNING_KEY: notifications })).toMatchObject({ USER_SERVICE_SIGNING_KEY: users, NOTIF_SERVICE_SIGNING_KEY: notifications });
  });

  it.each(['USER_SERVICE_SIGNING_KEY', 'NOTIF_SERVICE_SIGNING_KEY'])('refuses to start in production without %s (its calls would all be refused)', (name) => {
    const env: Record<string, string> = { ...production, USER_SERVICE_SIGNING_KEY: key(), NOTIF_SERVICE_SIGNING_KEY: key() };
    delete env[name];
    expect(() => loadServiceEnv('orders', env)).toThrow(`config: ${name}: must be set in production`);
  });

  // The one key every service shared before, while a deployment moves off it: the others still hold it as their own.
  it('takes the keys equal to its own (the shared key of a migration)', () => {
    expect(loadServiceEnv('orders', { ...production, USER_SERVICE_SIGNING_KEY: own, NOTIF_SERVICE_SIGNING_KEY: own })).toMatchObject({ USER_SERVICE_SIGNING_KEY: own, NOTIF_SERVICE_SIGNING_KEY: own });
  });

  it.each([
    ['too short', 'short-key', /must be at least 32 characters$/],
    ['guessable', '01234567'.repeat(4), /is too regular to be a secret/],
  ])('refuses a key that is %s, without echoing it', (_desc, value, says) => {
    const attempt = () => loadServiceEnv('orders', { ...production, USER_SERVICE_SIGNING_KEY: value, NOTIF_SERVICE_SIGNING_KEY: key() });
    expect(attempt).toThrow(says);
    expect(attempt).not.toThrow(value);
  });

  it('starts in development without them (its calls unsigned, as the services without keys take them)', () => {
    const env = loadServiceEnv('orders', {});
    expect([env.USER_SERVICE_SIGNING_KEY, env.NOTIF_SERVICE_SIGNING_KEY]).toEqual([undefined, undefined]);
  });

  // Compose runs the services in development: `a` x 32 was taken there (an outside review), where the gateway refuses it.
  it.each([
    ['GATEWAY_SIGNING_KEY', { GATEWAY_SIGNING_KEY: 'a'.repeat(32) }],
    ['GATEWAY_SIGNING_KEY_ACCEPTED', { GATEWAY_SIGNING_KEY: key(), GATEWAY_SIGNING_KEY_ACCEPTED: '01234567'.repeat(4) }],
    ['USER_SERVICE_SIGNING_KEY', { USER_SERVICE_SIGNING_KEY: `${key()}\n` }],
  ])('refuses a %s that is not key material outside production too', (name, env) => {
    expect(() => loadServiceEnv('orders', env)).toThrow(new RegExp(`^config: ${name}: (is too regular|must not begin or end)`));
  });

  it('is read by order-service alone', () => {
    expect(loadServiceEnv('users', { NODE_ENV: 'production', GATEWAY_SIGNING_KEY: own, USER_SERVICE_SIGNING_KEY: own })).not.toHaveProperty('USER_SERVICE_SIGNING_KEY');
  });
});
