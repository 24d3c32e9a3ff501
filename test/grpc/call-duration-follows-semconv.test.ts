import * as grpc from '@grpc/grpc-js';
import { metrics } from '@opentelemetry/api';
import { MeterProvider, MetricReader, type DataPoint, type Histogram } from '@opentelemetry/sdk-metrics';
import { createGrpcServer, NOTIFICATIONS_PROTO, NOTIFICATIONS_SERVICE } from '../../services/notifications/grpc-server';
import { createNotificationStore, type NotificationStore } from '../../services/notifications/notification-store';
import { bindGrpcServer, grpcServiceDefinition } from '../../services/shared/grpc-service';
import { memoryLogger } from '../helpers/servers';

/**
 * notification-service's `rpc.server.call.duration` against semconv 1.45 (RPC metrics, gRPC): the status is the one
 * the caller got, and `error.type` (Conditionally Required "if and only if the operation failed") is that status for
 * the codes the gRPC conventions count as a server's failures, absent for the others. A handler that threw a plain
 * Error was recorded as INTERNAL, though grpc-js sent UNKNOWN, and no call ever carried error.type.
 */
class ManualReader extends MetricReader {
  protected async onForceFlush(): Promise<void> {}
  protected async onShutdown(): Promise<void> {}
}

const reader = new ManualReader();
let server: grpc.Server;
let logLines: Record<string, unknown>[];
let client: grpc.Client & Record<string, (request: object, metadata: grpc.Metadata, callback: (error: grpc.ServiceError | null) => void) => void>;
/** While true, the store fails as one whose backend broke would. */
let broken = false;

beforeAll(async () => {
  metrics.setGlobalMeterProvider(new MeterProvider({ readers: [reader] }));
  const store: NotificationStore = createNotificationStore();
  const forUser = store.forUser.bind(store);
  store.forUser = (id) => {
    if (broken) throw new Error('the store broke');
    return forUser(id);
  };
  const captured = memoryLogger('quiet');
  logLines = captured.lines;
  server = createGrpcServer({ logger: captured.logger, store });
  const port = await bindGrpcServer(server, '127.0.0.1', 0);
  const Client = grpc.makeGenericClientConstructor(grpcServiceDefinition(NOTIFICATIONS_PROTO, NOTIFICATIONS_SERVICE), 'Notifications');
  client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as typeof client;
});
afterAll(async () => {
  client.close();
  await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
  metrics.disable();
});

function call(method: string, request: object, caller = true): Promise<grpc.status> {
  const metadata = new grpc.Metadata();
  if (caller) {
    metadata.set('x-user-id', '1');
    metadata.set('x-user-role', 'user');
  }
  return new Promise((resolve) => client[method]!(request, metadata, (error) => resolve(error ? error.code : grpc.status.OK)));
}

/** The call-duration points recorded so far (cumulative: one per attribute set). */
async function points(): Promise<DataPoint<Histogram>[]> {
  const { resourceMetrics } = await reader.collect();
  return resourceMetrics.scopeMetrics
    .flatMap((scope) => scope.metrics)
    .filter((metric) => metric.descriptor.name === 'rpc.server.call.duration')
    .flatMap((metric) => metric.dataPoints as DataPoint<Histogram>[]);
}

it.each([
  { desc: 'a call that succeeded', method: 'ListNotifications', request: { type: '' }, failingStore: false, caller: true, status: 'OK', errorType: undefined },
  { desc: "a NOT_FOUND (the caller's request)", method: 'GetNotification', request: { id: 'zzz' }, failingStore: false, caller: true, status: 'NOT_FOUND', errorType: undefined },
  { desc: 'a call without the caller identity (UNAUTHENTICATED)', method: 'ListNotifications', request: { type: '' }, failingStore: false, caller: false, status: 'UNAUTHENTICATED', errorType: undefined },
  { desc: 'a handler that threw a plain Error (grpc-js sends UNKNOWN)', method: 'ListNotifications', request: { type: 'x' }, failingStore: true, caller: true, status: 'UNKNOWN', errorType: 'UNKNOWN' },
])('$desc: recorded with the status sent ($status) and error.type $errorType', async ({ method, request, failingStore, caller, status, errorType }) => {
  const got = await (async () => {
    broken = failingStore;
    try {
      return await call(method, request, caller);
    } finally {
      broken = false;
    }
  })();
  expect(grpc.status[got]).toBe(status);
  const recorded = (await points()).filter((point) => point.attributes['rpc.method'] === `${NOTIFICATIONS_SERVICE}/${method}` && point.attributes['rpc.status_code'] === status);
  expect(recorded).toHaveLength(1);
  expect(recorded[0]!.attributes['rpc.system.name']).toBe('grpc');
  expect(recorded[0]!.attributes['error.type']).toBe(errorType);
});

/** A call with `bytes` as its request message, undecoded by the client: what a peer with another proto can send. */
function rawCall(method: string, bytes: Buffer): Promise<grpc.status> {
  return new Promise((resolve) =>
    client.makeUnaryRequest(`/${NOTIFICATIONS_SERVICE}/${method}`, (raw: Buffer) => raw, (raw: Buffer) => raw, bytes, new grpc.Metadata(), {}, (error) => resolve(error ? error.code : grpc.status.OK)),
  );
}

// Refused by grpc-js before the handler runs: the handler never saw them, so nothing recorded or logged them.
it.each([
  { desc: 'a request that does not decode', method: 'GetNotification', bytes: Buffer.from([0x0a, 0xff, 0xff, 0xff]), status: 'INTERNAL', errorType: 'INTERNAL' },
  { desc: 'a request over the 4 MiB limit', method: 'CreateNotification', bytes: Buffer.alloc(5 * 1024 * 1024, 0x0a), status: 'RESOURCE_EXHAUSTED', errorType: undefined },
])('$desc: recorded and logged with the status grpc-js sent ($status)', async ({ method, bytes, status, errorType }) => {
  expect(grpc.status[await rawCall(method, bytes)]).toBe(status);
  const recorded = (await points()).filter((point) => point.attributes['rpc.method'] === `${NOTIFICATIONS_SERVICE}/${method}` && point.attributes['rpc.status_code'] === status);
  expect(recorded).toHaveLength(1);
  expect(recorded[0]!.value.count).toBe(1);
  expect(recorded[0]!.attributes['error.type']).toBe(errorType);
  expect(logLines).toContainEqual(expect.objectContaining({ message: 'rpc handled', rpc: method, grpc_status: status }));
});
