import { SERVICE_NAME } from '../../otel/wire-names';
import { logGrpcMessages } from '../shared/grpc-service';
import { startService } from '../shared/service-main';
import { createApp } from './app';

void startService(
  'orders',
  SERVICE_NAME.orders,
  (env, logger, { propagateTraceContextByHand }) => {
    // Its notifications go over gRPC when NOTIF_GRPC_SERVICE_URL is set: grpc-js's messages join the JSON log.
    if (env.NOTIF_GRPC_SERVICE_URL !== undefined) logGrpcMessages(logger);
    // Production refuses to start without them (service-config.ts); elsewhere its calls go unsigned, which services
    // holding a key refuse: every order then 502 (a compose .env from before the caller keys has none), said at start.
    const unsigned = (['USER_SERVICE_SIGNING_KEY', 'NOTIF_SERVICE_SIGNING_KEY'] as const).filter((name) => env[name] === undefined);
    if (unsigned.length > 0) {
      logger.warn('calls to other services go unsigned: a service holding a signing key refuses them', { unset: unsigned, hint: 'npm run -s service-key -- --env --caller orders users notifications' });
    }
    return createApp({
      logger,
      usersUrl: env.USER_SERVICE_URL,
      notificationsUrl: env.NOTIF_SERVICE_URL,
      notificationsGrpcUrl: env.NOTIF_GRPC_SERVICE_URL,
      signingKey: env.GATEWAY_SIGNING_KEY,
      acceptedSigningKey: env.GATEWAY_SIGNING_KEY_ACCEPTED,
      usersSigningKey: env.USER_SERVICE_SIGNING_KEY,
      notificationsSigningKey: env.NOTIF_SERVICE_SIGNING_KEY,
      signatureAudience: env.GATEWAY_SIGNATURE_AUDIENCE,
      propagateTraceContext: propagateTraceContextByHand,
    });
  },
  // It calls user-service and notification-service: with telemetry off it passes its callers' trace context on itself.
  { callsOtherServices: true },
);
