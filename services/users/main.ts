import { SERVICE_NAME } from '../../otel/wire-names';
import { startService } from '../shared/service-main';
import { createApp } from './app';
import { USER_SERVICE_CALLERS } from './callers';
import { DEMO_ACCOUNTS } from './user-store';

void startService('users', SERVICE_NAME.users, (env, logger) => {
  // Demo accounts have published passwords (README): development only, and said so once.
  const seedDemoAccounts = env.NODE_ENV !== 'production';
  if (seedDemoAccounts) {
    logger.warn('demo accounts seeded (development only; NODE_ENV=production seeds none)', { accounts: DEMO_ACCOUNTS.map((account) => `${account.email} (${account.role})`) });
  }
  return createApp({ logger, seedDemoAccounts, signingKey: env.GATEWAY_SIGNING_KEY, acceptedSigningKey: env.GATEWAY_SIGNING_KEY_ACCEPTED, signatureAudience: env.GATEWAY_SIGNATURE_AUDIENCE });
}, { callers: USER_SERVICE_CALLERS });
