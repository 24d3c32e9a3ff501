import * as grpc from '@grpc/grpc-js';
import { createGatewayApps } from '../../src/gateway';
import { grpcFailure } from '../../src/grpc/status-errors';
import { HEADER, SERVICE_NAME } from '../../otel/wire-names';
import { createGrpcServer } from '../../services/notifications/grpc-server';
import { createNotificationStore } from '../../services/notifications/notification-store';
import { createApp as createUsersApp } from '../../services/users/app';
import { bindGrpcServer } from '../../services/shared/grpc-service';
import { login } from '../helpers/stack';
import { listen, memoryLogger, refusedOrigin, type TestServer } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';

/**
 * A service refusing the gateway's own signature over gRPC (keys or clocks apart) was answered to the client as a 401
 * grpc_unauthenticated quoting the service ("This service answers only calls signed by the gateway (signature
 * mismatch)") with `WWW-Authenticate: Bearer`: told to sign in again, which nothing it could send would fix. Over HTTP
 * the same refusal is 502 upstream_bad_response, the gateway's failure, neither retried nor blamed on the instance.
 */
describe("notification-service refusing the gateway's signature over gRPC", () => {
  let grpcServer: grpc.Server;
  let servers: TestServer[];
  let gatewayUrl: string;
  let token: string;
  const gatewayLogs = memoryLogger('gateway');
  const notificationsLogs = memoryLogger(SERVICE_NAME.notifications);

  beforeAll(async () => {
    grpcServer = createGrpcServer({ logger: notificationsLogs.logger, store: createNotificationStore(), signingKey: 'a-signing-key-other-than-the-one-the-gateway-holds' });
    const grpcUrl = `http://127.0.0.1:${await bindGrpcServer(grpcServer, '127.0.0.1', 0)}`;
    const users = await listen((await createUsersApp({ logger: memoryLogger('quiet').logger })).callback());
    const config = testConfig({ users: users.url, orders: await refusedOrigin(), notifications: await refusedOrigin() }, {}, { NOTIF_GRPC_SERVICE_URL: grpcUrl });
    const gateway = await listen(createGatewayApps(config, { logger: gatewayLogs.logger, metrics: false }).gateway.callback());
    servers = [users, gateway];
    gatewayUrl = gateway.url;
    token = await login(gatewayUrl);
  });
  afterAll(async () => {
    await Promise.all(servers.map((server) => server.close()));
    await new Promise<void>((resolve) => grpcServer.tryShutdown(() => resolve()));
  });

  /** The service's refusals it logged (one `rpc handled` line per call). */
  const refusalsAtService = () => notificationsLogs.lines.filter((line) => line.message === 'rpc handled' && line.grpc_status === 'UNAUTHENTICATED').length;

  it.each([
    { desc: 'a unary call', path: '/api/v1/notifications' },
    { desc: 'a server stream', path: '/api/v1/notifications/stream' },
  ])('answers $desc with 502 upstream_bad_response in its own words, asks once, logs it and keeps the instance', async ({ path }) => {
    // More rounds than ejectAfterFailures (3): blamed on the instance, the last ones would be 503 upstream_unavailable.
    for (let round = 0; round < 5; round++) {
      const before = refusalsAtService();
      const response = await fetch(`${gatewayUrl}${path}`, { headers: { authorization: `Bearer ${token}` } });
      const text = await response.text();
      expect(response.status).toBe(502);
      expect(response.headers.get('www-authenticate')).toBeNull();
      const body = JSON.parse(text) as { code: string; detail: string; requestId: string };
      expect(body).toMatchObject({ code: 'upstream_bad_response', requestId: response.headers.get(HEADER.requestId) });
      expect(body.detail).toMatch(/refused the gateway's signature/);
      // The operator's hint is the log line's (below), not the client's.
      expect(body.detail).not.toMatch(/keys|clocks/);
      expect(text).not.toContain('This service answers only');
      expect(refusalsAtService() - before).toBe(1);
      // The gateway's own failure: logged, as over HTTP.
      expect(gatewayLogs.lines).toContainEqual(expect.objectContaining({ message: 'request failed', code: 'upstream_bad_response', request_id: body.requestId, error: expect.stringMatching(/signing keys, or clocks, apart/) }));
    }
  });
});

/** Only a service's UNAUTHENTICATED whose trailers challenge for the gateway's signature is the gateway's fault. */
describe('a gRPC UNAUTHENTICATED, by the challenge its trailers carry', () => {
  const failure = (code: grpc.status, challenges: string[]) => {
    const metadata = new grpc.Metadata();
    for (const challenge of challenges) metadata.add(HEADER.wwwAuthenticate, challenge);
    return Object.assign(new Error(`${code} ${grpc.status[code]}: service text`), { code, details: 'service text', metadata });
  };

  it.each([
    { desc: 'no challenge (a client credential the service refused)', code: grpc.status.UNAUTHENTICATED, challenges: [], status: 401, error: 'grpc_unauthenticated' },
    { desc: "a Bearer challenge of the service's own", code: grpc.status.UNAUTHENTICATED, challenges: ['Bearer realm="svc"'], status: 401, error: 'grpc_unauthenticated' },
    { desc: 'a scheme whose name only begins like the signature one', code: grpc.status.UNAUTHENTICATED, challenges: ['GatewaySignatureV0 realm="svc"'], status: 401, error: 'grpc_unauthenticated' },
    { desc: 'the signature challenge', code: grpc.status.UNAUTHENTICATED, challenges: ['GatewaySignature realm="koa-gateway"'], status: 502, error: 'upstream_bad_response' },
    { desc: 'the signature challenge among others, any case', code: grpc.status.UNAUTHENTICATED, challenges: ['Bearer realm="svc", gatewaysignature realm="koa-gateway"'], status: 502, error: 'upstream_bad_response' },
    { desc: 'the signature challenge on a PERMISSION_DENIED', code: grpc.status.PERMISSION_DENIED, challenges: ['GatewaySignature realm="koa-gateway"'], status: 403, error: 'grpc_permission_denied' },
  ])('maps one with $desc to $status $error', ({ code, challenges, status, error }) => {
    const mapped = grpcFailure('notifications', failure(code, challenges));
    expect({ status: mapped.status, code: mapped.code }).toEqual({ status, code: error });
    if (status === 502) {
      expect(mapped.message).not.toContain('service text');
      expect(mapped.headers).toEqual({});
    }
  });
});
