import * as grpc from '@grpc/grpc-js';
import { metrics, type Attributes, type Histogram } from '@opentelemetry/api';
import { ATTR_ERROR_TYPE, ATTR_RPC_METHOD, ATTR_RPC_STATUS_CODE, ATTR_RPC_SYSTEM_NAME, METRIC_RPC_SERVER_CALL_DURATION, RPC_SYSTEM_NAME_VALUE_GRPC } from '@opentelemetry/semantic-conventions';
import { z } from 'zod';
import { GRPC_SERVER_ERROR_CODES } from '../../otel/grpc-server-span-status';
import type { Logger } from '../../otel/logger';
import { AUTH_REALM, HEADER, SIGNATURE_AUDIENCE, SIGNATURE_CHALLENGE_SCHEME } from '../../otel/wire-names';
import { callerKeysOf, verifyGatewaySignature, type CallerKeys, type SignatureProblem } from '../../src/gateway-signature';
import { serviceRequestId } from '../../src/middleware/request-id';
import { callerFromMetadata, grpcError, grpcServiceDefinition, metadataValue } from '../shared/grpc-service';
import type { Caller } from '../shared/service-app';
import { describeFirstIssue, recordId } from '../shared/input-limits';
import { NOTIFICATION_SERVICE_CALLERS, NOTIFICATIONS_SERVICE } from './callers';
import { NOTIFICATION_LIMITS, newNotification, type NewNotification, type Notification, type NotificationStore } from './notification-store';

export const NOTIFICATIONS_PROTO = 'proto/notifications.proto';
export { NOTIFICATIONS_SERVICE } from './callers';

export interface NotificationsGrpcOptions {
  logger: Logger;
  /** The store the HTTP interface serves too. */
  store: NotificationStore;
  /** The gateway's signing key: every call must carry its signature in the metadata (as the HTTP side's headers). */
  signingKey?: string;
  /** Another key whose signatures are accepted too, as over HTTP (service-app.ts `acceptedSigningKey`). */
  acceptedSigningKey?: string;
  /** The name the gateway's config gives this service, as over HTTP (service-app.ts `signatureAudience`); default `notifications`. */
  signatureAudience?: string;
}

type Request = Record<string, unknown>;
type Unary = grpc.ServerUnaryCall<Request, unknown>;
type Reply = grpc.sendUnaryData<unknown>;

/** Bucket bounds of `rpc.server.call.duration`, s: the conventions' advice, as for `http.server.request.duration`. */
const CALL_DURATION_BUCKETS_SECONDS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10];

/**
 * `rpc.server.call.duration` (s, stable conventions): one per call, by method and status, and `error.type` (the
 * status) when the call failed as the gRPC conventions count a server's failures (GRPC_SERVER_ERROR_CODES:
 * UNKNOWN, INTERNAL, ...; a NOT_FOUND or INVALID_ARGUMENT is the caller's). The gRPC instrumentation
 * records spans only, so without it this service's calls (order-service's notices, the gateway's gRPC route) were
 * in no metric: the dashboard's service panels showed only its HTTP side. No-op while telemetry is off.
 */
function callDurationHistogram(): Histogram {
  return metrics.getMeter('notification-service').createHistogram(METRIC_RPC_SERVER_CALL_DURATION, {
    description: 'Duration of incoming gRPC calls.',
    unit: 's',
    advice: { explicitBucketBoundaries: CALL_DURATION_BUCKETS_SECONDS },
  });
}

/** `rpc.method` of a call to a method this server does not serve (semconv 1.45: "MUST be set to `_OTHER`"). */
const OTHER_METHOD = '_OTHER';

/** ListNotifications' `type` filter: '' (every type) or a type a notification can have. */
const typeFilter = z.string().max(NOTIFICATION_LIMITS.typeMaxLength);

/**
 * notification-service's gRPC interface (proto/notifications.proto), over the same store as its HTTP one.
 * Identity comes from the gateway's metadata (the x-user-* names it injects over HTTP); CreateNotification
 * is for other services (order-service) and has no HTTP mapping, so the gateway never exposes it. One log
 * line per call, with the request id, as the HTTP side logs one per request.
 */
export function createGrpcServer(options: NotificationsGrpcOptions): grpc.Server {
  const { logger, store, signingKey } = options;
  const keyList = signingKey === undefined ? undefined : options.acceptedSigningKey === undefined ? [signingKey] : [signingKey, options.acceptedSigningKey];
  // The gateway's keys, and order-service's as a caller (derived from them), as over HTTP.
  const keys: BelievedKeys | undefined = keyList === undefined ? undefined : { list: keyList, callers: callerKeysOf(keyList, NOTIFICATION_SERVICE_CALLERS) };
  const audience = options.signatureAudience ?? SIGNATURE_AUDIENCE.notifications;
  /** Each call's signature verdict (undefined: it verifies), by its metadata: decided once, before anything records the call. */
  const verdicts = new WeakMap<grpc.Metadata, SignatureProblem | undefined>();
  const definition = grpcServiceDefinition(NOTIFICATIONS_PROTO, NOTIFICATIONS_SERVICE);
  const callDuration = callDurationHistogram();

  /** Why `call`'s signature fails (undefined: it verifies, or no key): the interceptor's verdict, else decided now. */
  function signatureProblemOfCall(call: { metadata: grpc.Metadata; getPath(): string }): SignatureProblem | undefined {
    if (keys === undefined) return undefined;
    return verdicts.has(call.metadata) ? verdicts.get(call.metadata) : signatureProblemOf(keys, audience, call.getPath(), call.metadata);
  }

  /** Each call's request id, decided once: the handler's log line and the call's own carry the same one. */
  const requestIds = new WeakMap<grpc.Metadata, string | undefined>();
  /**
   * The id a call is logged under. Only what the gateway signed is believed, its request id included: a peer's forged
   * x-request-id would otherwise have its refusal logged under someone else's id. It gets one of its own, as over HTTP.
   */
  function requestIdOfCall(path: string, metadata: grpc.Metadata | undefined): string | undefined {
    if (metadata !== undefined && requestIds.has(metadata)) return requestIds.get(metadata);
    const signed = metadata !== undefined && signatureProblemOfCall({ metadata, getPath: () => path }) === undefined;
    // Held to the gateway's rule too (as over HTTP): a 10 KB or quoted id is logged as none of it.
    const requestId = serviceRequestId(signed ? metadataValue(metadata, HEADER.requestId) || undefined : undefined, signed);
    if (metadata !== undefined) requestIds.set(metadata, requestId);
    return requestId;
  }

  /** Records and logs one call's outcome: the status grpc-js is about to send, whoever decided it. */
  function recordCall(path: string, metadata: grpc.Metadata | undefined, code: grpc.status, started: number): void {
    const ms = performance.now() - started;
    const requestId = requestIdOfCall(path, metadata);
    // `rpc.method` is the service's own method name, never the path a caller sent: a method this server does not
    // know is `_OTHER` (semconv 1.45 RPC metrics), so no caller can add series to the metric.
    const method = knownMethods.get(path);
    const attributes: Attributes = { [ATTR_RPC_SYSTEM_NAME]: RPC_SYSTEM_NAME_VALUE_GRPC, [ATTR_RPC_METHOD]: method === undefined ? OTHER_METHOD : `${NOTIFICATIONS_SERVICE}/${method}`, [ATTR_RPC_STATUS_CODE]: grpc.status[code] };
    // Conditionally Required "if and only if the operation failed" (semconv 1.45 RPC metrics).
    if (GRPC_SERVER_ERROR_CODES.has(code)) attributes[ATTR_ERROR_TYPE] = grpc.status[code];
    callDuration.record(ms / 1000, attributes);
    logger.info('rpc handled', { rpc: method ?? OTHER_METHOD, grpc_status: grpc.status[code], duration_ms: Math.round(ms * 1000) / 1000, request_id: requestId });
  }
  const knownMethods = new Map(Object.entries(definition).map(([name, method]) => [method.path, name]));
  // The recorder first: it wraps grpc-js's own call, so it sees the statuses grpc-js sends itself too.
  const interceptors = [createCallRecorder(recordCall), ...(keys === undefined ? [] : [createSignatureVerdict(keys, audience, verdicts)])];
  const server = new grpc.Server({ interceptors });

  /** Runs a handler; a thrown gRPC error becomes the call's status (recorded and logged by the call recorder). */
  function handled<T extends Unary | grpc.ServerWritableStream<Request, unknown>>(handler: (call: T) => unknown) {
    return (call: T, callback?: Reply) => {
      const problem = signatureProblemOfCall(call);
      try {
        if (problem !== undefined) throw signatureRefusal(problem);
        const result = handler(call);
        if (callback) callback(null, result);
      } catch (error) {
        if (callback) callback(error as grpc.ServiceError);
        else (call as grpc.ServerWritableStream<Request, unknown>).emit('error', error);
      }
    };
  }

  server.addService(definition, {
    ListNotifications: handled((call: Unary) => {
      const type = valid(typeFilter, String(call.request.type ?? ''), 'type');
      const mine = store.forUser(requireCaller(call).id).filter((notification) => type === '' || notification.type === type);
      return { notifications: mine.map(toMessage) };
    }),
    GetNotification: handled((call: Unary) => {
      const id = valid(recordId, String(call.request.id ?? ''), 'id');
      const found = store.forUser(requireCaller(call).id).find((notification) => notification.id === id);
      // Someone else's notification is reported as missing, so ids cannot be probed.
      if (!found) throw grpcError(grpc.status.NOT_FOUND, `No notification ${id}.`);
      return toMessage(found);
    }),
    StreamNotifications: handled((call: grpc.ServerWritableStream<Request, unknown>) => {
      for (const notification of store.forUser(requireCaller(call).id)) call.write(toMessage(notification));
      call.end();
    }),
    CreateNotification: handled((call: Unary) => {
      const caller = requireCaller(call);
      const input = validNewNotification(call.request);
      // As over HTTP: for the caller the signed metadata names, never for whoever the unsigned message does.
      if (input.userId !== caller.id) throw grpcError(grpc.status.PERMISSION_DENIED, 'A notification is stored only for the caller the gateway vouched for (x-user-id).');
      const notification = store.add(input);
      logger.info('notification stored', { notification_id: notification.id, type: notification.type, user_id: notification.userId, request_id: requestIdOfCall(call.getPath(), call.metadata) });
      return toMessage(notification);
    }),
  });
  return server;
}

/**
 * The UNAUTHENTICATED a call whose gateway signature fails is answered with, its trailers carrying the challenge the
 * HTTP side's refusal carries (`www-authenticate: GatewaySignature realm="koa-gateway"`). By it the gateway tells
 * its own deployment's fault (keys or clocks apart: 502) from a client's credential this service refused (401);
 * without it, the gateway told its client to sign in again, quoting this refusal.
 */
function signatureRefusal(problem: SignatureProblem): Partial<grpc.StatusObject> & Error {
  // Another service's signature, good, for a call its rules do not let it make (the HTTP side's 403).
  if (problem === 'outside-scope') return grpcError(grpc.status.PERMISSION_DENIED, 'This service does not take this call from the service that signed it.');
  const trailers = new grpc.Metadata();
  trailers.set(HEADER.wwwAuthenticate, `${SIGNATURE_CHALLENGE_SCHEME} realm="${AUTH_REALM}"`);
  return Object.assign(grpcError(grpc.status.UNAUTHENTICATED, `This service answers only calls signed by the gateway (signature ${problem}).`), { metadata: trailers });
}

/** A gRPC call is an HTTP/2 POST to its path: the signature must have been made for this service and this method's. */
function signatureProblemOf(keys: BelievedKeys, audience: string, path: string, metadata: grpc.Metadata): SignatureProblem | undefined {
  const read = (name: string) => {
    const values = metadata.get(name);
    if (values.length === 0) return undefined;
    return values.length === 1 && typeof values[0] === 'string' ? values[0] : values.map(String);
  };
  return verifyGatewaySignature(keys.list, { audience, method: 'POST', target: path }, read, Date.now(), keys.callers);
}

/** The keys whose signatures this server believes: its own (and one it also accepts), and its callers' (derived from them). */
interface BelievedKeys {
  list: readonly string[];
  callers: CallerKeys;
}

/**
 * Reports every call's outcome to `record` exactly once, with the status grpc-js sends, whoever decided it: the
 * handler, or grpc-js itself before or without one (a request that does not decode: INTERNAL; one over the 4 MiB
 * limit: RESOURCE_EXHAUSTED; a deadline that passed: DEADLINE_EXCEEDED). Recording in the handlers missed those:
 * such calls were in no metric and no log line, though a client saw them fail.
 *
 * grpc-js 1.14 sends the statuses it decides itself from its own call object (`this.sendStatus`), under every
 * interceptor, so an interceptor's `sendStatus` never sees them; this one is registered first, is handed that
 * object, and puts its recording in front of that object's `sendStatus`. A call to a method no service
 * registered is answered before any interceptor exists (server.js `_respondWithError`) and stays unrecorded.
 */
function createCallRecorder(record: (path: string, metadata: grpc.Metadata | undefined, code: grpc.status, started: number) => void): grpc.ServerInterceptor {
  return (method, call) => {
    const started = performance.now();
    let metadata: grpc.Metadata | undefined;
    let recorded = false;
    const sendStatus = call.sendStatus.bind(call);
    call.sendStatus = (status) => {
      if (!recorded) {
        recorded = true;
        record(method.path, metadata, status.code, started);
      }
      sendStatus(status);
    };
    return new grpc.ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMetadata(received, pass) {
            metadata = received;
            pass(received);
          },
        });
      },
    });
  };
}

/** The metadata a call's trace context travels in (W3C Trace Context and Baggage, as over HTTP). */
const TRACE_CONTEXT_METADATA = [HEADER.traceparent, HEADER.tracestate, HEADER.baggage] as const;

/**
 * Decides each call's signature as its metadata arrives, before any handler runs, recording the verdict in
 * `verdicts`; a call whose signature fails loses its `traceparent`, `tracestate` and `baggage` there, so its
 * SERVER span starts a trace of its own instead of landing in the (someone else's) trace it named, as an unsigned
 * HTTP request's does (otel/telemetry.ts continueTraceContextOnlyWhen).
 *
 * Why a grpc-js server interceptor: @opentelemetry/instrumentation-grpc (0.300) has no hook before it continues
 * the caller's context (its options are `ignoreGrpcMethods` and `metadataToSpanAttributes`; there is no
 * counterpart of the http instrumentation's startIncomingSpanHook). It extracts from the metadata the handler is
 * given, in the wrapper it puts around the registered handler; interceptors (grpc-js's public API) see that
 * metadata first and pass it on, so dropping the names here keeps them from the instrumentation, whichever
 * version, and from anything else that reads them. Ignoring the call altogether (`ignoreGrpcMethods`) would lose
 * the refusal's span, which an operator wants to see.
 */
function createSignatureVerdict(keys: BelievedKeys, audience: string, verdicts: WeakMap<grpc.Metadata, SignatureProblem | undefined>): grpc.ServerInterceptor {
  return (method, call) =>
    new grpc.ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMetadata(metadata, pass) {
            const problem = signatureProblemOf(keys, audience, method.path, metadata);
            if (problem !== undefined) for (const name of TRACE_CONTEXT_METADATA) metadata.remove(name);
            verdicts.set(metadata, problem);
            pass(metadata);
          },
        });
      },
    });
}

function requireCaller(call: { metadata: grpc.Metadata }): Caller {
  const caller = callerFromMetadata(call.metadata);
  if (!caller) throw grpcError(grpc.status.UNAUTHENTICATED, 'This method needs the caller identity the gateway injects.');
  return caller;
}

/** The same rules as the HTTP interface's POST /internal/notifications (newNotification). */
function validNewNotification(request: Request): NewNotification {
  const text = (name: string) => String(request[name] ?? '');
  // proto3 sends an unset string as '': an order id left out.
  const orderId = text('orderId');
  return valid(newNotification, { userId: text('userId'), type: text('type'), message: text('message'), ...(orderId === '' ? {} : { orderId }) });
}

/** `value` checked with a zod schema; failures are INVALID_ARGUMENT naming the field. */
function valid<T extends z.ZodType>(schema: T, value: unknown, field = 'request'): z.output<T> {
  const result = schema.safeParse(value);
  if (!result.success) throw grpcError(grpc.status.INVALID_ARGUMENT, describeFirstIssue(result.error, field));
  return result.data;
}

function toMessage(notification: Notification): Record<string, unknown> {
  const millis = Date.parse(notification.createdAt);
  return {
    id: notification.id,
    userId: notification.userId,
    type: notification.type,
    message: notification.message,
    orderId: notification.orderId ?? '',
    createdAt: { seconds: Math.floor(millis / 1000), nanos: (millis % 1000) * 1_000_000 },
  };
}
