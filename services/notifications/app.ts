import { randomUUID } from 'node:crypto';
import Router from '@koa/router';
import type Koa from 'koa';
import { z } from 'zod';
import type { Logger } from '../../otel/logger';
import { SERVICE_NAME } from '../../otel/wire-names';
import { createServiceApp, requireCaller, validBody } from '../shared/service-app';

export interface Notification {
  id: string;
  userId: string;
  type: string;
  message: string;
  orderId?: string;
  createdAt: string;
}

export interface NotificationsAppOptions {
  logger: Logger;
}

const incoming = z.object({
  userId: z.string().min(1),
  type: z.string().min(1).max(64),
  message: z.string().min(1).max(1000),
  orderId: z.string().optional(),
});

/**
 * notification-service: other services post events to `/internal/notifications` (unreachable through the
 * gateway, so clients cannot notify each other); users read their own at `GET /notifications`.
 */
export function createApp(options: NotificationsAppOptions): Koa {
  const byUser = new Map<string, Notification[]>();
  const router = new Router();

  router.post('/internal/notifications', async function receiveNotification(ctx) {
    const input = validBody(ctx, incoming);
    const notification: Notification = { id: randomUUID(), ...input, createdAt: new Date().toISOString() };
    const list = byUser.get(input.userId) ?? [];
    list.push(notification);
    byUser.set(input.userId, list);
    options.logger.info('notification stored', { notification_id: notification.id, type: notification.type, user_id: notification.userId });
    ctx.status = 201;
    ctx.body = notification;
  });

  router.get('/notifications', async function listNotifications(ctx) {
    ctx.body = byUser.get(requireCaller(ctx).id) ?? [];
  });

  return createServiceApp({ serviceName: SERVICE_NAME.notifications, logger: options.logger, router });
}
