import net from 'node:net';
import { createGatewayApps } from '../../src/gateway';
import { MAX_GRPC_RECONNECT_BACKOFF_MS } from '../../src/grpc/grpc-clients';
import { freePort, listen, memoryLogger, type TestServer } from '../helpers/servers';
import { shippedConfigFile, testConfig } from '../helpers/test-config';
import { waitFor } from '../helpers/wait';
import { MAPPING_PROTO, MAPPING_SERVICE, startMappingServer, type MappingServer } from './mapping-server';

/** The service's passive-health window in this test, ms: HTTP routes are tried again after it. */
const EJECT_MS = 1000;
/** grpc-js's backoff jitter (20 %), plus room for a busy machine, ms. */
const SLACK_MS = 0.2 * MAX_GRPC_RECONNECT_BACKOFF_MS + 600;

/**
 * A gRPC service that was unreachable for a while: the gateway's channel must keep trying it every few seconds,
 * not on grpc-js's default backoff (x1.6 up to 120 s), so the route recovers within about the passive-health
 * window once the service is back, as HTTP routes do.
 */
describe('gRPC service recovery after an outage', () => {
  let gateway: TestServer | undefined;
  let refuser: net.Server | undefined;
  let service: MappingServer | undefined;
  afterAll(async () => {
    await gateway?.close();
    refuser?.close();
    await service?.close();
  });

  it('answers 200 again within ejectMs plus the reconnect cap once the service is back, however long it was down', async () => {
    const port = await freePort();
    // Down: accepts each connection and closes it at once, so every attempt of the channel is seen.
    const attempts: number[] = [];
    refuser = net.createServer((socket) => {
      attempts.push(Date.now());
      socket.destroy();
    });
    await new Promise<void>((resolve) => refuser!.listen(port, '127.0.0.1', resolve));
    const shipped = shippedConfigFile() as { services: Record<string, unknown>; routes: unknown[] };
    const config = testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' }, {
      // Polled as a client retrying after each 503 would, faster than the shipped limit allows.
      rateLimit: { max: 100_000, windowMs: 60_000 },
      services: { ...shipped.services, flaky: { url: `http://127.0.0.1:${port}`, ejectMs: EJECT_MS } },
      routes: [...shipped.routes, { name: 'flaky', prefix: '/api/flaky', service: 'flaky', upstreamPath: '/v1', auth: 'public', grpc: { proto: MAPPING_PROTO, service: MAPPING_SERVICE } }],
    });
    gateway = await listen(createGatewayApps(config, { logger: memoryLogger('gateway').logger, metrics: false }).gateway.callback());
    const status = async () => (await fetch(`${gateway!.url}/api/flaky/metadata`)).status;

    // Six attempts: by grpc-js's default the next wait would be 6.6 s +- 20 %, and growing.
    await waitFor(async () => (await status()) !== 200 && attempts.length >= 6, 'six connection attempts', 20_000);
    const gaps = attempts.slice(1).map((at, index) => at - attempts[index]!);
    expect(Math.max(...gaps)).toBeLessThan(MAX_GRPC_RECONNECT_BACKOFF_MS + SLACK_MS);

    await new Promise<void>((resolve) => refuser!.close(() => resolve()));
    service = await startMappingServer(port);
    const back = Date.now();
    await waitFor(async () => (await status()) === 200, 'the route to answer 200 again', EJECT_MS + MAX_GRPC_RECONNECT_BACKOFF_MS + SLACK_MS + 1000);
    expect(Date.now() - back).toBeLessThan(EJECT_MS + MAX_GRPC_RECONNECT_BACKOFF_MS + SLACK_MS + 1000);
  });
});
