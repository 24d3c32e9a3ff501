import { SERVICE_NAME } from '../../otel/wire-names';
import { bindGrpcServer, logGrpcMessages } from '../shared/grpc-service';
import { startService } from '../shared/service-main';
import { NOTIFICATION_SERVICE_CALLERS } from './callers';
import { createApp } from './app';
import { createGrpcServer } from './grpc-server';
import { createNotificationStore } from './notification-store';

/** Longest wait for in-flight gRPC calls at shutdown, ms; the rest are cancelled. */
const GRPC_DRAIN_MS = 5000;

void startService('notifications', SERVICE_NAME.notifications, async (env, logger) => {
  const store = createNotificationStore();
  const app = createApp({ logger, store, signingKey: env.GATEWAY_SIGNING_KEY, acceptedSigningKey: env.GATEWAY_SIGNING_KEY_ACCEPTED, signatureAudience: env.GATEWAY_SIGNATURE_AUDIENCE });
  if (env.GRPC_PORT === undefined) return app;
  // The gRPC interface beside the HTTP one, over the same store.
  logGrpcMessages(logger);
  const server = createGrpcServer({ logger, store, signingKey: env.GATEWAY_SIGNING_KEY, acceptedSigningKey: env.GATEWAY_SIGNING_KEY_ACCEPTED, signatureAudience: env.GATEWAY_SIGNATURE_AUDIENCE });
  const port = await bindGrpcServer(server, env.HOST, env.GRPC_PORT);
  logger.info(`${SERVICE_NAME.notifications} gRPC listening`, { grpc_url: `http://${env.HOST.includes(':') ? `[${env.HOST}]` : env.HOST}:${port}` });
  return {
    app,
    onShutdown: () =>
      new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, GRPC_DRAIN_MS);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      }),
  };
}, { callers: NOTIFICATION_SERVICE_CALLERS });
