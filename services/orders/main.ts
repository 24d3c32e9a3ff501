import { SERVICE_NAME } from '../../otel/wire-names';
import { startService } from '../shared/service-main';
import { createApp } from './app';

void startService('orders', SERVICE_NAME.orders, (env, logger) =>
  createApp({ logger, usersUrl: env.USER_SERVICE_URL, notificationsUrl: env.NOTIF_SERVICE_URL, notificationsGrpcUrl: env.NOTIF_GRPC_SERVICE_URL, signingKey: env.GATEWAY_SIGNING_KEY }),
);
