import { spawn, type ChildProcess } from 'node:child_process';
import { runServer, type RunningServer } from '../../otel/lifecycle';
import { createGateway } from '../../src/gateway';
import { memoryLogger } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';
import { signToken } from '../helpers/tokens';

const TIMEOUT_MS = 2000;
/** When the service answers the first request, ms: well within the timeout, however loaded the machine. */
const FIRST_ANSWER_MS = 500;

/**
 * The service, in a process of its own so that it can answer while the gateway's is stalled: `/first` after
 * FIRST_ANSWER_MS, anything else at once.
 */
const SERVICE = `
const http = require('node:http');
const server = http.createServer((request, response) => {
  if (request.url.endsWith('/first')) return void setTimeout(() => response.end('{"first":true}'), ${FIRST_ANSWER_MS});
  response.end('{"second":true}');
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
`;

/** Blocks this process's event loop for `ms`, as a long GC or a machine too busy to schedule it would. */
function stall(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

describe('a request waiting for a connection when the gateway\'s own process stalls', () => {
  let service: ChildProcess;
  let gateway: RunningServer;
  beforeAll(async () => {
    service = spawn(process.execPath, ['-e', SERVICE], { stdio: ['ignore', 'pipe', 'inherit'] });
    const port = await new Promise<string>((resolve) => service.stdout!.once('data', (chunk: Buffer) => resolve(chunk.toString().trim())));
    const url = `http://127.0.0.1:${port}`;
    const config = testConfig({ users: url, orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' }, { proxy: { timeoutMs: TIMEOUT_MS, maxSockets: 1, maxBodyBytes: 1024 * 1024 } });
    const { logger } = memoryLogger('gateway');
    gateway = await runServer({ app: createGateway(config, { logger }), name: 'gateway', port: 0, host: '127.0.0.1', logger, timeouts: { headersMs: 10_000, requestMs: 60_000, keepAliveMs: 5000 } });
  });
  afterAll(async () => {
    await gateway.close();
    service.kill();
  });

  it('gets the connection that came free in time, not 503 upstream_busy (undici hands it on a turn after the I/O the idle timer waited for)', async () => {
    const headers = { authorization: `Bearer ${await signToken()}` };
    const first = fetch(`${gateway.url}/api/users/first`, { headers });
    // Queued behind the first on the one connection to the service.
    const second = fetch(`${gateway.url}/api/users/second`, { headers });
    // This process (client and gateway) stalls from before the service answers the first until past the second's
    // timeout, ending in the loop's check phase (as a GC may): its next turn begins with the second's idle timer,
    // then reads the first's answer, which frees the connection.
    setTimeout(() => setImmediate(() => stall(TIMEOUT_MS)), FIRST_ANSWER_MS / 2);
    const [one, two] = await Promise.all([first, second]);
    expect(one.status).toBe(200);
    expect({ status: two.status, body: await two.text() }).toEqual({ status: 200, body: '{"second":true}' });
  });
});
