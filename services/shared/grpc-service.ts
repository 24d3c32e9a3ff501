import * as grpc from '@grpc/grpc-js';
import type * as protobuf from 'protobufjs';
import type { Logger } from '../../otel/logger';
import { loadProtoRoot } from '../../src/grpc/proto-files';
import { HEADER } from '../../otel/wire-names';
import type { Caller } from './service-app';

/** How services see messages: plain objects, 64-bit integers and enums as strings, unset fields as their defaults. */
const PLAIN: protobuf.IConversionOptions = { longs: String, enums: String, defaults: true, arrays: true, objects: true };

/**
 * The grpc-js definition of a service in a proto file, built from protobufjs (the same loader as the
 * gateway's): handlers receive and return plain objects. Served with `server.addService`, which the
 * OpenTelemetry gRPC instrumentation wraps (a SERVER span per call, continuing the caller's `traceparent`).
 */
export function grpcServiceDefinition(protoFile: string, serviceName: string): grpc.ServiceDefinition {
  const service = loadProtoRoot(protoFile).lookupService(serviceName);
  const definition: Record<string, grpc.MethodDefinition<object, object>> = {};
  for (const method of service.methodsArray) {
    const requestType = method.resolvedRequestType!;
    const responseType = method.resolvedResponseType!;
    definition[method.name] = {
      path: `/${serviceName}/${method.name}`,
      requestStream: Boolean(method.requestStream),
      responseStream: Boolean(method.responseStream),
      requestSerialize: (value: object) => Buffer.from(requestType.encode(requestType.fromObject(value)).finish()),
      requestDeserialize: (bytes: Buffer) => requestType.toObject(requestType.decode(bytes), PLAIN),
      responseSerialize: (value: object) => Buffer.from(responseType.encode(responseType.fromObject(value)).finish()),
      responseDeserialize: (bytes: Buffer) => responseType.toObject(responseType.decode(bytes), PLAIN),
      originalName: method.name,
    };
  }
  return definition;
}

/** One metadata value as a string ('' when absent). */
export function metadataValue(metadata: grpc.Metadata, key: string): string {
  const [value] = metadata.get(key);
  return typeof value === 'string' ? value : '';
}

/** The caller the gateway vouched for in the identity metadata (the same names as the HTTP headers), or undefined. */
export function callerFromMetadata(metadata: grpc.Metadata): Caller | undefined {
  const id = metadataValue(metadata, HEADER.userId);
  if (!id) return undefined;
  return { id, role: metadataValue(metadata, HEADER.userRole), email: metadataValue(metadata, HEADER.userEmail) };
}

/** A gRPC error a handler answers with: status code and message. */
export function grpcError(code: grpc.status, details: string): Partial<grpc.StatusObject> & Error {
  return Object.assign(new Error(details), { code, details });
}

/**
 * grpc-js's own messages (an address it could not bind, a connection it dropped) as JSON log lines of the
 * service, instead of bare `E ...` lines on stderr beside them.
 */
export function logGrpcMessages(logger: Logger): void {
  const write = (level: 'warn' | 'info' | 'debug') => (...parts: unknown[]) => logger.log(level, 'grpc-js', { detail: parts.map(String).join(' ') });
  grpc.setLogger({ error: write('warn'), info: write('info'), debug: write('debug') });
}

/** Binds `server` on `host:port` (0: any free port) and resolves the bound port. */
export function bindGrpcServer(server: grpc.Server, host: string, port: number): Promise<number> {
  const target = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  return new Promise((resolve, reject) => server.bindAsync(target, grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))));
}
