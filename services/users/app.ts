import Router from '@koa/router';
import type Koa from 'koa';
import { z } from 'zod';
import type { Logger } from '../../otel/logger';
import { CREDENTIAL_LIMITS, SERVICE_NAME, SIGNATURE_AUDIENCE } from '../../otel/wire-names';
import { callerId } from '../shared/input-limits';
import { createServiceApp, requireCaller, ServiceError, USER_CHALLENGE, validBody, validParam } from '../shared/service-app';
import { USER_SERVICE_CALLERS } from './callers';
import { DuplicateEmailError, UserStore, UserStoreFullError } from './user-store';
import { isIntactCredential, isPlainText, PLAIN_TEXT_RULE } from '../../src/unicode-text';

export interface UsersAppOptions {
  logger: Logger;
  /** Seed alice and bob (see README). Default true; main.ts turns it off in production. */
  seedDemoAccounts?: boolean;
  store?: UserStore;
  /** The gateway's signing key (service-app.ts `signingKey`). */
  signingKey?: string;
  /** Another key whose signatures are accepted too (service-app.ts `acceptedSigningKey`). */
  acceptedSigningKey?: string;
  /** The name the gateway's config gives this service (service-app.ts `signatureAudience`); default `users`. */
  signatureAudience?: string;
}

/**
 * A password is hashed as UTF-8, where every lone surrogate becomes U+FFFD: eight different lone surrogates were one
 * password (`\uFFFD` eight times), and any other eight of them logged in as it. The body parser makes U+FFFD of
 * every byte that is not UTF-8 as well (`caf\xE9` and `caf\xFF` were one password). Such a string is refused.
 */
const wellFormedPassword = z
  .string()
  .max(CREDENTIAL_LIMITS.passwordMaxLength)
  .refine(isIntactCredential, { message: 'must be UTF-8 text (no unpaired surrogates, no bytes that are not UTF-8)' });

const registration = z.object({
  // Bounded as sent, then trimmed: bounded after the trim, a name padded with a megabyte of spaces was stored as the
  // trimmed view V8 keeps of the whole padded string (a sliced string), a megabyte per account.
  name: z.string().max(100).trim().min(1).refine(isPlainText, PLAIN_TEXT_RULE),
  email: z.email().max(CREDENTIAL_LIMITS.emailMaxLength),
  password: wellFormedPassword.min(8, 'must be at least 8 characters'),
});
const credentials = z.object({ email: z.string().max(CREDENTIAL_LIMITS.emailMaxLength), password: wellFormedPassword });

/**
 * user-service: registration, credential checks for the gateway's login, and profiles.
 * `/internal/*` is outside every gateway route prefix, so clients cannot reach it.
 */
export async function createApp(options: UsersAppOptions): Promise<Koa> {
  const store = options.store ?? new UserStore();
  if (options.seedDemoAccounts ?? true) await store.seedDemoAccounts();

  const router = new Router();
  router.post('/users', async function register(ctx) {
    const input = validBody(ctx, registration);
    try {
      ctx.body = await store.create(input);
      ctx.status = 201;
    } catch (error) {
      if (error instanceof DuplicateEmailError) throw new ServiceError(409, 'email_taken', error.message);
      if (error instanceof UserStoreFullError) throw new ServiceError(507, 'user_store_full', error.message);
      throw error;
    }
  });

  router.get('/users', async function listUsers(ctx) {
    if (requireCaller(ctx).role !== 'admin') throw new ServiceError(403, 'forbidden', 'Only admins can list users.');
    ctx.body = store.list();
  });

  router.get('/users/:id', async function getUser(ctx) {
    const caller = requireCaller(ctx);
    // Any id a caller can have, not only those this service makes (a UUID; the demo accounts' 1 and 2): order-service asks for the
    // caller's own account, and a provider's user (`idp:auth0|123`, `idp:someone@example.com`) is told 404, not 400.
    const id = validParam(ctx, 'id', callerId);
    if (caller.id !== id && caller.role !== 'admin') throw new ServiceError(403, 'forbidden', 'You can only read your own profile.');
    const user = store.get(id);
    // The id not echoed: the message is recorded on every span the error passes (instrumentation-koa's exception
    // events), and an id the client put in the path may be anything, a token among them.
    if (!user) throw new ServiceError(404, 'user_not_found', 'No such user.');
    ctx.body = user;
  });

  router.post('/internal/credentials/verify', async function verifyCredentials(ctx) {
    const { email, password } = validBody(ctx, credentials);
    const user = await store.verify(email, password);
    // Every 401 carries a challenge (RFC 9110 11.6.1): the credential this one leads to, a token from the gateway's login.
    if (!user) throw new ServiceError(401, 'invalid_credentials', 'The email or password is wrong.', USER_CHALLENGE);
    ctx.body = { id: user.id, email: user.email, role: user.role };
  });

  return createServiceApp({ serviceName: SERVICE_NAME.users, logger: options.logger, router, signingKey: options.signingKey, acceptedSigningKey: options.acceptedSigningKey, signatureAudience: options.signatureAudience ?? SIGNATURE_AUDIENCE.users, callers: USER_SERVICE_CALLERS });
}
