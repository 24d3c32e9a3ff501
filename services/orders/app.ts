import { randomUUID } from 'node:crypto';
import { status as grpcStatus } from '@grpc/grpc-js';
import Router from '@koa/router';
import type Koa from 'koa';
import { z } from 'zod';
import type { Logger } from '../../otel/logger';
import type { TraceContextByHand } from '../../otel/telemetry';
import { SERVICE_NAME, SIGNATURE_AUDIENCE } from '../../otel/wire-names';
import { callRefusedHint, createCallerSigner, type SignedValues } from '../../src/gateway-signature';
import { jsonAtMost } from '../../src/bounded-body';
import { createBoundedStore, type BoundedStoreLimits } from '../shared/bounded-store';
import { recordId } from '../shared/input-limits';
import { isPlainText, PLAIN_TEXT_RULE } from '../../src/unicode-text';
import { NOTIFICATION_POSTS } from '../notifications/callers';
import { userRecordPath } from '../users/callers';
import { callService, createServiceApp, identityOf, requestIdOf, requireOwner, ServiceError, validBody, validParam, validQuery, type Caller } from '../shared/service-app';
import { createIdempotencyKeys, IDEMPOTENCY_KEY, type IdempotentStart } from './idempotency-keys';
import { createNotificationsGrpcClient } from './notifications-client';

export interface Order {
  id: string;
  /** The user who placed it, or the API-key consumer (one of the two). */
  userId?: string;
  consumerId?: string;
  items: { sku: string; quantity: number }[];
  status: 'created';
  createdAt: string;
}

export interface OrdersAppOptions {
  logger: Logger;
  /** user-service origin, called directly (not through the gateway). */
  usersUrl: string;
  /** notification-service origin (its HTTP interface). */
  notificationsUrl: string;
  /** notification-service's gRPC interface; when set, new orders are notified over gRPC instead of HTTP. */
  notificationsGrpcUrl?: string;
  /** This service's signing key (service-app.ts `signingKey`): the gateway's signatures for it are checked with it. */
  signingKey?: string;
  /**
   * The keys user-service and notification-service derive for it as a caller (`USER_SERVICE_SIGNING_KEY`,
   * `NOTIF_SERVICE_SIGNING_KEY`; src/gateway-signature.ts callerSigningKey): its calls to each are signed with that
   * key, as `orders`; unsigned without one.
   */
  usersSigningKey?: string;
  notificationsSigningKey?: string;
  /** Another key whose signatures are accepted too (service-app.ts `acceptedSigningKey`); never used to sign. */
  acceptedSigningKey?: string;
  /** The name the gateway's config gives this service (service-app.ts `signatureAudience`); default `orders`. */
  signatureAudience?: string;
  /**
   * Continue each request's trace context (`traceparent`, `tracestate`, `baggage`) and pass it on to user-service
   * and notification-service by hand: each half that no loaded instrumentation (http, undici, grpc) carries
   * (telemetry off, or some disabled: services/shared/service-main.ts); `true` for all of them. Default false.
   */
  propagateTraceContext?: boolean | TraceContextByHand;
  /**
   * How many orders are kept in memory; default the newest 1,000 per owner and 10,000 in all, at most 64 MiB of them
   * (orderBytes: older ones are dropped).
   */
  storeLimits?: BoundedStoreLimits;
}

/** Most orders one `GET /orders` answers with (and how many without `limit`). */
export const ORDERS_PAGE_MAX = 100;

/** Bytes of a dependency's problem answer read for its `code`: far more than any of user-service's. */
const MAX_PROBLEM_BYTES = 16 * 1024;

// 64 MiB: within the 256 MiB the Kubernetes manifest gives order-service, with its own heap and buffers beside it.
export const DEFAULT_ORDER_STORE_LIMITS: BoundedStoreLimits = { maxPerOwner: 1000, maxTotal: 10_000, maxTotalBytes: 64 * 1024 * 1024 };

/**
 * An order's bytes in memory, from above: its JSON's length twice over (a string's characters, at two bytes where
 * one is past Latin-1) and the objects around each item. 10,000 orders of 100 items with 64-character SKUs held
 * 209 MB of heap (~21 KB each; their JSON ~13 KB).
 */
export function orderBytes(order: Order): number {
  return 2 * JSON.stringify(order).length + ORDER_ITEM_OBJECT_BYTES * order.items.length;
}

/** V8's object for one item (header, two properties) and its slot in the array, rounded up. */
const ORDER_ITEM_OBJECT_BYTES = 64;

/**
 * A page of `GET /orders`, oldest first: at most `limit` (default and most ORDERS_PAGE_MAX), after the order `after`.
 * Unpaged, one owner's 1,000 orders of 100 long items were a 21 MB answer whose JSON held the event loop ~0.7 s.
 */
const orderPage = z.object({
  // Digits only: a coerced number took `1e1`, `0x10` and ` 5 ` as well.
  limit: z
    .string()
    .regex(/^[1-9][0-9]{0,2}$/, `must be a whole number from 1 to ${ORDERS_PAGE_MAX}`)
    .transform(Number)
    .pipe(z.number().max(ORDERS_PAGE_MAX))
    .default(ORDERS_PAGE_MAX),
  after: recordId.optional(),
});

const newOrder = z.object({
  items: z
    // The sku bounded as sent, then trimmed: a trimmed string can be V8's view of the whole one it came from.
    .array(z.object({ sku: z.string().max(64).trim().min(1).refine(isPlainText, PLAIN_TEXT_RULE), quantity: z.int().min(1).max(1000) }))
    .min(1)
    .max(100),
});

/**
 * order-service: orders of the calling user, or of the calling API-key consumer (requireOwner). A user's new
 * order is checked with user-service directly and told to notification-service (a notification failure is
 * logged, never fails the order); a consumer's is neither (notifications are per user).
 */
export function createApp(options: OrdersAppOptions): Koa {
  const { logger } = options;
  // Kept per owner key (requireOwner): orders of a user and of a consumer never mix.
  const orders = createBoundedStore<Order>(options.storeLimits ?? DEFAULT_ORDER_STORE_LIMITS, orderBytes);
  const idempotencyKeys = createIdempotencyKeys();
  const router = new Router();
  // A signature is good only for the request it was made for: each call to another service is signed here, with
  // that service's key.
  // As the caller `orders` (the name the others' rules know it by, whatever the gateway's config calls it): each key is
  // the one that service derived for this caller, good for the call this service makes to it only.
  const signForUsers = options.usersSigningKey === undefined ? undefined : createCallerSigner(options.usersSigningKey, SIGNATURE_AUDIENCE.orders);
  const signForNotifications = options.notificationsSigningKey === undefined ? undefined : createCallerSigner(options.notificationsSigningKey, SIGNATURE_AUDIENCE.orders);
  // Each half as no loaded instrumentation carries it (a boolean: all or none).
  const byHand = options.propagateTraceContext ?? false;
  const { continueIncoming, injectHttpCalls, injectGrpcCalls } = typeof byHand === 'boolean' ? { continueIncoming: byHand, injectHttpCalls: byHand, injectGrpcCalls: byHand } : byHand;

  async function checkUser(caller: Caller, requestId: string, identity: SignedValues): Promise<void> {
    let status: number;
    let code: string | undefined;
    // A dot segment is no account, and cannot be asked for: URL removes `.` and `..` segments (`%2E` too), and a caller
    // id `.` was asked as `GET /users/` (the admin's list of users, 200: an order for a user who did not exist).
    if (caller.id === '.' || caller.id === '..') throw new ServiceError(403, 'unknown_user', 'Your account no longer exists.');
    try {
      const response = await callService(new URL(userRecordPath(caller.id), options.usersUrl).href, { requestId, identity, sign: signForUsers, audience: SIGNATURE_AUDIENCE.users, propagate: injectHttpCalls });
      status = response.statusCode;
      code = status === 404 ? await problemCode(response.body) : (await response.body.dump(), undefined);
    } catch (error) {
      // A hung service is told apart from a down one, as the gateway tells 504 from 502 (callService's deadline
      // aborts with a TimeoutError).
      if ((error as { name?: unknown }).name === 'TimeoutError') {
        logger.error('user-service did not answer in time', { error: (error as Error).message, request_id: requestId });
        throw new ServiceError(504, 'dependency_timeout', 'The users service did not answer in time.');
      }
      logger.error('user-service unreachable', { error: (error as Error).message, request_id: requestId });
      throw new ServiceError(503, 'dependency_unavailable', 'The users service is unavailable; try again.');
    }
    // user-service's own word that the account is gone; any other 404 (a wrong USER_SERVICE_URL, an ingress without
    // the route) told every caller their account no longer existed, and logged nothing.
    if (status === 404 && code === 'user_not_found') throw new ServiceError(403, 'unknown_user', 'Your account no longer exists.');
    // Any other refusal is of this service's own call (its signature: keys or clocks apart), which no retry of the
    // client's mends: 502, not a 503 inviting one.
    if (status >= 400 && status < 500) {
      logger.error('user-service refused the call', { status, request_id: requestId, ...(status === 401 && { hint: callRefusedHint('USER_SERVICE_SIGNING_KEY', SIGNATURE_AUDIENCE.users, SIGNATURE_AUDIENCE.orders) }) });
      throw new ServiceError(502, 'dependency_refused', `The users service refused this service's call (${status}).`);
    }
    if (status < 200 || status >= 300) throw new ServiceError(503, 'dependency_unavailable', `The users service answered ${status}.`);
  }

  /** The `code` of a problem answer (user-service's are small), undefined for anything else. */
  async function problemCode(body: AsyncIterable<Uint8Array>): Promise<string | undefined> {
    const problem = (await jsonAtMost(body, MAX_PROBLEM_BYTES)) as { code?: unknown } | null | undefined;
    return typeof problem?.code === 'string' ? problem.code : undefined;
  }

  const notificationsGrpc = options.notificationsGrpcUrl ? createNotificationsGrpcClient(options.notificationsGrpcUrl, signForNotifications, { propagate: injectGrpcCalls }) : undefined;

  // Not a rejection of one notification but of every one this service sends, each lost while the order stands: an
  // error naming the setting, where a warning said only "rejected".
  function notificationSignatureRefused(order: Order, requestId: string): void {
    logger.error("notification-service refused this service's signature; the notification is lost", { order_id: order.id, request_id: requestId, hint: callRefusedHint('NOTIF_SERVICE_SIGNING_KEY', SIGNATURE_AUDIENCE.notifications, SIGNATURE_AUDIENCE.orders) });
  }

  async function notify(order: Order, userId: string, requestId: string, identity: SignedValues): Promise<void> {
    const event = { userId, type: 'order.created', orderId: order.id, message: `Order ${order.id} was created.` };
    if (notificationsGrpc) {
      try {
        await notificationsGrpc.create(event, requestId, identity);
      } catch (error) {
        const { code, details } = error as { code?: number; details?: string };
        // As over HTTP: the service answering no (a status of its own) is "rejected", no answer is "unreachable".
        if (code === grpcStatus.UNAVAILABLE || code === grpcStatus.DEADLINE_EXCEEDED) logger.warn('notification-service unreachable', { order_id: order.id, error: details, request_id: requestId });
        else if (code === grpcStatus.UNAUTHENTICATED) notificationSignatureRefused(order, requestId);
        else logger.warn('notification rejected', { order_id: order.id, grpc_status: code === undefined ? undefined : grpcStatus[code], request_id: requestId });
      }
      return;
    }
    try {
      const response = await callService(new URL(NOTIFICATION_POSTS.http, options.notificationsUrl).href, {
        method: 'POST',
        requestId,
        identity,
        sign: signForNotifications,
        audience: SIGNATURE_AUDIENCE.notifications,
        propagate: injectHttpCalls,
        body: event,
      });
      await response.body.dump();
      if (response.statusCode === 401) notificationSignatureRefused(order, requestId);
      else if (response.statusCode < 200 || response.statusCode >= 300) logger.warn('notification rejected', { order_id: order.id, status: response.statusCode, request_id: requestId });
    } catch (error) {
      logger.warn('notification-service unreachable', { order_id: order.id, error: (error as Error).message, request_id: requestId });
    }
  }

  router.post('/orders', async function createOrder(ctx) {
    const owner = requireOwner(ctx);
    const { items } = validBody(ctx, newOrder);
    const requestId = requestIdOf(ctx);
    const idempotent = startIdempotent(ctx, owner.key, items);
    if (idempotent?.kind === 'replay') {
      const made = orders.get(owner.key, idempotent.orderId);
      // Gone, not in progress (a 409 tells a client to try again): the order was dropped from the store since.
      if (!made) throw new ServiceError(410, 'idempotency_key_spent', 'The order this Idempotency-Key placed is no longer kept; send a new key to place another.');
      // The answer the first request had: the same order at the same Location.
      ctx.set('Idempotent-Replayed', 'true');
      return answerCreated(ctx, made);
    }
    // The caller the gateway vouched for goes on to user-service and notification-service, in calls signed here.
    const identity = identityOf(ctx);
    try {
      // A user's account must still exist; a consumer is vouched for by the gateway's registry alone.
      if (owner.kind === 'user') await checkUser(owner.user, requestId, identity);
    } catch (error) {
      // Nothing placed: the same key may come again.
      idempotent?.abandon();
      throw error;
    }
    const placedBy = owner.kind === 'user' ? { userId: owner.user.id } : { consumerId: owner.consumerId };
    const order: Order = { id: randomUUID(), ...placedBy, items, status: 'created', createdAt: new Date().toISOString() };
    orders.add(owner.key, order);
    idempotent?.settle(order.id);
    // Each line of a request names its id itself: with telemetry off no context manager carries it to the line.
    logger.info('order created', { order_id: order.id, user_id: order.userId, consumer_id: order.consumerId, items: items.length, request_id: requestId });
    // Notifications go to users (notification-service keeps them per user).
    if (owner.kind === 'user') await notify(order, owner.user.id, requestId, identity);
    answerCreated(ctx, order);
  });

  /**
   * The `Idempotency-Key` of a request that sent one (undefined for none): a client sending its POST again after a
   * timeout or a dropped connection placed a second order (the first had been placed all the same). 400 for a key
   * that is not 1-255 visible characters (one sent twice is two, joined by a comma and a space), 409 while the first
   * request with it is under way, 422 for a key used with another body.
   */
  function startIdempotent(ctx: Koa.Context, ownerKey: string, items: Order['items']): Extract<IdempotentStart, { kind: 'first' | 'replay' }> | undefined {
    const key = ctx.get('idempotency-key');
    if (key === '') return undefined;
    if (!IDEMPOTENCY_KEY.test(key)) throw new ServiceError(400, 'invalid_header', 'Idempotency-Key must be 1-255 visible ASCII characters, sent once.');
    const start = idempotencyKeys.start(ownerKey, key, items);
    if (start.kind === 'in_flight') throw new ServiceError(409, 'idempotency_key_in_use', 'A request with this Idempotency-Key is still being handled; try again shortly.', { 'Retry-After': '1' });
    if (start.kind === 'other_body') throw new ServiceError(422, 'idempotency_key_reused', 'This Idempotency-Key was sent with another order; use a new key for a new order.');
    return start;
  }

  /** 201 with the order and its URL (RFC 9110 15.3.2). */
  function answerCreated(ctx: Koa.Context, order: Order): void {
    ctx.status = 201;
    // The gateway makes it the public one (`/api/orders/<id>`) and drops any stored copy of it.
    ctx.set('Location', instanceUrl(ctx, `/orders/${order.id}`));
    ctx.body = order;
  }

  /**
   * A URL of this service, absolute with the Host this instance was asked by, as a Location or Link names it: the
   * gateway rewrites such a URL to the public one; a relative one would pass as it is, naming no public path.
   */
  function instanceUrl(ctx: Koa.Context, pathAndQuery: string): string {
    return `${ctx.protocol}://${ctx.host}${pathAndQuery}`;
  }

  router.get('/orders', async function listOrders(ctx) {
    const owner = requireOwner(ctx);
    const { limit, after } = validQuery(ctx, orderPage);
    const mine = orders.forOwner(owner.key);
    let start = 0;
    if (after !== undefined) {
      // Someone else's order, or one dropped since, is no place in this list: 400 (a client restarts from the first page).
      const index = mine.findIndex((order) => order.id === after);
      // Neither id echoed (here nor in the 404): the message is recorded on every span the error passes
      // (instrumentation-koa's exception events), and what a client puts in a path or a query may be anything.
      if (index === -1) throw new ServiceError(400, 'invalid_query', 'after: no order of yours to continue from.');
      start = index + 1;
    }
    const page = mine.slice(start, start + limit);
    // The next page, as RFC 8288 links it (the gateway makes it the public URL, `/api/orders?...`).
    if (start + limit < mine.length) ctx.set('Link', `<${instanceUrl(ctx, `${ctx.path}?limit=${limit}&after=${encodeURIComponent(page.at(-1)!.id)}`)}>; rel="next"`);
    ctx.body = page;
  });

  router.get('/orders/:id', async function getOrder(ctx) {
    const owner = requireOwner(ctx);
    const id = validParam(ctx, 'id', recordId);
    const order = orders.get(owner.key, id);
    // Someone else's order is reported as missing, so ids cannot be probed.
    if (!order) throw new ServiceError(404, 'order_not_found', 'No such order.');
    ctx.body = order;
  });

  return createServiceApp({ serviceName: SERVICE_NAME.orders, logger, router, signingKey: options.signingKey, acceptedSigningKey: options.acceptedSigningKey, signatureAudience: options.signatureAudience ?? SIGNATURE_AUDIENCE.orders, continueTraceContext: continueIncoming });
}
