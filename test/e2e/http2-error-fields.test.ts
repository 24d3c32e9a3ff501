import http2 from 'node:http2';
import { startGatewayProcess, type GatewayProcess } from '../helpers/gateway-process';
import { makeCertificate } from '../helpers/certificates';
import { refusedOrigin } from '../helpers/servers';
import { TEST_JWT_SECRET } from '../helpers/test-config';

/**
 * An error that closes the connection after a body the gateway will not read carries `Connection: close`: HTTP/1's
 * field (RFC 9113 8.2.2). Set on an HTTP/2 answer, Node dropped it with an `UnsupportedWarning` on the process's
 * stderr, a line outside the JSON logs that no log reader parses. In a process of its own: Node warns once per process.
 */
jest.setTimeout(60_000);

describe('errors answered over HTTP/2', () => {
  let gateway: GatewayProcess | undefined;
  afterAll(async () => {
    gateway?.child.kill('SIGKILL');
    await gateway?.exited();
  });

  it('carry no Connection field, and the process writes no warning for one', async () => {
    const certificate = makeCertificate();
    gateway = await startGatewayProcess({
      config: { services: { users: { url: await refusedOrigin() } }, routes: [{ name: 'users', prefix: '/api/users', service: 'users', upstreamPath: '/users' }], tls: { certFile: certificate.certFile, keyFile: certificate.keyFile } },
      env: { JWT_SECRET: TEST_JWT_SECRET },
    });
    const session = http2.connect(gateway.url, { ca: certificate.cert });
    session.on('error', () => undefined);
    try {
      // A declared login body over the limit: a 413 that closes an HTTP/1 connection.
      const status = await new Promise<number | undefined>((resolve) => {
        const stream = session.request({ ':method': 'POST', ':path': '/api/auth/login', 'content-type': 'application/json', 'content-length': '100000', 'x-request-id': 'h2-413' }, { endStream: false });
        let answered: number | undefined;
        stream.on('response', (headers) => (answered = Number(headers[':status'])));
        stream.on('error', () => undefined);
        stream.on('close', () => resolve(answered));
        stream.resume();
        stream.write('{"email":"');
      });
      expect(status).toBe(413);
    } finally {
      session.destroy();
    }
    // The warning is written as the field is set, before the answer and its access line.
    await gateway.waitForLine((line) => line.request_id === 'h2-413' && line.status === 413);
    expect(gateway.stderr()).not.toMatch(/connection header|UnsupportedWarning/i);
  });
});
