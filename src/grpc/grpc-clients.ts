import * as grpc from '@grpc/grpc-js';
import { propagation, SpanKind, SpanStatusCode, type Context, type Span, type Tracer, trace } from '@opentelemetry/api';
import { ATTR_SERVER_ADDRESS, ATTR_SERVER_PORT } from '@opentelemetry/semantic-conventions';
import type * as protobuf from 'protobufjs';
import { ATTR, HEADER } from '../../otel/wire-names';
import type { GrpcKeepalive } from '../config';
import type { UpstreamInstance } from '../upstream-pool';
import type { GrpcMethod } from './http-rules';
import { MAX_GRPC_MESSAGE_BYTES } from './message-limits';
import { grpcStatusName } from './status-errors';

export { MAX_GRPC_MESSAGE_BYTES } from './message-limits';

/**
 * Longest wait between a channel's attempts to reconnect to an instance that went away, ms. grpc-js retries on
 * its own backoff (1 s, x1.6 with 20 % jitter) up to 120 s by default, and while it waits every call fails at once
 * with UNAVAILABLE without trying to connect: after a few minutes of outage a route stayed 503 for up to two
 * minutes after the service was back. HTTP routes connect on demand, so they recover as soon as passive health
 * lets an instance be tried again (`ejectMs`, 10 s by default); capped at 2 s, a channel is connected again
 * within about 2.4 s of the service's return, well inside that window. An attempt is one refused TCP connection
 * while the service is down.
 */
export const MAX_GRPC_RECONNECT_BACKOFF_MS = 2000;
/** First wait before reconnecting, ms (grpc-js's own default, written out because the cap above depends on it). */
export const INITIAL_GRPC_RECONNECT_BACKOFF_MS = 1000;

/**
 * grpc-js clients by instance origin (and keepalive settings). Kept across config reloads (src/config-reload.ts) as
 * the HTTP connections are: a channel is never garbage (grpc-js registers each in its global channelz table until
 * `close()`), so one made per reload would be one leaked per reload.
 */
export type GrpcClientCache = Map<string, grpc.Client>;

/**
 * One grpc-js client (one HTTP/2 channel) per service instance and keepalive setting, made on first use and
 * reused: channels multiplex every call, so there is nothing to pool. Plaintext (h2c) for `http://` origins, TLS
 * for `https://`. `keepalive` is the service's (config `services.<name>.keepalive`, none when absent); a reload that
 * changes it gets a channel of its own, as grpc-js fixes a channel's options when it is made.
 */
export function createGrpcClients(clients: GrpcClientCache = new Map()): (instance: UpstreamInstance, keepalive?: GrpcKeepalive) => grpc.Client {
  return (instance, keepalive) => {
    const key = grpcChannelKey(instance.origin, keepalive);
    let client = clients.get(key);
    if (!client) {
      const host = instance.hostname.includes(':') ? `[${instance.hostname}]` : instance.hostname;
      client = new grpc.Client(`${host}:${instance.port}`, instance.secure ? grpc.credentials.createSsl() : grpc.credentials.createInsecure(), {
        'grpc.max_receive_message_length': MAX_GRPC_MESSAGE_BYTES,
        'grpc.max_send_message_length': MAX_GRPC_MESSAGE_BYTES,
        // Retries are the gateway's business (and a POST is not safe to replay).
        'grpc.enable_retries': 0,
        'grpc.initial_reconnect_backoff_ms': INITIAL_GRPC_RECONNECT_BACKOFF_MS,
        'grpc.max_reconnect_backoff_ms': MAX_GRPC_RECONNECT_BACKOFF_MS,
        ...(keepalive && keepaliveOptions(keepalive)),
      });
      clients.set(key, client);
    }
    return client;
  };
}

/** A channel's key in the GrpcClientCache: the instance's origin (`http://10.0.0.7:50051`) and its keepalive setting. */
export function grpcChannelKey(origin: string, keepalive?: GrpcKeepalive): string {
  return keepalive ? `${origin} keepalive=${keepalive.timeMs}/${keepalive.timeoutMs}/${keepalive.withoutCalls}` : origin;
}

/**
 * grpc-js's names for a service's keepalive (@grpc/grpc-js 1.14, src/transport.ts). A ping unanswered within
 * `timeoutMs` closes the connection, failing its calls UNAVAILABLE; a server's GOAWAY "too_many_pings" makes grpc-js
 * double `timeMs` for that channel (gRFC A8).
 */
function keepaliveOptions(keepalive: GrpcKeepalive): grpc.ChannelOptions {
  return {
    'grpc.keepalive_time_ms': keepalive.timeMs,
    'grpc.keepalive_timeout_ms': keepalive.timeoutMs,
    'grpc.keepalive_permit_without_calls': keepalive.withoutCalls ? 1 : 0,
  };
}

/**
 * Header names that are never metadata: HTTP/2 and gRPC set them (`content-type`, `te`, `grpc-*`), or they
 * describe the client's HTTP exchange, not the call (`host`, `content-length`, `accept-encoding`).
 */
const NOT_METADATA = new Set(['host', 'content-type', 'content-length', 'te', 'user-agent', 'accept-encoding', 'accept', HEADER.traceparent, HEADER.tracestate, HEADER.baggage]);
const METADATA_KEY = /^[0-9a-z_.-]+$/;
const METADATA_VALUE = /^[\x20-\x7e]*$/;

/**
 * Most metadata entries (header fields) a call carries from the request's headers. A Node service's HTTP/2 server
 * takes at most 128 header fields per stream (`maxHeaderListPairs`) and resets a stream with more, which grpc-js
 * reports as RESOURCE_EXHAUSTED ("Bandwidth exhausted"): a request with 120 headers was answered 429 "retry later".
 * 100 leaves room for the pseudo-headers (4), grpc-js's own fields (up to 7) and the trace context (up to 3).
 */
export const MAX_METADATA_ENTRIES = 100;

/**
 * gRPC metadata from the headers a service would get over HTTP (upstreamRequestHeaders: client headers
 * filtered, then request id, identity and forwarding headers written by the gateway), so both protocols
 * strip and inject by the same rules. Binary (`-bin`) and non-ASCII values are dropped: grpc-js refuses them.
 * Undefined when that is more than MAX_METADATA_ENTRIES fields.
 */
export function metadataFromHeaders(headers: Readonly<Record<string, string | string[]>>): grpc.Metadata | undefined {
  const metadata = new grpc.Metadata();
  let entries = 0;
  for (const [name, value] of Object.entries(headers)) {
    if (NOT_METADATA.has(name) || name.startsWith('grpc-') || name.endsWith('-bin') || !METADATA_KEY.test(name)) continue;
    for (const each of Array.isArray(value) ? value : [value]) {
      if (!METADATA_VALUE.test(each)) continue;
      if (++entries > MAX_METADATA_ENTRIES) return undefined;
      metadata.add(name, each);
    }
  }
  return metadata;
}

const metadataSetter = { set: (carrier: grpc.Metadata, key: string, value: string) => carrier.set(key, value) };

/**
 * The CLIENT span of one call, named `grpc.package.Service/Method` as @opentelemetry/instrumentation-grpc names
 * the services' spans (so both ends read alike in Jaeger), with trace context injected into `metadata`.
 */
export function startGrpcSpan(tracer: Tracer, method: GrpcMethod, instance: UpstreamInstance, service: string, parent: Context, metadata: grpc.Metadata): Span {
  const span = tracer.startSpan(
    `grpc.${method.path.slice(1)}`,
    {
      kind: SpanKind.CLIENT,
      attributes: {
        'rpc.system': 'grpc',
        'rpc.service': method.service,
        'rpc.method': method.name,
        [ATTR_SERVER_ADDRESS]: instance.hostname,
        [ATTR_SERVER_PORT]: instance.port,
        [ATTR.upstreamService]: service,
      },
    },
    parent,
  );
  propagation.inject(trace.setSpan(parent, span), metadata, metadataSetter);
  return span;
}

export function endGrpcSpan(span: Span, code: grpc.status, error?: Error): void {
  span.setAttribute('rpc.grpc.status_code', code);
  if (code !== grpc.status.OK) {
    if (error) span.recordException(error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: grpcStatusName(code) });
  }
  span.end();
}

/**
 * The request message as the bytes of one call, or undefined when they exceed MAX_GRPC_MESSAGE_BYTES. Encoded by
 * the gateway, not by grpc-js's serializer, so that size is known before the call: the proto3 JSON mapping can
 * grow a body several times over (each `0` in a ListValue is an 11-byte Value), and grpc-js refuses an oversized
 * message only once called, as RESOURCE_EXHAUSTED, the status a service uses for "over your quota, retry later".
 */
export function encodeRequest(type: protobuf.Type, message: protobuf.Message): Buffer | undefined {
  const bytes = type.encode(message).finish();
  return bytes.length > MAX_GRPC_MESSAGE_BYTES ? undefined : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
}

/** grpc-js's serializer for a request encodeRequest already made. */
export function encodedBytes(bytes: Buffer): Buffer {
  return bytes;
}

export function deserializer(type: protobuf.Type): (bytes: Buffer) => protobuf.Message {
  return (bytes) => type.decode(bytes);
}
