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
