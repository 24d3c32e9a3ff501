import { SERVICE_NAME } from '../../otel/wire-names';
import { startService } from '../shared/service-main';
import { createApp } from './app';

void startService('notifications', SERVICE_NAME.notifications, (_env, logger) => createApp({ logger }));
