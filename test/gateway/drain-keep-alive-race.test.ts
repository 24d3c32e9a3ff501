import net from 'node:net';
import { runServer, type RunningServer } from '../../otel/lifecycle';
import { createGateway } from '../../src/gateway';
import { listen, memoryLogger } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';
import { waitFor } from '../helpers/wait';

const REQUEST = 'GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n';
const CONNECTIONS = 20;

/** A kept-alive connection, what it was sent back, and how it ended. */
interface KeptAlive {
  socket: net.Socket;
  /** Complete answers (status lines) received. */
  answers: () => number;
  /** The gateway closed it with a FIN (a clean close the client may retry after). */
  ended: boolean;
  /** It was reset (RST) before any FIN. */
  resetBeforeEnd: boolean;
  closed: boolean;
}

/** A connection that asked for /health once and has its answer. */
async function keptAliveConnection(port: number): Promise<KeptAlive> {
  const socket = net.connect(port, '127.0.0.1');
  let received = '';
  const connection: KeptAlive = { socket, answers: () => (received.match(/HTTP\/1\.1 \d{3} /g) ?? []).length, ended: false, resetBeforeEnd: false, closed: false };
  socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
  socket.on('end', () => (connection.ended = true));
  socket.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'ECONNRESET' && !connection.ended) connection.resetBeforeEnd = true;
  });
  socket.on('close', () => (connection.closed = true));
  socket.write(REQUEST);
  await waitFor(() => connection.answers() === 1 && received.endsWith('}'), 'the first answer');
  return connection;
}

describe('a keep-alive client whose next request races the drain', () => {
  let gateway: RunningServer;
  beforeAll(async () => {
    const config = testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' });
    const { logger } = memoryLogger('gateway');
    gateway = await runServer({ app: createGateway(config, { logger }), name: 'gateway', port: 0, host: '127.0.0.1', logger, timeouts: { headersMs: 5000, requestMs: 10_000, keepAliveMs: 5000 }, drainTimeoutMs: 5000 });
  });
  afterAll(() => gateway.close());

  it('gets an answer or a clean close (FIN) it can retry, never a reset with its request unanswered', async () => {
    const port = Number(new URL(gateway.url).port);
    const connections = await Promise.all(Array.from({ length: CONNECTIONS }, () => keptAliveConnection(port)));
    // Written before the drain begins, read by the gateway only after: the close of an idle connection with the
    // request unread in its buffer sent RST, and every one of these clients saw ECONNRESET with no answer.
    for (const { socket } of connections) socket.write(REQUEST);
    const closing = gateway.close();
    await waitFor(() => connections.every((connection) => connection.closed), 'every connection to close');
    await closing;
    for (const connection of connections) {
      expect({ answered: connection.answers() === 2, cleanClose: connection.ended && !connection.resetBeforeEnd }).not.toEqual({ answered: false, cleanClose: false });
      expect(connection.resetBeforeEnd).toBe(false);
    }
  });
});

// A request pipelined behind an answer still streaming when the drain began: Node queued its response before the
// drain, which marked only the answer under way and the requests arriving after it. It went out keep-alive on a
// connection the drain half-closed right after it: the client took a connection it believed reusable for closed.
describe('a request pipelined behind an answer still streaming when the drain begins', () => {
  it('is answered with Connection: close', async () => {
    let finish!: () => void;
    const streaming = await listen((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first part;');
      finish = () => res.end('last part');
    });
    const config = testConfig({ users: 'http://127.0.0.1:9', orders: streaming.url, notifications: 'http://127.0.0.1:9' }, {
      routes: [{ name: 'streaming', prefix: '/streaming', service: 'orders', upstreamPath: '/streaming', auth: 'public' }],
    });
    const { logger } = memoryLogger('gateway');
    const gateway = await runServer({ app: createGateway(config, { logger }), name: 'gateway', port: 0, host: '127.0.0.1', logger, timeouts: { headersMs: 5000, requestMs: 10_000, keepAliveMs: 5000 }, drainTimeoutMs: 5000 });
    try {
      const socket = net.connect(Number(new URL(gateway.url).port), '127.0.0.1');
      let received = '';
      socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
      socket.write('GET /streaming HTTP/1.1\r\nHost: localhost\r\n\r\nGET /health HTTP/1.1\r\nHost: localhost\r\n\r\n');
      await waitFor(() => received.includes('first part;'), 'the first answer to stream');
      const closing = gateway.close();
      finish();
      await waitFor(() => (received.match(/HTTP\/1\.1 \d{3} /g) ?? []).length === 2 && received.endsWith('}'), 'the pipelined answer');
      const pipelinedHead = received.slice(received.lastIndexOf('HTTP/1.1 ')).split('\r\n\r\n')[0]!.toLowerCase();
      expect(pipelinedHead).toMatch(/^http\/1\.1 200 /);
      expect(pipelinedHead.split('\r\n')).toContain('connection: close');
      socket.destroy();
      await closing;
    } finally {
      await gateway.close();
      await streaming.close();
    }
  });
});
