import http from 'node:http';
import net from 'node:net';
import type { Socket } from 'node:net';
import { runServer, type RunningServer } from '../../otel/lifecycle';
import { createGateway } from '../../src/gateway';
import { CLIENT_BUFFER_BYTES } from '../../src/middleware/proxy';
import { listen, memoryLogger, type TestServer } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';
import { signToken } from '../helpers/tokens';
import { waitFor } from '../helpers/wait';

/** Far more than the kernel buffers of both hops hold, so the gateway's own queue fills and the service is paused. */
const ANSWER_BYTES = 32 * 1024 * 1024;
const CHUNK = Buffer.alloc(64 * 1024, 'x');

describe('a client that reads a large answer slower than its service sends it', () => {
  let upstream: TestServer;
  let gateway: RunningServer;
  /** Bytes the service has written of its answer so far. */
  let sent = 0;
  const gatewaySockets: Socket[] = [];
  beforeAll(async () => {
    upstream = await listen((_request, response: http.ServerResponse) => {
      response.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(ANSWER_BYTES) });
      const pump = () => {
        while (sent < ANSWER_BYTES) {
          sent += CHUNK.length;
          if (!response.write(CHUNK)) return void response.once('drain', pump);
        }
        response.end();
      };
      pump();
    });
    const config = testConfig({ users: upstream.url, orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' });
    const { logger } = memoryLogger('gateway');
    gateway = await runServer({ app: createGateway(config, { logger }), name: 'gateway', port: 0, host: '127.0.0.1', logger, timeouts: { headersMs: 10_000, requestMs: 60_000, keepAliveMs: 5000 } });
    gateway.server.on('connection', (socket: Socket) => gatewaySockets.push(socket));
  });
  afterAll(async () => {
    await gateway.close();
    await upstream.close();
  });

  it('holds no slow-client buffer for an answer declared larger than it: back-pressure reaches the service at Node\'s own mark', async () => {
    // The slow-client buffer frees a service's connection only for an answer it can hold whole; for a larger one it
    // held 256 KiB more per slow reader (10,000 connections, 100 streams each over HTTP/2) to no purpose.
    const client = net.connect(Number(new URL(gateway.url).port), '127.0.0.1');
    client.on('error', () => undefined);
    client.pause();
    try {
      client.write(`GET /api/users/large HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${await signToken()}\r\n\r\n`);
      // The service stops being read once every buffer on the way is full: its count stays put for half a second.
      let last = -1;
      let still = 0;
      await waitFor(() => {
        still = sent === last && sent > 0 ? still + 1 : 0;
        last = sent;
        return still >= 25;
      }, 'the service to be paused', 20_000);
      expect(sent).toBeLessThan(ANSWER_BYTES);
      expect(gatewaySockets).toHaveLength(1);
      expect(gatewaySockets[0]!.writableLength).toBeLessThan(CLIENT_BUFFER_BYTES);
    } finally {
      client.destroy();
    }
  });
});
