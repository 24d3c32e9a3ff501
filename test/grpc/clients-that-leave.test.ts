import net from 'node:net';
import { ACCESS_LINE_MESSAGE, HEADER } from '../../otel/wire-names';
import { createGatewayApps } from '../../src/gateway';
import { listen, memoryLogger, type TestServer } from '../helpers/servers';
import { shippedConfigFile, testConfig } from '../helpers/test-config';
import { signToken } from '../helpers/tokens';
import { waitFor } from '../helpers/wait';
import { MAPPING_PROTO, MAPPING_SERVICE, startMappingServer, type MappingServer } from './mapping-server';

// The token service's verify, passed through unless a test holds some verifications (holdVerifications). The
// gateway's own tokens verify without waiting on anything (src/tokens.ts ownTokenVerifier), a provider's while its
// keys are fetched: the hold stands in for any such wait.
const holds: { tokens: readonly string[]; held: string[]; released: Promise<void> }[] = [];
jest.mock('../../src/tokens', () => {
  const actual = jest.requireActual<typeof import('../../src/tokens')>('../../src/tokens');
  return {
    ...actual,
    createTokenService: (...args: Parameters<typeof actual.createTokenService>) => {
      const service = actual.createTokenService(...args);
      return {
        ...service,
        async verify(token: string) {
          const hold = holds.find((each) => each.tokens.includes(token));
          if (hold) {
            hold.held.push(token);
            await hold.released;
          }
          return service.verify(token);
        },
      };
    },
  };
});

/**
 * Holds the gateway's verification of each of `tokens` until `release()`: their requests wait before the call,
 * for as long as the test needs (here until their clients are gone), without sleeping.
 */
function holdVerifications(tokens: readonly string[]) {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const held: string[] = [];
  holds.push({ tokens, held, released });
  return { held, release };
}

/**
 * REST/JSON -> gRPC for clients that are gone before their call would start (an HTTP/1.1 connection closed right
 * after its request head, while its token was being checked; an HTTP/2 stream reset along with its HEADERS): the
 * response's 'close' had come already, so nothing cancelled a call started then, and it stayed open at the
 * service until its deadline.
 */
describe('gRPC calls of clients that left before the call', () => {
  let service: MappingServer;
  let gateway: TestServer;
  const gatewayLogs = memoryLogger('gateway');
  /** The request id of every request whose handling in the gateway ended (its middleware chain returned). */
  const handled: string[] = [];
  const grpc = { proto: MAPPING_PROTO, service: MAPPING_SERVICE };

  beforeAll(async () => {
    service = await startMappingServer();
    const shipped = shippedConfigFile() as { services: Record<string, unknown>; routes: unknown[] };
    const config = testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' }, {
      // Each row's calls to a service of its own: calls one row left open must not refuse the other's (upstream_busy).
      services: { ...shipped.services, 'held-unary': { url: service.url }, 'held-stream': { url: service.url } },
      // Deadlines far beyond the test's: a call the gateway failed to cancel stays open at the service all along.
      routes: [
        ...shipped.routes,
        { name: 'held-unary', prefix: '/api/held-unary', service: 'held-unary', upstreamPath: '/v1', timeoutMs: 10_000, deadlineMs: 60_000, grpc },
        { name: 'held-stream', prefix: '/api/held-stream', service: 'held-stream', upstreamPath: '/v1', timeoutMs: 10_000, deadlineMs: 60_000, grpc },
      ],
    });
    const handle = createGatewayApps(config, { logger: gatewayLogs.logger, metrics: false }).gateway.callback();
    gateway = await listen((req, res) => void handle(req, res).finally(() => handled.push(String(req.headers[HEADER.requestId]))));
  });
  afterAll(async () => {
    await gateway.close();
    await service.close();
  });

  it.each([
    { desc: 'a unary call the service answers after 10 s', path: '/api/held-unary/slow?delayMs=10000', method: 'Slow', tag: 'e1' },
    { desc: 'a server stream that holds after its first message', path: '/api/held-stream/count/2?delayMs=600000', method: 'Count', tag: 'e2' },
  ])(
    'leaves no call open at the service when 20 HTTP/1.1 clients close right after the request head, while their tokens are checked ($desc): nothing cancelled them until the deadline',
    async ({ desc, path, method, tag }) => {
      const requestIds = Array.from({ length: 20 }, (_, index) => `${tag}${String(index).padStart(30, '0')}`);
      const tokens = await Promise.all(requestIds.map((_, index) => signToken({ claims: { connection: `${desc}-${index}` } })));
      const verification = holdVerifications(tokens);
      const { port } = new URL(gateway.url);
      await Promise.all(
        requestIds.map(
          (requestId, index) =>
            new Promise<void>((resolve) => {
              const socket = net.connect({ host: '127.0.0.1', port: Number(port) }, () => {
                socket.end(`GET ${path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${tokens[index]}\r\n${HEADER.requestId}: ${requestId}\r\n\r\n`);
              });
              socket.on('error', () => undefined);
              socket.on('close', () => resolve());
            }),
        ),
      );
      // Every response closed (the access line is written then, 499: the client left) while its token was checked.
      const accessLines = () => gatewayLogs.lines.filter((line) => line.message === ACCESS_LINE_MESSAGE && requestIds.includes(String(line.request_id)));
      await waitFor(() => verification.held.length === 20 && accessLines().length === 20, 'the 20 responses to close while their tokens are held', 3000);
      expect(new Set(accessLines().map((line) => line.status))).toEqual(new Set([499]));
      verification.release();

      // The gateway is done with each of them, and the service holds no call of theirs (it got none, or saw each end).
      const stillOpen = () => service.calls.filter((each) => each.open && requestIds.includes(each.metadata[HEADER.requestId]!));
      const allHandled = () => requestIds.every((requestId) => handled.includes(requestId));
      await waitFor(() => allHandled() && stillOpen().length === 0, `the gateway to finish the 20 requests, and every ${method} call of theirs to be closed at the service`, 3000).catch(() => undefined);
      expect(stillOpen()).toEqual([]);
      expect(allHandled()).toBe(true);
      // The route serves on.
      const answered = await fetch(`${gateway.url}${path.replace(/\?.*/, '')}?delayMs=0`, { headers: { authorization: `Bearer ${await signToken()}` } });
      expect(answered.status).toBe(200);
      await answered.body?.cancel();
    },
    // Well under the routes' deadlines (10 s unary, 60 s stream).
    8000,
  );
});
