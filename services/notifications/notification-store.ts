import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { callerId, recordId } from '../shared/input-limits';
import { createBoundedStore, type BoundedStoreLimits } from '../shared/bounded-store';

export interface Notification {
  id: string;
  userId: string;
  type: string;
  message: string;
  orderId?: string;
  createdAt: string;
}

export type NewNotification = Pick<Notification, 'userId' | 'type' | 'message' | 'orderId'>;

/** Limits of a new notification, shared by the HTTP and gRPC interfaces. */
export const NOTIFICATION_LIMITS = { typeMaxLength: 64, messageMaxLength: 1000 } as const;

/**
 * A new notification, as both interfaces take it (POST /internal/notifications, gRPC CreateNotification): `userId`
 * a caller id as the gateway vouches for it, `orderId` an id order-service made.
 */
export const newNotification = z.object({
  userId: callerId,
  type: z.string().min(1).max(NOTIFICATION_LIMITS.typeMaxLength),
  message: z.string().min(1).max(NOTIFICATION_LIMITS.messageMaxLength),
  orderId: recordId.optional(),
});

/** How many notifications the store keeps: the newest 100 per user and 10,000 in all; older ones are dropped. */
export const DEFAULT_NOTIFICATION_STORE_LIMITS: BoundedStoreLimits = { maxPerOwner: 100, maxTotal: 10_000 };

/** The notifications of every user, in memory; one store behind both interfaces of the service. */
export interface NotificationStore {
  add(input: NewNotification): Notification;
  /** The user's notifications, oldest first. */
  forUser(userId: string): readonly Notification[];
}

/** `limits`: default DEFAULT_NOTIFICATION_STORE_LIMITS. */
export function createNotificationStore(limits: BoundedStoreLimits = DEFAULT_NOTIFICATION_STORE_LIMITS): NotificationStore {
  const store = createBoundedStore<Notification>(limits);
  return {
    add(input) {
      const notification: Notification = { id: randomUUID(), ...input, createdAt: new Date().toISOString() };
      store.add(input.userId, notification);
      return notification;
    },
    forUser: (userId) => store.forOwner(userId),
  };
}
