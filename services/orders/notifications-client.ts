import * as grpc from '@grpc/grpc-js';
import { context, propagation } from '@opentelemetry/api';
import { loadProtoRoot } from '../../src/grpc/proto-files';
import { HEADER, SIGNATURE_AUDIENCE } from '../../otel/wire-names';
import type { GatewaySigner, SignedValues } from '../../src/gateway-signature';
import { signedIdentityHeaders } from '../shared/service-app';
import { NOTIFICATION_POSTS, NOTIFICATIONS_SERVICE } from '../notifications/callers';
import { NOTIFICATIONS_PROTO } from '../notifications/grpc-server';

export interface NewOrderNotification {
  userId: string;
  type: string;
  message: string;
  orderId: string;
}

/** notification-service's CreateNotification over gRPC (proto/notifications.proto). */
export interface NotificationsGrpcClient {
  /** Resolves when stored; rejects with the grpc-js error (its `code` is the gRPC status). `identity`: the caller the gateway vouched for, passed on as metadata. */
  create(input: NewOrderNotification, requestId: string, identity: SignedValues): Promise<void>;
  close(): void;
}

export interface NotificationsGrpcClientOptions {
  /**
   * Write the active context's `traceparent`, `tracestate` and `baggage` into each call's metadata: for a process
   * without the gRPC instrumentation, which does it otherwise (telemetry off). Default false.
   */
  propagate?: boolean;
}

const metadataSetter = { set: (carrier: grpc.Metadata, key: string, value: string) => carrier.set(key, value) };

/** Longest wait for the notification service, ms: an order never waits long for its notification. */
const DEADLINE_MS = 2000;

/**
 * One channel to notification-service's gRPC interface. The OpenTelemetry gRPC instrumentation wraps
 * `makeUnaryRequest`, so each call gets a CLIENT span and carries `traceparent` as metadata; the request id
 * travels as `x-request-id` metadata, as it does as a header over HTTP. With the key's signer (`sign`) each call
 * carries a signature for that call (notification-service, `POST` and its path), as the gateway's do.
 */
export function createNotificationsGrpcClient(url: string, sign: GatewaySigner | undefined, options: NotificationsGrpcClientOptions = {}): NotificationsGrpcClient {
  const { hostname, port, protocol } = new URL(url);
  const client = new grpc.Client(`${hostname}:${port || (protocol === 'https:' ? 443 : 80)}`, protocol === 'https:' ? grpc.credentials.createSsl() : grpc.credentials.createInsecure());
  const service = loadProtoRoot(NOTIFICATIONS_PROTO).lookupService(NOTIFICATIONS_SERVICE);
  const method = service.methods.CreateNotification!;
  const requestType = method.resolvedRequestType!;
  const responseType = method.resolvedResponseType!;
  return {
    create(input, requestId, identity) {
      const path = NOTIFICATION_POSTS.grpc;
      const metadata = new grpc.Metadata();
      if (requestId) metadata.set(HEADER.requestId, requestId);
      for (const [name, value] of Object.entries(signedIdentityHeaders(identity, { audience: SIGNATURE_AUDIENCE.notifications, method: 'POST', target: path, requestId: requestId ?? '' }, sign))) metadata.set(name, value);
      if (options.propagate) propagation.inject(context.active(), metadata, metadataSetter);
      return new Promise((resolve, reject) => {
        client.makeUnaryRequest(
          path,
          (value: object) => Buffer.from(requestType.encode(requestType.fromObject(value)).finish()),
          (bytes: Buffer) => responseType.decode(bytes),
          input,
          metadata,
          { deadline: Date.now() + DEADLINE_MS },
          (error) => (error ? reject(error) : resolve()),
        );
      });
    },
    close: () => client.close(),
  };
}
