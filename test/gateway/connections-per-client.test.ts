import http2 from 'node:http2';
import net from 'node:net';
import { makeCertificate } from '../helpers/certificates';
import { startGatewayProcess, type GatewayProcess } from '../helpers/gateway-process';

/**
 * server.maxConnectionsPerClient (src/client-connections.ts): `server.maxConnections` bounded all clients
 * together, so one machine opening that many connections that never sent a byte (reopened as the gateway closed
 * them) kept every other client out at accept.
 */
// Each test starts the built gateway as a process.
jest.setTimeout(60_000);

const config = (server: Record<string, unknown>, trust: Record<string, unknown> = {}) => ({
  services: { users: { url: 'http://127.0.0.1:9' } },
  routes: [{ name: 'users', prefix: '/api/users', service: 'users', upstreamPath: '/users' }],
  server,
  ...trust,
});

describe('connections per client', () => {
  let gateway: GatewayProcess | undefined;
  const held: net.Socket[] = [];
  afterEach(() => {
    held.splice(0).forEach((socket) => socket.destroy());
    if (gateway?.child.exitCode === null) gateway.child.kill('SIGKILL');
    gateway = undefined;
  });

  /**
   * Opens a connection from `from` (a loopback address), asks for /health and keeps the connection open;
   * resolves `true` once the answer arrived, `false` when the gateway closed the connection first.
   */
  function servedOnNewConnection(from: string, origin = gateway!.url): Promise<boolean> {
    const { port } = new URL(origin);
    return new Promise((resolve) => {
      const socket = net.connect({ port: Number(port), host: '127.0.0.1', localAddress: from }, () => socket.write('GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'));
      held.push(socket);
      socket.once('data', (chunk: Buffer) => resolve(chunk.toString().startsWith('HTTP/1.1 ')));
      socket.once('close', () => resolve(false));
      socket.on('error', () => undefined);
    });
  }

  it('closes the connections one address opens past server.maxConnectionsPerClient at accept, while another address is served', async () => {
    gateway = await startGatewayProcess({ config: config({ maxConnectionsPerClient: 3 }) });
    for (let i = 0; i < 3; i++) expect(await servedOnNewConnection('127.0.0.1')).toBe(true);
    expect(await servedOnNewConnection('127.0.0.1')).toBe(false);
    expect(await servedOnNewConnection('127.0.0.2')).toBe(true);
    await gateway.waitForLine((line) => line.message === 'refused connections over the per-client bound' && line.remote_address === '127.0.0.1' && line.limit === 3);
    // One of the three goes: the address has room again once the gateway counted it out.
    held[0]!.destroy();
    let served = false;
    for (let attempt = 0; attempt < 50 && !served; attempt++) served = await servedOnNewConnection('127.0.0.1');
    expect(served).toBe(true);
  });

  it("does not count a trusted proxy's connections, which carry many clients", async () => {
    gateway = await startGatewayProcess({ config: config({ maxConnectionsPerClient: 2 }, { trustProxy: true, trustedProxies: ['127.0.0.3'] }) });
    for (let i = 0; i < 5; i++) expect(await servedOnNewConnection('127.0.0.3')).toBe(true);
    // The bound is on for everyone else.
    for (let i = 0; i < 2; i++) expect(await servedOnNewConnection('127.0.0.1')).toBe(true);
    expect(await servedOnNewConnection('127.0.0.1')).toBe(false);
  });

  it("bounds the HTTPS redirect listener's connections as the HTTPS port's (it bounded none: one machine made the gateway hold as many as it opened)", async () => {
    const certificate = makeCertificate();
    gateway = await startGatewayProcess({ config: { ...config({ maxConnections: 6, maxConnectionsPerClient: 3 }), tls: { certFile: certificate.certFile, keyFile: certificate.keyFile, redirectHttpPort: 0 } } });
    const redirect = String((await gateway.waitForLine((line) => line.message === 'https redirect listener started')).url);
    for (let i = 0; i < 3; i++) expect(await servedOnNewConnection('127.0.0.1', redirect)).toBe(true);
    expect(await servedOnNewConnection('127.0.0.1', redirect)).toBe(false);
    for (let i = 0; i < 3; i++) expect(await servedOnNewConnection('127.0.0.2', redirect)).toBe(true);
    // Six held: a third address finds no room.
    expect(await servedOnNewConnection('127.0.0.3', redirect)).toBe(false);
  });

  it('counts each open HTTP/2 stream too, refusing one over the bound with REFUSED_STREAM (a flow-control window of 0 held 100 answers and their requests per connection)', async () => {
    const certificate = makeCertificate();
    gateway = await startGatewayProcess({ config: { ...config({ maxConnectionsPerClient: 3, sendTimeoutMs: 60_000 }), tls: { certFile: certificate.certFile, keyFile: certificate.keyFile } } });
    // A window of 0: each /health answer waits for the client, its stream open.
    const session = http2.connect(gateway.url, { ca: certificate.cert, settings: { initialWindowSize: 0 } });
    session.on('error', () => undefined);
    try {
      /** Opens a stream for /health: its status once answered, or the code it was reset with. */
      const open = () => {
        const stream = session.request({ ':path': '/health' });
        stream.on('error', () => undefined);
        const outcome = new Promise<string>((resolve) => {
          stream.once('response', (headers) => resolve(`status ${headers[':status']}`));
          stream.once('close', () => resolve(`reset ${stream.rstCode}`));
        });
        return { stream, outcome };
      };
      // The connection counts one, each stream one more.
      const first = open();
      const second = open();
      expect(await first.outcome).toBe('status 200');
      expect(await second.outcome).toBe('status 200');
      expect(await open().outcome).toBe(`reset ${http2.constants.NGHTTP2_REFUSED_STREAM}`);
      // A stream that ends gives its room back.
      first.stream.close(http2.constants.NGHTTP2_CANCEL);
      let served = false;
      for (let attempt = 0; attempt < 50 && !served; attempt++) served = (await open().outcome) === 'status 200';
      expect(served).toBe(true);
    } finally {
      session.destroy();
    }
  });

  it('bounds no address with server.maxConnectionsPerClient 0', async () => {
    gateway = await startGatewayProcess({ config: config({ maxConnectionsPerClient: 0 }) });
    for (let i = 0; i < 5; i++) expect(await servedOnNewConnection('127.0.0.1')).toBe(true);
  });
});
