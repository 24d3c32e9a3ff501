import Router from '@koa/router';
import type Koa from 'koa';
import type { Logger } from '../../otel/logger';
import { SERVICE_NAME, SIGNATURE_AUDIENCE } from '../../otel/wire-names';
import { createServiceApp, requestIdOf, requireCaller, ServiceError, validBody } from '../shared/service-app';
import { NOTIFICATION_POSTS, NOTIFICATION_SERVICE_CALLERS } from './callers';
import { createNotificationStore, newNotification, type NotificationStore } from './notification-store';

export type { Notification } from './notification-store';

export interface NotificationsAppOptions {
  logger: Logger;
  /** Shared with the gRPC interface (grpc-server.ts) when both run; default a fresh one. */
  store?: NotificationStore;
  /** The gateway's signing key (service-app.ts `signingKey`). */
  signingKey?: string;
  /** Another key whose signatures are accepted too (service-app.ts `acceptedSigningKey`). */
  acceptedSigningKey?: string;
  /** The name the gateway's config gives this service (service-app.ts `signatureAudience`); default `notifications`. */
  signatureAudience?: string;
}

/**
 * notification-service: other services post events to `/internal/notifications` (unreachable through the
 * gateway, so clients cannot notify each other); users read their own at `GET /notifications`. The same
 * store is served over gRPC by grpc-server.ts.
 */
export function createApp(options: NotificationsAppOptions): Koa {
  const store = options.store ?? createNotificationStore();
  const router = new Router();

  router.post(NOTIFICATION_POSTS.http, async function receiveNotification(ctx) {
    const caller = requireCaller(ctx);
    const input = validBody(ctx, newNotification);
    // For the caller the signature vouches for, never for whoever the body names: the body is not signed, so a
    // signed call replayed with another `userId` would write into that user's notifications.
    if (input.userId !== caller.id) throw new ServiceError(403, 'not_the_caller', 'A notification is stored only for the caller the gateway vouched for (X-User-Id).');
    const notification = store.add(input);
    options.logger.info('notification stored', { notification_id: notification.id, type: notification.type, user_id: notification.userId, request_id: requestIdOf(ctx) });
    ctx.status = 201;
    ctx.body = notification;
  });

  router.get('/notifications', async function listNotifications(ctx) {
    ctx.body = store.forUser(requireCaller(ctx).id);
  });

  return createServiceApp({ serviceName: SERVICE_NAME.notifications, logger: options.logger, router, signingKey: options.signingKey, acceptedSigningKey: options.acceptedSigningKey, signatureAudience: options.signatureAudience ?? SIGNATURE_AUDIENCE.notifications, callers: NOTIFICATION_SERVICE_CALLERS });
}
