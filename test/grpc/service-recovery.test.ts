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

/**
 * A TCP relay to `target` that can go silent: once `vanish()` is called it forwards nothing either way and closes
 * nothing, as an instance behind a network drop (no FIN, no RST: the gateway's socket stays open and writable).
 */
async function startVanishingRelay(target: number): Promise<{ port: number; vanish(): void; close(): void }> {
  let silent = false;
  const sockets = new Set<net.Socket>();
  const relay = net.createServer((client) => {
    const upstream = net.connect(target, '127.0.0.1');
    for (const [from, to] of [[client, upstream], [upstream, client]] as const) {
      sockets.add(from);
      from.on('data', (chunk) => void (silent || to.write(chunk)));
      from.on('error', () => to.destroy());
      from.on('close', () => void (silent || to.destroy()));
    }
  });
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  return {
    port: (relay.address() as net.AddressInfo).port,
    vanish: () => void (silent = true),
    close: () => {
      for (const socket of sockets) socket.destroy();
      relay.close();
    },
  };
}

describe('gRPC keepalive (services.<name>.keepalive)', () => {
  const KEEPALIVE = { timeMs: 10_000, timeoutMs: 1000 };
  /** The route's timeout, the unary call's deadline: far beyond the keepalive's ping and its wait. */
  const TIMEOUT_MS = 40_000;
  let gateway: TestServer | undefined;
  let service: MappingServer | undefined;
  let relay: Awaited<ReturnType<typeof startVanishingRelay>> | undefined;
  afterAll(async () => {
    await gateway?.close();
    relay?.close();
    await service?.close();
  });

  it('answers 503 within timeMs + timeoutMs, not at the deadline, when an instance vanishes without closing the connection mid-call', async () => {
    service = await startMappingServer();
    relay = await startVanishingRelay(Number(new URL(service.url).port));
    const shipped = shippedConfigFile() as { services: Record<string, unknown>; routes: unknown[] };
    const config = testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' }, {
      services: { ...shipped.services, vanishing: { url: `http://127.0.0.1:${relay.port}`, keepalive: KEEPALIVE } },
      routes: [...shipped.routes, { name: 'vanishing', prefix: '/api/vanishing', service: 'vanishing', upstreamPath: '/v1', auth: 'public', timeoutMs: TIMEOUT_MS, deadlineMs: TIMEOUT_MS, grpc: { proto: MAPPING_PROTO, service: MAPPING_SERVICE } }],
    });
    gateway = await listen(createGatewayApps(config, { logger: memoryLogger('gateway').logger, metrics: false }).gateway.callback());
    // The channel is connected and known good before the instance goes.
    expect((await fetch(`${gateway.url}/api/vanishing/metadata`)).status).toBe(200);

    const started = Date.now();
    // The service would answer after 10 s; by then nothing it sends gets through.
    const answer = fetch(`${gateway.url}/api/vanishing/slow?delayMs=10000`);
    await waitFor(() => service!.calls.some((call) => call.method === 'Slow'), 'the call to reach the service', 5000);
    relay.vanish();
    const response = await answer;
    const elapsed = Date.now() - started;
    expect(response.status).toBe(503);
    expect(await response.json()).toMatchObject({ code: 'upstream_unavailable' });
    // One ping 10 s into the call, unanswered for 1 s: the connection is dropped then, not at the 40 s deadline.
    expect(elapsed).toBeLessThan(KEEPALIVE.timeMs + KEEPALIVE.timeoutMs + 5000);
  }, 60_000);
});
