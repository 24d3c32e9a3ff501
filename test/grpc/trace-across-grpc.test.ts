import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { ATTR, HEADER, SERVICE_NAME } from '../../otel/wire-names';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlp-receiver';
import { childEnvironment, onJsonLines } from '../helpers/process-stack';
import { freePort } from '../helpers/servers';
import { TEST_JWT_SECRET } from '../helpers/test-config';

/**
 * One trace across HTTP and gRPC, from what the exporters really send: the gateway and the three services
 * as processes from dist/ (telemetry bootstrap preloaded), notification-service with its gRPC interface on,
 * order-service notifying over it, and the gateway's `/api/v1/notifications` route translating to it.
 */
const ROOT = path.resolve(__dirname, '../..');
const FAST_EXPORT = { OTEL_BSP_SCHEDULE_DELAY: '100', OTEL_BLRP_SCHEDULE_DELAY: '100', OTEL_TRACES_SAMPLER: 'always_on' };
const LIST_METHOD = 'grpc.koagateway.notifications.v1.Notifications/ListNotifications';
const CREATE_METHOD = 'grpc.koagateway.notifications.v1.Notifications/CreateNotification';
const GET_METHOD = 'grpc.koagateway.notifications.v1.Notifications/GetNotification';

interface Started {
  child: ChildProcess;
  url: string;
}

function start(entry: string, env: Record<string, string>): Promise<Started> {
  const child = spawn(process.execPath, ['--require', path.join(ROOT, 'dist/otel/register.js'), path.join(ROOT, 'dist', entry)], {
    cwd: ROOT,
    env: childEnvironment({ NODE_ENV: 'test', PORT: '0', HOST: '127.0.0.1', ...env }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${entry} did not start:\n${stderr}`)), 20_000);
    onJsonLines(child.stdout!, (line) => {
      if (typeof line.url === 'string' && String(line.message).endsWith('listening')) {
        clearTimeout(timer);
        resolve({ child, url: line.url });
      }
    });
    child.once('exit', (code) => reject(new Error(`${entry} exited with ${code}:\n${stderr}`)));
  });
}

describe('one trace across HTTP and gRPC', () => {
  let receiver: OtlpReceiver;
  const processes: ChildProcess[] = [];
  let gatewayUrl: string;
  let token: string;

  beforeAll(async () => {
    receiver = await startOtlpReceiver();
    const telemetry = { ...FAST_EXPORT, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url };
    const grpcUrl = `http://127.0.0.1:${await freePort()}`;
    const launch = async (entry: string, env: Record<string, string>) => {
      const started = await start(entry, { ...telemetry, ...env });
      processes.push(started.child);
      return started.url;
    };
    const [users, notifications] = await Promise.all([
      launch('services/users/main.js', {}),
      launch('services/notifications/main.js', { GRPC_PORT: new URL(grpcUrl).port }),
    ]);
    const orders = await launch('services/orders/main.js', { USER_SERVICE_URL: users, NOTIF_SERVICE_URL: notifications, NOTIF_GRPC_SERVICE_URL: grpcUrl });
    gatewayUrl = await launch('src/main.js', { JWT_SECRET: TEST_JWT_SECRET, USER_SERVICE_URL: users, ORDER_SERVICE_URL: orders, NOTIF_SERVICE_URL: notifications, NOTIF_GRPC_SERVICE_URL: grpcUrl });
    const login = await fetch(`${gatewayUrl}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'alice@example.com', password: 'wonderland' }) });
    token = ((await login.json()) as { token: string }).token;
  });
  afterAll(async () => {
    await Promise.all(
      processes.map(
        (child) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve();
            child.once('exit', () => resolve());
            child.kill('SIGKILL');
          }),
      ),
    );
    await receiver?.close();
  });

  function tree(spans: readonly ReceivedSpan[], traceId: string) {
    const trace = spans.filter((span) => span.traceId === traceId);
    const byId = new Map(trace.map((span) => [span.spanId, span]));
    return { trace, parentOf: (span: ReceivedSpan) => byId.get(span.parentSpanId ?? '') };
  }

  it('makes GET /api/v1/notifications one trace: gateway SERVER -> gateway gRPC CLIENT -> notification-service gRPC SERVER, logs correlated', async () => {
    const response = await fetch(`${gatewayUrl}/api/v1/notifications`, { headers: { authorization: `Bearer ${token}` } });
    expect(response.status).toBe(200);
    const traceId = response.headers.get(HEADER.requestId)!;
    const { spans, logs } = await receiver.waitFor(
      ({ spans, logs }) =>
        spans.some((span) => span.traceId === traceId && span.serviceName === SERVICE_NAME.notifications && span.kind === 'SERVER') &&
        spans.some((span) => span.traceId === traceId && span.serviceName === SERVICE_NAME.gateway && span.kind === 'SERVER') &&
        spans.some((span) => span.traceId === traceId && span.serviceName === SERVICE_NAME.gateway && span.kind === 'CLIENT') &&
        logs.some((log) => log.traceId === traceId && log.serviceName === SERVICE_NAME.notifications),
      15_000,
    );
    const { trace, parentOf } = tree(spans, traceId);
    const service = trace.find((span) => span.serviceName === SERVICE_NAME.notifications && span.kind === 'SERVER')!;
    expect(service.name).toBe(LIST_METHOD);
    expect(service.attributes).toMatchObject({ 'rpc.system': 'grpc' });
    const client = parentOf(service)!;
    expect(client).toMatchObject({ serviceName: SERVICE_NAME.gateway, kind: 'CLIENT', name: LIST_METHOD });
    expect(client.attributes).toMatchObject({ 'rpc.system': 'grpc', 'rpc.grpc.status_code': 0, [ATTR.upstreamService]: 'notifications' });
    expect(parentOf(client)).toMatchObject({ serviceName: SERVICE_NAME.gateway, kind: 'SERVER' });
    // The request id reaches the service's span (baggage) and its log line (metadata).
    expect(service.attributes[ATTR.requestId]).toBe(traceId);
    expect(logs.filter((log) => log.traceId === traceId && log.serviceName === SERVICE_NAME.notifications).map((log) => log.body)).toContain('rpc handled');
  });

  it('makes POST /api/orders reach notification-service over gRPC in the same trace', async () => {
    const response = await fetch(`${gatewayUrl}/api/orders`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ items: [{ sku: 'book-42', quantity: 1 }] }),
    });
    expect(response.status).toBe(201);
    const traceId = response.headers.get(HEADER.requestId)!;
    // Each process exports on its own schedule: wait for both ends of the call.
    const { spans } = await receiver.waitFor(
      ({ spans }) =>
        spans.some((span) => span.traceId === traceId && span.serviceName === SERVICE_NAME.notifications && span.kind === 'SERVER') &&
        spans.some((span) => span.traceId === traceId && span.serviceName === SERVICE_NAME.orders && span.kind === 'CLIENT' && span.name === CREATE_METHOD),
      15_000,
    );
    const { trace, parentOf } = tree(spans, traceId);
    const service = trace.find((span) => span.serviceName === SERVICE_NAME.notifications && span.kind === 'SERVER')!;
    expect(service.name).toBe(CREATE_METHOD);
    expect(parentOf(service)).toMatchObject({ serviceName: SERVICE_NAME.orders, kind: 'CLIENT', name: CREATE_METHOD });
  });

  // The gRPC conventions' span status: a CLIENT span is an error for every status but OK, a SERVER span only for
  // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and DATA_LOSS (the server's failures), as an
  // HTTP SERVER span is for 5xx only. instrumentation-grpc marked every non-OK SERVER span an error: a lookup of an
  // id that does not exist showed notification-service failing.
  it('leaves a NOT_FOUND answered by notification-service unset on its SERVER span, an error on the calling CLIENT span', async () => {
    const response = await fetch(`${gatewayUrl}/api/v1/notifications/no-such-id`, { headers: { authorization: `Bearer ${token}` } });
    expect(response.status).toBe(404);
    const traceId = response.headers.get(HEADER.requestId)!;
    const { spans } = await receiver.waitFor(
      ({ spans }) =>
        spans.some((span) => span.traceId === traceId && span.serviceName === SERVICE_NAME.notifications && span.kind === 'SERVER') &&
        spans.some((span) => span.traceId === traceId && span.serviceName === SERVICE_NAME.gateway && span.kind === 'CLIENT'),
      15_000,
    );
    const { trace, parentOf } = tree(spans, traceId);
    const service = trace.find((span) => span.serviceName === SERVICE_NAME.notifications && span.kind === 'SERVER')!;
    expect(service).toMatchObject({ name: GET_METHOD, status: { code: 0, message: '' } });
    expect(service.attributes).toMatchObject({ 'rpc.grpc.status_code': 5 });
    expect(parentOf(service)).toMatchObject({ serviceName: SERVICE_NAME.gateway, kind: 'CLIENT', status: { code: 2, message: 'NOT_FOUND' } });
  });
});
