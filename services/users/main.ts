import { SERVICE_NAME } from '../../otel/wire-names';
import { startService } from '../shared/service-main';
import { createApp } from './app';

void startService('users', SERVICE_NAME.users, (env, logger) => createApp({ logger, seedDemoAccounts: env.NODE_ENV !== 'production' }));
