import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { KeptAcrossReloads } from '../../src/config-reload';
import { createGatewayApps } from '../../src/gateway';
import { MAX_GRPC_RECONNECT_BACKOFF_MS } from '../../src/grpc/grpc-clients';
import { freePort, listen, memoryLogger, type TestServer } from '../helpers/servers';
import { shippedConfigFile, testConfig } from '../helpers/test-config';
import { waitFor } from '../helpers/wait';
import { mappingGatewayConfig, MAPPING_PROTO, MAPPING_SERVICE, startMappingServer, type MappingServer } from './mapping-server';

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

/**
 * Channels are kept across config reloads (KeptAcrossReloads.grpcClients) and made per keepalive setting: a reload
 * that changes a service's keepalive must close the channels of the old setting once nothing calls on them, or
 * every such reload leaves a connection per instance open for good.
 */
describe('gRPC channels across config reloads', () => {
  let service: MappingServer;
  const servers: TestServer[] = [];
  beforeAll(async () => {
    service = await startMappingServer();
  });
  afterAll(async () => {
    await Promise.all(servers.map((server) => server.close()));
    await service.close();
  });

  const configWith = (keepalive: { timeMs: number; timeoutMs?: number }) => mappingGatewayConfig(service.url, { service: { keepalive } });
  const build = async (kept: KeptAcrossReloads, keepalive: { timeMs: number; timeoutMs?: number }) => {
    const server = await listen(createGatewayApps(configWith(keepalive), { logger: memoryLogger('gateway').logger, metrics: false, kept }).gateway.callback());
    servers.push(server);
    return server;
  };
  const isShutDown = (client: grpc.Client) => client.getChannel().getConnectivityState(false) === grpc.connectivityState.SHUTDOWN;

  it('closes the channels of a keepalive a reload changed, letting a call under way on them finish, and keeps the unchanged ones', async () => {
    const kept = new KeptAcrossReloads();
    const old = await build(kept, { timeMs: 10_000 });
    expect((await fetch(`${old.url}/api/mapping/metadata`)).status).toBe(200);
    const [oldChannel] = [...kept.grpcClients.values()];
    // A call of the old build under way when its channel is retired.
    const underWay = fetch(`${old.url}/api/mapping/slow?delayMs=500`);
    await waitFor(() => service.calls.some((call) => call.method === 'Slow' && call.open), 'the call to reach the service');

    const current = await build(kept, { timeMs: 20_000 });
    expect([...kept.grpcClients.values()].includes(oldChannel!)).toBe(false);
    // Retired at once (the old build never drains here): the call under way still ends well.
    kept.retireReplaced(new Promise(() => {}), 0);
    await waitFor(() => isShutDown(oldChannel!), 'the old channel to be closed');
    expect((await underWay).status).toBe(200);
    expect((await fetch(`${current.url}/api/mapping/metadata`)).status).toBe(200);
    const [currentChannel] = [...kept.grpcClients.values()];
    expect(kept.grpcClients.size).toBe(1);

    // A reload that leaves the keepalive as it was keeps its channel open.
    const again = await build(kept, { timeMs: 20_000 });
    kept.retireReplaced(Promise.resolve(), 0);
    expect((await fetch(`${again.url}/api/mapping/metadata`)).status).toBe(200);
    expect([...kept.grpcClients.values()]).toEqual([currentChannel]);
    expect(isShutDown(currentChannel!)).toBe(false);
  });
});

// A reload compiled the gRPC routes anew, pools included: an ejected instance took traffic again at once though its
// service's settings had not changed (the HTTP pools kept their passive health).
describe('gRPC passive health across config reloads', () => {
  it('keeps an unchanged service’s: an ejected instance stays ejected; a changed one starts afresh', async () => {
    const service = await startMappingServer();
    const configWith = (ejectMs: number) => mappingGatewayConfig(service.url, { service: { ejectAfterFailures: 1, ejectMs }, route: { timeoutMs: 1000 } });
    const kept = new KeptAcrossReloads();
    const servers: TestServer[] = [];
    const build = async (ejectMs: number) => {
      const server = await listen(createGatewayApps(configWith(ejectMs), { logger: memoryLogger('gateway').logger, metrics: false, kept }).gateway.callback());
      servers.push(server);
      return server;
    };
    try {
      const before = await build(60_000);
      expect((await fetch(`${before.url}/api/mapping/slow?delayMs=3000`)).status).toBe(504);
      const unchanged = await build(60_000);
      const refused = await fetch(`${unchanged.url}/api/mapping/metadata`);
      expect([refused.status, ((await refused.json()) as { code: string }).code]).toEqual([503, 'upstream_unavailable']);
      // Other settings, another pool: its instances start healthy.
      const changed = await build(30_000);
      expect((await fetch(`${changed.url}/api/mapping/metadata`)).status).toBe(200);
    } finally {
      await Promise.all(servers.map((server) => server.close()));
      await service.close();
    }
  });
});
