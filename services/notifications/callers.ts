import { SIGNATURE_AUDIENCE } from '../../otel/wire-names';
import type { CallerRules } from '../../src/gateway-signature';

/** notification-service's gRPC service (proto/notifications.proto). */
export const NOTIFICATIONS_SERVICE = 'koagateway.notifications.v1.Notifications';

/** Where other services post a notification: over HTTP, and the gRPC method's path. */
export const NOTIFICATION_POSTS = { http: '/internal/notifications', grpc: `/${NOTIFICATIONS_SERVICE}/CreateNotification` } as const;

/**
 * The calls notification-service takes from other services (src/gateway-signature.ts CallerRules). order-service
 * posts a notification for the user its call is signed for (over HTTP or gRPC; a body naming another user is refused
 * either way): that alone. With notification-service's own key it could read anyone's notifications.
 */
export const NOTIFICATION_SERVICE_CALLERS: CallerRules = {
  [SIGNATURE_AUDIENCE.orders]: ({ method, target }, [userId]) => method === 'POST' && userId !== '' && (target === NOTIFICATION_POSTS.http || target === NOTIFICATION_POSTS.grpc),
};
