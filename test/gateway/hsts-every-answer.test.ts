import { writeFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { runServer } from '../../otel/lifecycle';
import { makeCertificate, type TestCertificate } from '../helpers/certificates';
import { exitOf, spawnGateway } from '../helpers/process-stack';
import { memoryLogger } from '../helpers/servers';
import { shippedConfigFile } from '../helpers/test-config';

/**
 * RFC 6797 7.1: an HSTS host sends Strict-Transport-Security on every answer over a secure transport, and 7.2:
 * never over plain HTTP. The gateway answered some requests before its HSTS middleware ran (the request-head
 * check: no Host, a version it does not speak, `OPTIONS *`) and others outside Koa altogether (otel/lifecycle.ts:
 * what Node's parser refuses, CONNECT, a head that never finished), all without it. The built gateway is
 * spawned from dist/, so main.ts's wiring is what is tested.
 */

const POLICY = 'max-age=600; includeSubDomains';
/** Short enough for the timeout rows to take a second, long enough for every other row's request to arrive whole. */
const HEAD_TIMEOUT_MS = 1_000;

interface RawAnswer {
  status: number;
  /** Field lines of the head as sent, names lower-cased, in order (a field sent twice appears twice). */
  fields: [string, string][];
}

/** Parses an HTTP/1.1 answer's head; undefined until the head and its Content-Length of body are all there. */
function parseAnswer(bytes: string): RawAnswer | undefined {
  const end = bytes.indexOf('\r\n\r\n');
  if (end === -1) return undefined;
  const [statusLine = '', ...lines] = bytes.slice(0, end).split('\r\n');
  const fields = lines.map((line): [string, string] => [line.slice(0, line.indexOf(':')).trim().toLowerCase(), line.slice(line.indexOf(':') + 1).trim()]);
  const length = Number(fields.find(([name]) => name === 'content-length')?.[1] ?? 0);
  if (Buffer.byteLength(bytes.slice(end + 4), 'latin1') < length) return undefined;
  return { status: Number(statusLine.split(' ')[1]), fields };
}

/**
 * Writes `request` byte for byte on a fresh connection (TLS with ALPN http/1.1 to `https:` origins, TCP to
 * `http:` ones) and resolves with the first answer once it is whole, or with what came when the connection ends.
 */
function sendBytes(origin: string, request: string, ca?: string): Promise<RawAnswer> {
  const { protocol, hostname, port } = new URL(origin);
  return new Promise((resolve, reject) => {
    const socket: net.Socket =
      protocol === 'https:'
        ? tls.connect({ host: hostname, port: Number(port), ca, ALPNProtocols: ['http/1.1'], servername: 'localhost' }, () => socket.write(request))
        : net.connect(Number(port), hostname, () => socket.write(request));
    let received = '';
    const settle = () => {
      socket.destroy();
      const answer = parseAnswer(received);
      if (answer) resolve(answer);
      else reject(new Error(`no whole answer to ${JSON.stringify(request.slice(0, 60))}; got ${JSON.stringify(received.slice(0, 200))}`));
    };
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('latin1');
      if (parseAnswer(received)) settle();
    });
    // The gateway may close while a refused head is still being written (431): the answer already came.
    socket.on('error', settle);
    socket.on('close', settle);
  });
}

const stsFields = (answer: RawAnswer) => answer.fields.filter(([name]) => name === 'strict-transport-security').map(([, value]) => value);

/** One request on an HTTP/2 session: its status and the policies its answer carries. */
function h2Answer(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, drip?: boolean): Promise<{ status: number; policies: string[] }> {
  return new Promise((resolve, reject) => {
    const stream = session.request(headers, { endStream: !drip });
    let dripping: NodeJS.Timeout | undefined;
    // A body a byte at a time that never ends: the stream's request timeout answers it.
    if (drip) dripping = setInterval(() => !stream.destroyed && stream.write(' '), 100);
    stream.on('response', (received) => {
      clearInterval(dripping);
      // Node's client joins a repeated field into one value: two policies would not equal the one.
      const sts = received['strict-transport-security'];
      resolve({ status: Number(received[':status']), policies: sts === undefined ? [] : Array.isArray(sts) ? sts : [sts] });
      stream.close();
    });
    stream.on('error', (error) => {
      clearInterval(dripping);
      reject(error);
    });
  });
}

function connectH2(origin: string, ca: string): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(origin, { ca });
    session.once('connect', () => resolve(session));
    session.once('error', reject);
  });
}

describe('Strict-Transport-Security on every HTTPS answer, whoever writes it (RFC 6797 7.1)', () => {
  let certificate: TestCertificate;
  let gateway: ReturnType<typeof spawnGateway>;
  let origin: string;
  let redirectOrigin: string;

  beforeAll(async () => {
    certificate = makeCertificate();
    const configFile = path.join(path.dirname(certificate.certFile), 'gateway.config.json');
    writeFileSync(
      configFile,
      JSON.stringify({
        ...shippedConfigFile(),
        server: { headersTimeoutMs: HEAD_TIMEOUT_MS, requestTimeoutMs: HEAD_TIMEOUT_MS },
        // Forwarding headers believed from any peer: one saying https must still not make a plain answer carry the policy.
        trustProxy: true,
        tls: { certFile: certificate.certFile, keyFile: certificate.keyFile, redirectHttpPort: 0, hsts: { maxAgeSeconds: 600, includeSubDomains: true } },
      }),
    );
    gateway = spawnGateway({ GATEWAY_CONFIG: configFile, HOST: '127.0.0.1' });
    origin = String((await gateway.waitForLine('gateway listening')).url);
    redirectOrigin = String((await gateway.waitForLine('https redirect listener started')).url);
  });
  afterAll(async () => {
    gateway?.child.kill('SIGTERM');
    if (gateway) await exitOf(gateway.child);
  });

  const oversizedHead = `GET /api/orders HTTP/1.1\r\nHost: localhost\r\nX-Big: ${'b'.repeat(http.maxHeaderSize + 1024)}\r\n\r\n`;

  describe('over HTTP/1.1', () => {
    it.each([
      // Answered by the pipeline's request-head check, which ran before the HSTS middleware.
      { desc: 'a request without Host', request: 'GET /api/orders HTTP/1.1\r\n\r\n', status: 400 },
      { desc: 'a request with two Host lines', request: 'GET /api/orders HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n', status: 400 },
      { desc: 'a request line saying HTTP/2.0', request: 'GET /api/orders HTTP/2.0\r\nHost: localhost\r\n\r\n', status: 505 },
      { desc: 'a request target that is not a path', request: 'GET api/orders HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', status: 400 },
      { desc: 'OPTIONS *', request: 'OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', status: 204 },
      { desc: 'an expectation other than 100-continue', request: 'GET /api/orders HTTP/1.1\r\nHost: localhost\r\nExpect: something\r\nConnection: close\r\n\r\n', status: 417 },
      // Answered by otel/lifecycle.ts on the socket, Koa never having seen a request.
      { desc: 'a request line saying HTTP/3.0 (refused by the parser)', request: 'GET /api/orders HTTP/3.0\r\nHost: localhost\r\n\r\n', status: 505 },
      { desc: 'a request line the parser refuses', request: 'GET /api/orders HTTP/1.10\r\nHost: localhost\r\n\r\n', status: 400 },
      { desc: 'a header block over the limit', request: oversizedHead, status: 431 },
      { desc: 'a garbage request line', request: 'this is not http\r\n\r\n', status: 400 },
      { desc: 'CONNECT', request: 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n', status: 405 },
      { desc: 'a head not finished within server.headersTimeoutMs', request: 'GET /api/orders HTTP/1.1\r\nHost: localhost\r\n', status: 408 },
      // Answered by the pipeline after the HSTS middleware: these always carried it.
      { desc: 'an unknown route', request: 'GET /api/nothing-here HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', status: 404 },
      { desc: 'a protected route without credentials', request: 'GET /api/orders HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', status: 401 },
      { desc: 'a body not finished within server.requestTimeoutMs', request: 'POST /api/auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{', status: 408 },
    ])('answers $desc with $status carrying the policy once', async ({ request, status }) => {
      const answer = await sendBytes(origin, request, certificate.cert);
      expect(answer.status).toBe(status);
      expect(stsFields(answer)).toEqual([POLICY]);
    });
  });

  describe('over HTTP/2', () => {
    let session: http2.ClientHttp2Session;
    beforeAll(async () => {
      session = await connectH2(origin, certificate.cert);
    });
    afterAll(() => session?.close());

    it.each([
      // Answered by the request-head check (before the HSTS middleware) and by otel/lifecycle.ts (CONNECT).
      { desc: 'OPTIONS *', headers: { ':method': 'OPTIONS', ':path': '*' }, status: 204 },
      { desc: 'CONNECT', headers: { ':method': 'CONNECT', ':authority': 'example.com:443' }, status: 405 },
      // The pipeline's, after the HSTS middleware; and the stream's request timeout, on a pipeline response.
      { desc: 'an unknown route', headers: { ':path': '/api/nothing-here' }, status: 404 },
      { desc: 'a protected route without credentials', headers: { ':path': '/api/orders' }, status: 401 },
      { desc: 'a header list over the limit', headers: { ':path': '/api/orders', 'x-big': 'b'.repeat(http.maxHeaderSize) }, status: 431 },
      { desc: 'a body not finished within server.requestTimeoutMs', headers: { ':method': 'POST', ':path': '/api/auth/login', 'content-type': 'application/json', 'content-length': '100' }, status: 408, drip: true },
    ])('answers $desc with $status carrying the policy once', async ({ headers, status, drip }) => {
      const answer = await h2Answer(session, headers, drip);
      expect(answer).toEqual({ status, policies: [POLICY] });
    });
  });

  // RFC 6797 7.2: never over plain HTTP, where anyone on the path could have written or removed it.
  describe('the plain redirect listener', () => {
    it.each([
      { desc: 'a redirect', request: 'GET /api/orders HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', status: 308 },
      { desc: 'its /health (answered by the gateway app)', request: 'GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', status: 200 },
      { desc: 'its /health said to be HTTPS by X-Forwarded-Proto', request: 'GET /health HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n', status: 200 },
      { desc: 'a request with two Host lines', request: 'GET /api/orders HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n', status: 400 },
      { desc: 'a garbage request line', request: 'this is not http\r\n\r\n', status: 400 },
      { desc: 'a header block over the limit', request: oversizedHead, status: 431 },
    ])('answers $desc ($status) without it', async ({ request, status }) => {
      const answer = await sendBytes(redirectOrigin, request);
      expect(answer.status).toBe(status);
      expect(stsFields(answer)).toEqual([]);
    });
  });
});

describe('runServer with strictTransportSecurity on a plain listener', () => {
  it.each([
    { desc: 'a garbage request line', request: 'this is not http\r\n\r\n', status: 400 },
    { desc: 'CONNECT', request: 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n', status: 405 },
  ])('answers $desc ($status) without the policy (RFC 6797 7.2)', async ({ request, status }) => {
    const { logger } = memoryLogger('gateway');
    const plain = await runServer({ app: { callback: () => (_req, res) => res.end('ok') }, name: 'gateway', port: 0, host: '127.0.0.1', logger, strictTransportSecurity: POLICY });
    try {
      const answer = await sendBytes(plain.url, request);
      expect(answer.status).toBe(status);
      expect(stsFields(answer)).toEqual([]);
    } finally {
      await plain.close();
    }
  });
});
