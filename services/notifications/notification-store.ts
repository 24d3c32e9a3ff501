import { randomUUID } from 'node:crypto';

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

/** The notifications of every user, in memory; one store behind both interfaces of the service. */
export interface NotificationStore {
  add(input: NewNotification): Notification;
  /** The user's notifications, oldest first. */
  forUser(userId: string): readonly Notification[];
}

export function createNotificationStore(): NotificationStore {
  const byUser = new Map<string, Notification[]>();
  return {
    add(input) {
      const notification: Notification = { id: randomUUID(), ...input, createdAt: new Date().toISOString() };
      const list = byUser.get(input.userId) ?? [];
      list.push(notification);
      byUser.set(input.userId, list);
      return notification;
    },
    forUser: (userId) => byUser.get(userId) ?? [],
  };
}
