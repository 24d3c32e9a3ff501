import { execFileSync } from 'node:child_process';
import { copyFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import https from 'node:https';
import path from 'node:path';
import tls from 'node:tls';
import { runServer, type RunningServer } from '../../otel/lifecycle';
import { ACCESS_LINE_MESSAGE, HEADER, METRIC_LABEL } from '../../otel/wire-names';
import { createGatewayApps } from '../../src/gateway';
import { createGatewayMetrics } from '../../src/metrics';
import type { ProblemBody } from '../../src/middleware/errors';
import { createTlsServer, HTTP2_CLOSE_GRACE_MS, HTTP2_LIMITS, http2SessionTimeoutMs, listenHttpsRedirect, RESET_STREAMS_BUDGET, type RedirectListener, type TlsServer } from '../../src/tls';
import { makeCertificate, makeCertificateValidBetween, presentedFingerprint, rotatingCertificates, type TestCertificate } from '../helpers/certificates';
import { exitOf, spawnGateway } from '../helpers/process-stack';
import { listen, memoryLogger, sendRaw, type RecordedRequest } from '../helpers/servers';
import { startStack, type TestStack } from '../helpers/stack';
import { shippedConfigFile, testConfig } from '../helpers/test-config';
import { signToken } from '../helpers/tokens';
import { waitFor } from '../helpers/wait';

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

const TIMEOUTS = { headersMs: 10_000, requestMs: 120_000, keepAliveMs: 5_000 };

/** An HTTP/2 session to the gateway, trusting the test certificate. */
function connectH2(origin: string, ca: string, settings: http2.Settings = {}): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(origin, { ca, settings });
    session.once('connect', () => resolve(session));
    session.once('error', reject);
  });
}

/** One request on an HTTP/2 session; headers (pseudo-headers included) sent as given. */
function h2Request(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':method': 'GET', ...headers }, { endStream: body === undefined });
    let responseHeaders: http2.IncomingHttpHeaders & http2.IncomingHttpStatusHeader = {};
    const chunks: Buffer[] = [];
    stream.on('response', (received) => (responseHeaders = received));
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.on('end', () => resolve({ status: Number(responseHeaders[':status']), headers: responseHeaders, text: Buffer.concat(chunks).toString() }));
    stream.on('error', reject);
    if (body !== undefined) stream.end(body);
  });
}

/** One HTTP/1.1 request over TLS on a fresh connection. */
function h1Request(origin: string, ca: string, path: string, headers: http.OutgoingHttpHeaders = {}, method = 'GET', body?: string): Promise<Reply> {
  const { hostname, port } = new URL(origin);
  return new Promise((resolve, reject) => {
    const request = https.request({ host: hostname, port: Number(port), path, method, headers, ca, agent: false }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, headers: response.headers, text: Buffer.concat(chunks).toString() }));
    });
    request.on('error', reject);
    request.end(body);
  });
}

/** A plain HTTP/1.1 request (the redirect listener), the path sent byte for byte. */
const plainRequest = sendRaw;

// --- HTTP/2 frames by hand: for the shapes Node's client refuses to send -------------------------------------

const FRAME = { data: 0x0, headers: 0x1, rstStream: 0x3, settings: 0x4, goaway: 0x7, windowUpdate: 0x8, continuation: 0x9 } as const;
const FLAG = { endStream: 0x1, endHeaders: 0x4, ack: 0x1 } as const;
const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

function frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(streamId, 5);
  return Buffer.concat([head, payload]);
}

/** An HPACK integer with an N-bit prefix (RFC 7541 5.1). */
function hpackInteger(value: number, prefixBits: number, flags: number): Buffer {
  const max = (1 << prefixBits) - 1;
  if (value < max) return Buffer.from([flags | value]);
  const bytes = [flags | max];
  for (value -= max; value >= 128; value = Math.floor(value / 128)) bytes.push((value % 128) + 128);
  bytes.push(value);
  return Buffer.from(bytes);
}

/** A literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2): any bytes, as given. */
function hpackLiteral(name: string, value: string): Buffer {
  const nameBytes = Buffer.from(name, 'latin1');
  const valueBytes = Buffer.from(value, 'latin1');
  return Buffer.concat([Buffer.from([0]), hpackInteger(nameBytes.length, 7, 0), nameBytes, hpackInteger(valueBytes.length, 7, 0), valueBytes]);
}

/** Huffman codes (RFC 7541 Appendix B) of the digits, all a status needs: [code, bits]. */
const HUFFMAN_DIGITS: [number, number][] = [[0x0, 5], [0x1, 5], [0x2, 5], [0x19, 6], [0x1a, 6], [0x1b, 6], [0x1c, 6], [0x1d, 6], [0x1e, 6], [0x1f, 6]];

/** `:status` of a response header block: the first field, as Node's encoder writes it (indexed, or a literal with the indexed name). */
function statusOf(block: Buffer): number {
  const STATIC_STATUS: Record<number, number> = { 8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500 };
  const first = block[0]!;
  if (first & 0x80) return STATIC_STATUS[first & 0x7f] ?? -1;
  const length = block[1]! & 0x7f;
  const bytes = block.subarray(2, 2 + length);
  if (!(block[1]! & 0x80)) return Number(bytes.toString('latin1'));
  let bits = '';
  for (const byte of bytes) bits += byte.toString(2).padStart(8, '0');
  let digits = '';
  while (digits.length < 3) {
    const digit = HUFFMAN_DIGITS.findIndex(([code, size]) => bits.length >= size && parseInt(bits.slice(0, size), 2) === code);
    if (digit === -1) return -1;
    digits += String(digit);
    bits = bits.slice(HUFFMAN_DIGITS[digit]![1]);
  }
  return Number(digits);
}

type RawOutcome = { kind: 'status'; status: number } | { kind: 'reset' } | { kind: 'goaway' } | { kind: 'closed' };

/**
 * Opens a TLS connection with ALPN h2, sends the preface, SETTINGS and then `frames` byte for byte, and reports
 * what the server did with stream 1: a response status, a reset, a GOAWAY, or a closed connection.
 */
function rawHttp2(origin: string, ca: string, frames: Buffer[]): Promise<RawOutcome> {
  const { hostname, port } = new URL(origin);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: hostname, port: Number(port), ca, ALPNProtocols: ['h2'], servername: 'localhost' }, () => {
      if (socket.alpnProtocol !== 'h2') return reject(new Error(`ALPN chose ${String(socket.alpnProtocol)}`));
      socket.write(Buffer.concat([PREFACE, frame(FRAME.settings, 0, 0), ...frames]));
    });
    let buffered = Buffer.alloc(0);
    let settled = false;
    const settle = (outcome: RawOutcome) => {
      if (settled) return;
      settled = true;
      socket.destroy();
      resolve(outcome);
    };
    socket.setTimeout(5000, () => reject(new Error('no answer on stream 1 within 5 s')));
    socket.on('error', () => settle({ kind: 'closed' }));
    socket.on('close', () => settle({ kind: 'closed' }));
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      while (buffered.length >= 9) {
        const length = buffered.readUIntBE(0, 3);
        if (buffered.length < 9 + length) break;
        const type = buffered[3]!;
        const flags = buffered[4]!;
        const streamId = buffered.readUInt32BE(5) & 0x7fffffff;
        const payload = buffered.subarray(9, 9 + length);
        buffered = buffered.subarray(9 + length);
        if (type === FRAME.settings && !(flags & FLAG.ack)) socket.write(frame(FRAME.settings, FLAG.ack, 0));
        else if (type === FRAME.headers && streamId === 1) settle({ kind: 'status', status: statusOf(payload) });
        else if (type === FRAME.rstStream && streamId === 1) settle({ kind: 'reset' });
        else if (type === FRAME.goaway) settle({ kind: 'goaway' });
      }
    });
  });
}

/**
 * A hand-driven HTTP/2 connection that never closes its side on its own (`allowHalfOpen`: a FIN from the gateway
 * is not answered with one), as a client that stops cooperating holds it: the preface, `settings` and `frames`
 * are sent, the gateway's SETTINGS acknowledged, and the type of every frame it sends is collected in `received`.
 */
function holdRawHttp2(origin: string, ca: string, settings: Buffer, frames: Buffer[] = []): Promise<{ socket: tls.TLSSocket; received: number[] }> {
  const { hostname, port } = new URL(origin);
  const received: number[] = [];
  return new Promise((resolve, reject) => {
    // Node's tls.connect takes allowHalfOpen (as net.connect does); its types do not list it.
    const options = { host: hostname, port: Number(port), ca, ALPNProtocols: ['h2'], servername: 'localhost', allowHalfOpen: true } as tls.ConnectionOptions;
    const socket = tls.connect(options, () => {
      socket.write(Buffer.concat([PREFACE, frame(FRAME.settings, 0, 0, settings), ...frames]));
      resolve({ socket, received });
    });
    socket.on('error', reject);
    let buffered = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      while (buffered.length >= 9 && buffered.length >= 9 + buffered.readUIntBE(0, 3)) {
        const type = buffered[3]!;
        if (type === FRAME.settings && !(buffered[4]! & FLAG.ack)) socket.write(frame(FRAME.settings, FLAG.ack, 0));
        received.push(type);
        buffered = buffered.subarray(9 + buffered.readUIntBE(0, 3));
      }
    });
  });
}

/**
 * Opens a TLS connection with ALPN h2, sends the preface, SETTINGS and `frames`, and collects the frames the server
 * sends on stream 1 (type, flags, a HEADERS frame's status, a RST_STREAM's code) until it resets that stream, sends GOAWAY or closes,
 * or `boundMs` passes.
 */
function rawStreamFrames(origin: string, ca: string, frames: Buffer[], boundMs = 5000): Promise<{ type: number; flags: number; status?: number; code?: number }[]> {
  const { hostname, port } = new URL(origin);
  return new Promise((resolve) => {
    const received: { type: number; flags: number; status?: number; code?: number }[] = [];
    const socket = tls.connect({ host: hostname, port: Number(port), ca, ALPNProtocols: ['h2'], servername: 'localhost' }, () => {
      socket.write(Buffer.concat([PREFACE, frame(FRAME.settings, 0, 0), ...frames]));
    });
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(received);
    };
    const timer = setTimeout(done, boundMs);
    socket.on('error', done);
    socket.on('close', done);
    let buffered = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      while (buffered.length >= 9 && buffered.length >= 9 + buffered.readUIntBE(0, 3)) {
        const length = buffered.readUIntBE(0, 3);
        const [type, flags] = [buffered[3]!, buffered[4]!];
        const streamId = buffered.readUInt32BE(5) & 0x7fffffff;
        const payload = buffered.subarray(9, 9 + length);
        buffered = buffered.subarray(9 + length);
        if (type === FRAME.settings && !(flags & FLAG.ack)) socket.write(frame(FRAME.settings, FLAG.ack, 0));
        if (type === FRAME.goaway) return done();
        if (streamId !== 1) continue;
        if (type === FRAME.headers) received.push({ type, flags, status: statusOf(payload) });
        else received.push(type === FRAME.rstStream ? { type, flags, code: payload.readUInt32BE(0) } : { type, flags });
        if (type === FRAME.rstStream) return done();
      }
    });
  });
}

/** The gateway's side of the next connection it accepts (its own TLS socket, which holds the connection slot). */
function nextAccepted(server: RunningServer['server']): Promise<tls.TLSSocket> {
  return new Promise((resolve) => server.once('secureConnection', resolve));
}

/** Resolves true once `socket` closed, false if it is still open after `boundMs`. */
function closedWithin(socket: tls.TLSSocket, boundMs: number): Promise<boolean> {
  if (socket.destroyed) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), boundMs);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

// -------------------------------------------------------------------------------------------------------------

/** Routes to user-service's `/health`, which answers 200 whoever calls: what matters is what reached it. */
const probeRoute = { name: 'probe', prefix: '/api/probe', service: 'users', upstreamPath: '/health', auth: 'public' };

describe('TLS termination and HTTP/2', () => {
  let certificate: TestCertificate;
  let stack: TestStack;
  let gateway: RunningServer;
  let url: string;
  let bob: string;
  let session: http2.ClientHttp2Session;
  let rowCount = 0;
  const nextRequestId = () => `tls-${++rowCount}`;
  const seenWithRequestId = (requestId: string): RecordedRequest[] => stack.serviceRequests().filter((request) => request.headers[HEADER.requestId] === requestId);

  beforeAll(async () => {
    certificate = makeCertificate();
    const shippedAuth = shippedConfigFile().auth as Record<string, unknown>;
    const routes = [...(shippedConfigFile().routes as { name: string }[]).map((route) => (route.name === 'register' ? { ...route, rateLimit: { max: 100_000, windowMs: 60_000 } } : route)), probeRoute];
    stack = await startStack({
      env: { RATE_LIMIT_MAX: '100000' },
      overrides: { routes, auth: { ...shippedAuth, loginRateLimit: { max: 1000, windowMs: 60_000 } }, tls: { certFile: certificate.certFile, keyFile: certificate.keyFile, hsts: { maxAgeSeconds: 600 } } },
    });
    // The same config served as main.ts serves it with `tls`: runServer over src/tls.ts.
    const { logger } = memoryLogger('gateway');
    const apps = createGatewayApps(stack.config, { logger, metrics: false });
    gateway = await runServer({ app: apps.gateway, name: 'gateway', port: 0, host: '127.0.0.1', logger, timeouts: TIMEOUTS, createServer: createTlsServer({ tls: stack.config.tls!, timeouts: TIMEOUTS, logger }).create });
    url = gateway.url;
    session = await connectH2(url, certificate.cert);
    const login = await h2Request(session, { ':method': 'POST', ':path': '/api/auth/login', 'content-type': 'application/json' }, JSON.stringify({ email: 'bob@example.com', password: 'builder' }));
    bob = (JSON.parse(login.text) as { token: string }).token;
  });
  afterAll(async () => {
    session?.close();
    await gateway?.close();
    await stack?.close();
  });

  /** After each hostile row: a new HTTP/2 connection still routes, authenticates and proxies. */
  async function expectStillServing(): Promise<void> {
    const fresh = await connectH2(url, certificate.cert);
    try {
      const reply = await h2Request(fresh, { ':path': '/api/users/2', authorization: `Bearer ${bob}` });
      expect(reply.status).toBe(200);
      expect(JSON.parse(reply.text)).toMatchObject({ id: '2', email: 'bob@example.com' });
    } finally {
      fresh.close();
    }
  }

  describe('protocols', () => {
    it('serves https:// and offers h2 and http/1.1 by ALPN', async () => {
      expect(url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
      const negotiated = async (protocols: string[]) => {
        const socket = tls.connect({ host: '127.0.0.1', port: Number(new URL(url).port), ca: certificate.cert, ALPNProtocols: protocols, servername: 'localhost' });
        await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
        const chosen = socket.alpnProtocol;
        socket.destroy();
        return chosen;
      };
      expect(await negotiated(['h2', 'http/1.1'])).toBe('h2');
      expect(await negotiated(['http/1.1'])).toBe('http/1.1');
    });

    it.each([
      { desc: 'TLS 1.1 by default (minVersion TLSv1.2)', minVersion: undefined, offered: 'TLSv1.1' as const },
      { desc: 'TLS 1.2 under minVersion TLSv1.3, after a certificate reload too', minVersion: 'TLSv1.3' as const, offered: 'TLSv1.2' as const },
    ])('refuses a handshake of $desc', async ({ minVersion, offered }) => {
      const handshake = (origin: string, maxVersion: tls.SecureVersion) =>
        new Promise<string>((resolve) => {
          // SECLEVEL=0: the client would offer old versions; only the server can refuse them.
          const socket = tls.connect({ host: '127.0.0.1', port: Number(new URL(origin).port), ca: certificate.cert, servername: 'localhost', minVersion: 'TLSv1', maxVersion, ciphers: 'DEFAULT@SECLEVEL=0' });
          socket.once('secureConnect', () => {
            resolve(String(socket.getProtocol()));
            socket.destroy();
          });
          socket.once('error', () => resolve('refused'));
        });
      if (minVersion === undefined) {
        expect(stack.config.tls!.minVersion).toBe('TLSv1.2');
        expect(await handshake(url, offered)).toBe('refused');
        return;
      }
      const { logger } = memoryLogger('gateway');
      const tlsServer = createTlsServer({ tls: { ...stack.config.tls!, minVersion }, timeouts: TIMEOUTS, logger });
      const strict = await runServer({ app: { callback: () => (_req, res) => res.end('ok') }, name: 'gateway', port: 0, host: '127.0.0.1', logger, createServer: tlsServer.create });
      try {
        expect(await handshake(strict.url, offered)).toBe('refused');
        expect(tlsServer.reloadCertificates()).toBe(true);
        expect(await handshake(strict.url, offered)).toBe('refused');
        expect(await handshake(strict.url, 'TLSv1.3')).toBe('TLSv1.3');
      } finally {
        await strict.close();
      }
    });

    it.each([
      { key: 'ec' as const, refused: ['ECDHE-ECDSA-AES128-SHA', 'ECDHE-ECDSA-AES256-SHA', 'ECDHE-ECDSA-AES128-SHA256', 'ECDHE-ECDSA-AES256-SHA384'], taken: 'ECDHE-ECDSA-AES128-GCM-SHA256' },
      { key: 'rsa' as const, refused: ['ECDHE-RSA-AES128-SHA', 'ECDHE-RSA-AES256-SHA', 'ECDHE-RSA-AES128-SHA256', 'AES128-GCM-SHA256', 'AES256-SHA'], taken: 'ECDHE-RSA-AES128-GCM-SHA256' },
    ])('negotiates no TLS 1.2 suite without forward secrecy and AEAD with an $key key (HTTP/2 forbids them: ECDHE-ECDSA-AES128-SHA was taken with ALPN h2), and TLS 1.3 still', async ({ key, refused, taken }) => {
      const { logger } = memoryLogger('gateway');
      const keyed = key === 'ec' ? certificate : makeCertificate('localhost', undefined, 'rsa');
      const server = await runServer({ app: { callback: () => (_req, res) => res.end('ok') }, name: 'gateway', port: 0, host: '127.0.0.1', logger, createServer: createTlsServer({ tls: { ...stack.config.tls!, certFile: keyed.certFile, keyFile: keyed.keyFile }, timeouts: TIMEOUTS, logger }).create });
      const handshake = (options: tls.ConnectionOptions) =>
        new Promise<string>((resolve) => {
          const socket = tls.connect({ host: '127.0.0.1', port: Number(new URL(server.url).port), ca: keyed.cert, servername: 'localhost', ALPNProtocols: ['h2'], ...options });
          socket.once('secureConnect', () => {
            resolve(`${socket.getProtocol()} ${socket.getCipher().name} ${socket.alpnProtocol}`);
            socket.destroy();
          });
          socket.once('error', () => resolve('refused'));
        });
      try {
        // Each on its own: the server's key takes it (the client offers nothing else), unless the list leaves it out.
        for (const cipher of refused) expect([cipher, await handshake({ maxVersion: 'TLSv1.2', ciphers: cipher })]).toEqual([cipher, 'refused']);
        expect(await handshake({ maxVersion: 'TLSv1.2', ciphers: taken })).toBe(`TLSv1.2 ${taken} h2`);
        expect(await handshake({})).toMatch(/^TLSv1\.3 TLS_\S+ h2$/);
      } finally {
        await server.close();
      }
    });

    it.each(['TLSv1.2', 'TLSv1.3'] as const)('replaces its session-ticket key on a timer (%s): a ticket sealed under a key before it is no longer resumed, one sealed after is', async (version) => {
      const { logger } = memoryLogger('gateway');
      const server = await runServer({ app: { callback: () => (_req, res) => res.end('ok') }, name: 'gateway', port: 0, host: '127.0.0.1', logger, createServer: createTlsServer({ tls: stack.config.tls!, timeouts: TIMEOUTS, logger, ticketKeyLifetimeMs: 200 }).create });
      const secure = server.server as unknown as tls.Server;
      /**
       * A handshake, offering `session` if given: whether it was resumed, and else the ticket the server sent on it
       * (TLS 1.2 sends it in the handshake, TLS 1.3 after it; a resumed TLS 1.2 session gets none).
       */
      const connect = (session?: Buffer) =>
        new Promise<{ resumed: boolean; ticket?: Buffer }>((resolve, reject) => {
          const socket = tls.connect({ host: '127.0.0.1', port: Number(new URL(server.url).port), ca: certificate.cert, servername: 'localhost', minVersion: version, maxVersion: version, session });
          let ticket: Buffer | undefined;
          const settle = () => {
            if (!socket.isSessionReused() && ticket === undefined) return;
            resolve({ resumed: socket.isSessionReused(), ticket });
            socket.destroy();
          };
          socket.on('session', (sent: Buffer) => {
            ticket ??= sent;
            if (socket.getProtocol() !== null) settle();
          });
          socket.once('secureConnect', settle);
          socket.once('error', reject);
        });
      /** A ticket and whether it was resumed at once, under one key throughout (tried again when a rotation fell between). */
      const resumedUnderOneKey = async () => {
        for (let tries = 0; tries < 50; tries++) {
          const key = secure.getTicketKeys();
          const { ticket } = await connect();
          const { resumed } = await connect(ticket!);
          if (secure.getTicketKeys().equals(key)) return { ticket, key, resumed };
        }
        throw new Error('no two handshakes fell between two rotations in 50 tries');
      };
      try {
        const first = await resumedUnderOneKey();
        expect(first.resumed).toBe(true);
        await waitFor(() => !secure.getTicketKeys().equals(first.key), 'a new ticket key');
        expect((await connect(first.ticket!)).resumed).toBe(false);
        expect((await resumedUnderOneKey()).resumed).toBe(true);
      } finally {
        await server.close();
      }
    });

    it('refuses a client-asked TLS 1.2 renegotiation on HTTP/1.1 (each a full handshake the server paid for, three per connection)', async () => {
      const socket = tls.connect({ host: '127.0.0.1', port: Number(new URL(url).port), ca: certificate.cert, servername: 'localhost', maxVersion: 'TLSv1.2', ALPNProtocols: ['http/1.1'] });
      socket.on('error', () => {});
      try {
        await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
        const renegotiated = await new Promise<Error | null>((resolve) => {
          // The server's refusal ends the connection: the callback hears it as an error, or the socket closes first.
          socket.once('close', () => resolve(new Error('closed')));
          socket.renegotiate({ rejectUnauthorized: false }, (error) => resolve(error ?? null));
        });
        expect(renegotiated).toBeInstanceOf(Error);
      } finally {
        socket.destroy();
      }
      await expectStillServing();
    });

    it('answers an HTTP/1.1 connection whose request line says HTTP/2.0 with 505, and serves on (it used to crash the process)', async () => {
      const requestId = nextRequestId();
      const socket = tls.connect({ host: '127.0.0.1', port: Number(new URL(url).port), ca: certificate.cert, ALPNProtocols: ['http/1.1'], servername: 'localhost' });
      const chunks: Buffer[] = [];
      socket.on('data', (chunk: Buffer) => chunks.push(chunk));
      await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
      socket.write(`GET /api/users/2 HTTP/2.0\r\nHost: localhost\r\nAuthorization: Bearer ${bob}\r\nX-Request-Id: ${requestId}\r\nConnection: close\r\n\r\n`);
      await new Promise<void>((resolve) => socket.once('close', () => resolve()));
      const [head = '', body = ''] = Buffer.concat(chunks).toString('latin1').split('\r\n\r\n');
      expect(head).toMatch(/^HTTP\/1\.1 505 /);
      expect(JSON.parse(body)).toMatchObject({ status: 505, code: 'http_version_not_supported', requestId });
      expect(seenWithRequestId(requestId)).toEqual([]);
      await expectStillServing();
    });

    it('advertises bounded HTTP/2 settings: streams per connection, and a header list size nghttp2 enforces past the one the pipeline answers 431 to', () => {
      expect(session.remoteSettings).toMatchObject({ maxConcurrentStreams: HTTP2_LIMITS.maxConcurrentStreams, maxHeaderListSize: HTTP2_LIMITS.hardHeaderListSize, enablePush: false });
      expect(HTTP2_LIMITS.maxHeaderListSize).toBe(http.maxHeaderSize);
    });

    // What nghttp2 enforces only once the client acknowledged the SETTINGS: a new session's first request.
    it('answers 431 to an oversized header list sent as a new session opens, reaching no service', async () => {
      const fresh = http2.connect(url, { ca: certificate.cert });
      try {
        const requestId = nextRequestId();
        const reply = await h2Request(fresh, { ':path': '/api/users/2', authorization: `Bearer ${bob}`, 'x-big': 'b'.repeat(http.maxHeaderSize + 4096), [HEADER.requestId]: requestId });
        // The gateway's answer (the request's own id), not a service's parser refusing what was forwarded to it.
        expect(reply.status).toBe(431);
        expect(JSON.parse(reply.text)).toMatchObject({ code: 'headers_too_large', requestId });
        expect(seenWithRequestId(requestId)).toEqual([]);
      } finally {
        fresh.close();
      }
    });

    it('serves HTTP/1.1 over TLS: the service hears X-Forwarded-Proto https and the public port', async () => {
      const requestId = nextRequestId();
      const reply = await h1Request(url, certificate.cert, '/api/users/2', { authorization: `Bearer ${bob}`, [HEADER.requestId]: requestId });
      expect(reply.status).toBe(200);
      expect(seenWithRequestId(requestId)[0]?.headers).toMatchObject({ 'x-forwarded-proto': 'https', 'x-forwarded-port': new URL(url).port });
    });

    it('serves HTTP/2: the service gets Host of its own, X-Forwarded-Host from :authority, and no pseudo-header', async () => {
      const requestId = nextRequestId();
      const reply = await h2Request(session, { ':path': '/api/users/2', authorization: `Bearer ${bob}`, [HEADER.requestId]: requestId });
      expect(reply.status).toBe(200);
      expect(JSON.parse(reply.text)).toMatchObject({ id: '2', email: 'bob@example.com' });
      const seen = seenWithRequestId(requestId)[0]!.headers;
      expect(seen).toMatchObject({ host: new URL(stack.users.url).host, 'x-forwarded-host': new URL(url).host, 'x-forwarded-proto': 'https', [HEADER.userId]: '2' });
      expect(Object.keys(seen).filter((name) => name.startsWith(':'))).toEqual([]);
    });

    it.each([
      { desc: 'without content-length (HTTP/2 frames the body itself)', lengthHeader: false },
      { desc: 'with content-length', lengthHeader: true },
    ])('forwards an HTTP/2 request body $desc', async ({ lengthHeader }) => {
      const body = JSON.stringify({ email: `h2-${lengthHeader}-${Date.now()}@example.com`, password: 'correct-horse-battery', name: 'H2' });
      const reply = await h2Request(session, { ':method': 'POST', ':path': '/api/auth/register', 'content-type': 'application/json', ...(lengthHeader ? { 'content-length': Buffer.byteLength(body) } : {}) }, body);
      expect(reply.status).toBe(201);
      expect(JSON.parse(reply.text)).toMatchObject({ email: JSON.parse(body).email });
    });

    it('sends Strict-Transport-Security on HTTPS answers, errors included, over both protocols', async () => {
      expect((await h2Request(session, { ':path': '/api/orders' })).headers['strict-transport-security']).toBe('max-age=600');
      const h1 = await h1Request(url, certificate.cert, '/api/orders');
      expect(h1.status).toBe(401);
      expect(h1.headers['strict-transport-security']).toBe('max-age=600');
      // Never over plain HTTP (the same config served without TLS), where browsers would ignore it anyway.
      const plain = await plainRequest(stack.gateway.url, '/api/orders');
      expect(plain.headers['strict-transport-security']).toBeUndefined();
    });
  });

  describe('slow HTTP/2 clients', () => {
    it('answers an HTTP/2 request still dripping its body after requestTimeoutMs with 408, as HTTP/1.1 does, and closes its stream; the connection serves on', async () => {
      // The same config on a listener whose requestTimeoutMs is short; login reads its body itself (no proxy body-rate check).
      const short = { ...TIMEOUTS, headersMs: 1_000, requestMs: 1_000 };
      const { logger, lines } = memoryLogger('gateway');
      const slow = await runServer({ app: createGatewayApps(stack.config, { logger, metrics: false }).gateway, name: 'gateway', port: 0, host: '127.0.0.1', logger, timeouts: short, createServer: createTlsServer({ tls: stack.config.tls!, timeouts: short, logger }).create });
      const dripping = await connectH2(slow.url, certificate.cert);
      try {
        // A byte every 100 ms of a declared 1000, for at most 10 x requestTimeoutMs: each frame restarts the session timer.
        const outcome = await new Promise<{ status?: number; body: string; whole: boolean }>((resolve) => {
          const stream = dripping.request({ ':method': 'POST', ':path': '/api/auth/login', 'content-type': 'application/json', 'content-length': '1000', [HEADER.requestId]: 'h2-dripping-1' }, { endStream: false });
          let status: number | undefined;
          let body = '';
          let drips = 0;
          const drip = setInterval(() => {
            if (++drips > 100) {
              clearInterval(drip);
              resolve({ status, body, whole: false });
            } else if (!stream.destroyed) stream.write(' ');
          }, 100);
          stream.on('response', (headers) => (status = Number(headers[':status'])));
          stream.on('data', (chunk: Buffer) => (body += chunk.toString()));
          stream.on('error', () => {});
          // The answer's END_STREAM (the gateway then resets the stream with NO_ERROR, RFC 9113 8.1, which Node's
          // client takes as the end of its own sending only once it stops writing).
          const whole = () => {
            clearInterval(drip);
            resolve({ status, body, whole: true });
          };
          stream.on('end', whole);
          stream.on('close', whole);
        });
        expect(outcome).toMatchObject({ status: 408, whole: true });
        expect(JSON.parse(outcome.body)).toMatchObject({ status: 408, code: 'request_timeout', requestId: 'h2-dripping-1' });
        // Recorded as the server's answer, not as a client that left (499).
        await waitFor(() => lines.some((line) => line.message === ACCESS_LINE_MESSAGE && line.request_id === 'h2-dripping-1'), 'the access line');
        expect(lines.filter((line) => line.message === ACCESS_LINE_MESSAGE && line.request_id === 'h2-dripping-1')).toEqual([expect.objectContaining({ status: 408, error_code: 'request_timeout' })]);
        // Only that stream ended: the connection still serves.
        expect((await h2Request(dripping, { ':path': '/health' })).status).toBe(200);
      } finally {
        dripping.destroy();
        await slow.close();
      }
    });
  });

  // h2spec's stream-limit test (http2/5.1.2/1: 101 streams at window 0, then GOAWAY PROTOCOL_ERROR) left 100 error lines.
  // Login and gRPC translation read their bodies themselves, and judged the rate by the connection's bytes: on HTTP/2
  // those are every stream's and every frame's, so a stream dripping its body beside a few PINGs a second was never
  // too slow and held on to requestTimeoutMs (the proxy counts each stream's own bytes).
  it('answers a login body dripped over HTTP/2 beside other traffic with 408 once under the least rate', async () => {
    const long = { ...TIMEOUTS, requestMs: 60_000 };
    const config = { ...stack.config, server: { ...stack.config.server, minBodyBytesPerSecond: 100, bodyGracePeriodMs: 1000 } };
    const { logger } = memoryLogger('gateway');
    const slow = await runServer({ app: createGatewayApps(config, { logger, metrics: false }).gateway, name: 'gateway', port: 0, host: '127.0.0.1', logger, timeouts: long, createServer: createTlsServer({ tls: config.tls!, timeouts: long, logger }).create });
    const dripping = await connectH2(slow.url, certificate.cert);
    const pings = setInterval(() => dripping.ping(Buffer.alloc(8), () => undefined), 20);
    try {
      const outcome = await new Promise<{ status?: number; body: string }>((resolve) => {
        const stream = dripping.request({ ':method': 'POST', ':path': '/api/auth/login', 'content-type': 'application/json', 'content-length': '1000', [HEADER.requestId]: 'h2-rate-1' }, { endStream: false });
        let status: number | undefined;
        let body = '';
        const drip = setInterval(() => !stream.destroyed && stream.write(' '), 500);
        stream.on('response', (headers) => (status = Number(headers[':status'])));
        stream.on('data', (chunk: Buffer) => (body += chunk.toString()));
        stream.on('error', () => {});
        const done = () => {
          clearInterval(drip);
          resolve({ status, body });
        };
        stream.on('end', done);
        stream.on('close', done);
        // Long before requestTimeoutMs: the rate check's 408 comes within a few seconds, or not at all.
        setTimeout(done, 8000);
      });
      expect(outcome.status).toBe(408);
      expect(JSON.parse(outcome.body)).toMatchObject({ code: 'request_timeout', requestId: 'h2-rate-1' });
    } finally {
      clearInterval(pings);
      dripping.destroy();
      await slow.close();
    }
  });

  describe('clients whose connection fails under answers already under way', () => {
    let watched: RunningServer;
    let watchedLog: Record<string, unknown>[];
    beforeAll(async () => {
      const { logger, lines } = memoryLogger('gateway');
      watchedLog = lines;
      watched = await runServer({ app: createGatewayApps(stack.config, { logger, metrics: false }).gateway, name: 'gateway', port: 0, host: '127.0.0.1', logger, timeouts: TIMEOUTS, createServer: createTlsServer({ tls: stack.config.tls!, timeouts: TIMEOUTS, logger }).create });
    });
    afterAll(() => watched?.close());

    const STREAMS = 20;
    const windowZero = frame(FRAME.settings, 0, 0, Buffer.from([0, 4, 0, 0, 0, 0]));
    const heldAnswers = (tag: string) =>
      Array.from({ length: STREAMS }, (_, index) => {
        const fields: [string, string][] = [[':method', 'GET'], [':scheme', 'https'], [':path', '/api/users/1'], [':authority', new URL(watched.url).host], [HEADER.requestId, `${tag}-${index}`]];
        return frame(FRAME.headers, FLAG.endStream | FLAG.endHeaders, 2 * index + 1, Buffer.concat(fields.map(([name, value]) => hpackLiteral(name, value))));
      });

    it.each([
      { desc: 'an HTTP/2 connection its client breaks (a WINDOW_UPDATE of 0: GOAWAY PROTOCOL_ERROR)', tag: 'broken-session', breaking: () => [frame(FRAME.windowUpdate, 0, 0, Buffer.alloc(4))] },
      { desc: 'HTTP/2 streams their client resets with PROTOCOL_ERROR', tag: 'reset-streams', breaking: () => Array.from({ length: STREAMS }, (_, index) => frame(FRAME.rstStream, 0, 2 * index + 1, Buffer.from([0, 0, 0, 1]))) },
    ])('logs no "unhandled gateway error" for $desc while their answers are held back (window 0)', async ({ tag, breaking }) => {
      const { socket, received } = await holdRawHttp2(watched.url, certificate.cert, Buffer.alloc(0), [windowZero, ...heldAnswers(tag)]);
      try {
        // The answers are written: each 401's head is out (HEADERS are not flow-controlled) and its body waits for a
        // window. Then the client breaks what carries them.
        await waitFor(() => received.filter((type) => type === FRAME.headers).length === STREAMS, `the ${STREAMS} answers' heads`);
        socket.write(Buffer.concat(breaking()));
        const accessLines = () => watchedLog.filter((line) => line.message === ACCESS_LINE_MESSAGE && String(line.request_id).startsWith(`${tag}-`));
        await waitFor(() => accessLines().length === STREAMS, `the ${STREAMS} access lines`);
        // Every failure of the connection's streams has reached Koa's error channel once the gateway's end of the
        // connection has closed (its session and streams are destroyed as its socket closes).
        socket.destroy();
        await waitFor(async () => (await new Promise<number>((resolve, reject) => watched.server.getConnections((error, count) => (error ? reject(error) : resolve(count))))) === 0, 'the gateway to close the connection');
        expect(watchedLog.filter((line) => line.message === 'unhandled gateway error')).toEqual([]);
      } finally {
        socket.destroy();
      }
    });
  });

  describe('HTTP/2 uploads answered before they end', () => {
    // requestTimeoutMs far longer than the test: a stream left open until then fails it.
    const long = { ...TIMEOUTS, requestMs: 60_000 };
    let early: RunningServer;
    let earlyLog: Record<string, unknown>[];
    beforeAll(async () => {
      const { logger, lines } = memoryLogger('gateway');
      earlyLog = lines;
      early = await runServer({ app: createGatewayApps(stack.config, { logger, metrics: false }).gateway, name: 'gateway', port: 0, host: '127.0.0.1', logger, timeouts: long, createServer: createTlsServer({ tls: stack.config.tls!, timeouts: long, logger }).create });
    });
    afterAll(() => early?.close());

    it.each([
      { desc: 'declares a body over the login limit', headers: { 'content-length': '100000' }, sent: 1000 },
      { desc: 'streams a body over the login limit', headers: {}, sent: 20_000 },
    ])('answers 413 to an upload that $desc while it is still open, ends its stream at once (RFC 9113 8.1), and records 413, not request_timeout', async ({ desc, headers, sent }) => {
      const requestId = `h2-early-413-${sent}`;
      const session = await connectH2(early.url, certificate.cert);
      session.on('error', () => undefined);
      try {
        const started = performance.now();
        const outcome = await new Promise<{ status?: number; body: string; rstCode: number }>((resolve) => {
          const stream = session.request({ ':method': 'POST', ':path': '/api/auth/login', 'content-type': 'application/json', [HEADER.requestId]: requestId, ...headers }, { endStream: false });
          let status: number | undefined;
          let body = '';
          stream.on('response', (received) => (status = Number(received[':status'])));
          stream.on('data', (chunk: Buffer) => (body += chunk.toString()));
          stream.on('error', () => undefined);
          stream.on('close', () => resolve({ status, body, rstCode: stream.rstCode }));
          // The upload is never ended: only the gateway can close this stream.
          stream.write('{"email":"' + 'x'.repeat(sent) + '"');
        });
        expect(outcome).toMatchObject({ status: 413, rstCode: http2.constants.NGHTTP2_NO_ERROR });
        expect(JSON.parse(outcome.body)).toMatchObject({ status: 413, requestId });
        expect(performance.now() - started).toBeLessThan(long.requestMs / 10);
        await waitFor(() => earlyLog.some((line) => line.message === ACCESS_LINE_MESSAGE && line.request_id === requestId), `the access line (${desc})`);
        expect(earlyLog.filter((line) => line.message === ACCESS_LINE_MESSAGE && line.request_id === requestId)).toEqual([expect.objectContaining({ status: 413, error_code: 'payload_too_large' })]);
        // The gateway's own reset: the connection serves on.
        expect((await h2Request(session, { ':path': '/health' })).status).toBe(200);
      } finally {
        session.destroy();
      }
    }, 15_000);

    // h2spec (http2/8.1/1) showed it: 'finish' comes as Node hands the answer's end to nghttp2, before the frame that
    // carries END_STREAM goes out, and a RST_STREAM submitted then went ahead of it. Node's client reads the answer
    // anyway; Go's fails it ("stream error: stream ID 1; NO_ERROR; received from peer").
    it.each([
      { desc: '401 to an upload without credentials', path: '/api/orders/upload', extra: [] as [string, string][], body: '{', status: 401 },
      { desc: '413 to an upload that declares a body over the login limit', path: '/api/auth/login', extra: [['content-length', '100000']] as [string, string][], body: '{"email":"', status: 413 },
    ])('sends the whole answer, END_STREAM included, before the RST_STREAM NO_ERROR that stops an upload: $desc', async ({ path, extra, body, status }) => {
      const fields: [string, string][] = [[':method', 'POST'], [':scheme', 'https'], [':path', path], [':authority', new URL(early.url).host], ['content-type', 'application/json'], ...extra];
      const head = frame(FRAME.headers, FLAG.endHeaders, 1, Buffer.concat(fields.map(([name, value]) => hpackLiteral(name, value))));
      const received = await rawStreamFrames(early.url, certificate.cert, [head, frame(FRAME.data, 0, 1, Buffer.from(body))]);
      expect(received.find((each) => each.type === FRAME.headers)?.status).toBe(status);
      const ended = received.findIndex((each) => (each.type === FRAME.data || each.type === FRAME.headers) && each.flags & FLAG.endStream);
      const reset = received.findIndex((each) => each.type === FRAME.rstStream);
      expect({ ended: ended !== -1, resetAfterEnd: reset === -1 || reset > ended }).toEqual({ ended: true, resetAfterEnd: true });
      expect(received[reset]).toEqual({ type: FRAME.rstStream, flags: 0, code: http2.constants.NGHTTP2_NO_ERROR });
    });
  });

  describe('hostile input over HTTP/2 (the rows of hostile-input.test.ts that HTTP/2 can carry)', () => {
    it.each([
      { desc: 'no Authorization header', headers: () => ({ ':path': '/api/orders' }), status: 401 },
      { desc: 'Bearer with garbage', headers: () => ({ ':path': '/api/orders', authorization: 'Bearer not-a-jwt' }), status: 401 },
      { desc: 'a dot-dot segment', headers: () => ({ ':path': '/api/users/../orders', authorization: `Bearer ${bob}` }), status: 400 },
      { desc: 'an encoded dot-dot segment', headers: () => ({ ':path': '/api/users/%2e%2e/orders', authorization: `Bearer ${bob}` }), status: 400 },
      { desc: 'an encoded slash', headers: () => ({ ':path': '/api/users%2F2', authorization: `Bearer ${bob}` }), status: 400 },
      { desc: 'a backslash', headers: () => ({ ':path': '/api/users\\..\\orders', authorization: `Bearer ${bob}` }), status: 400 },
      { desc: 'an unknown route', headers: () => ({ ':path': '/api/nothing-here', authorization: `Bearer ${bob}` }), status: 404 },
      { desc: 'the admin-only listing with a trailing slash (Bob is a user)', headers: () => ({ ':path': '/api/users/', authorization: `Bearer ${bob}` }), status: 403 },
      { desc: 'a method the route does not take', headers: () => ({ ':method': 'DELETE', ':path': '/api/auth/register' }), status: 405 },
      // HTTP/1.1's parser refuses both; over HTTP/2 a service would have to guess what they mean. Methods the
      // gateway does not implement: 501 (RFC 9110 9.1), as over HTTP/1.1.
      { desc: 'a lower-case method', headers: () => ({ ':method': 'get', ':path': '/api/users/2', authorization: `Bearer ${bob}` }), status: 501 },
      { desc: 'an unregistered method', headers: () => ({ ':method': 'FOO', ':path': '/api/users/2', authorization: `Bearer ${bob}` }), status: 501 },
    ])('answers $desc with $status, reaching no service', async ({ headers, status }) => {
      const requestId = nextRequestId();
      const reply = await h2Request(session, { ...headers(), [HEADER.requestId]: requestId });
      expect(reply.status).toBe(status);
      const problem = JSON.parse(reply.text) as ProblemBody;
      expect(problem.status).toBe(status);
      expect(problem.requestId).toBe(reply.headers[HEADER.requestId]);
      // As HTTP/1.1's parser says it of the same method (otel/lifecycle.ts).
      if (status === 501) expect(problem.detail).toBe('The gateway does not implement the request method.');
      expect(seenWithRequestId(requestId)).toEqual([]);
      await expectStillServing();
    });

    // Node ends a HEAD stream's writable side as the request arrives; the error handler took that for a client
    // gone and reset the stream (INTERNAL_ERROR): `curl -I --http2` got an error instead of the status.
    it.each([
      { desc: 'an unknown route', headers: () => ({ ':path': '/api/nothing-here', authorization: `Bearer ${bob}` }), status: 404 },
      { desc: 'no Authorization header', headers: () => ({ ':path': '/api/orders' }), status: 401 },
      { desc: 'a dot-dot segment', headers: () => ({ ':path': '/api/users/../orders', authorization: `Bearer ${bob}` }), status: 400 },
      { desc: 'the admin-only listing (Bob is a user)', headers: () => ({ ':path': '/api/users', authorization: `Bearer ${bob}` }), status: 403 },
      { desc: 'a route that takes POST only', headers: () => ({ ':path': '/api/auth/register' }), status: 405 },
    ])('answers a HEAD it refuses itself ($desc) with $status and its headers, no content, rather than resetting the stream', async ({ headers, status }) => {
      const requestId = nextRequestId();
      const reply = await h2Request(session, { ...headers(), ':method': 'HEAD', [HEADER.requestId]: requestId });
      expect([reply.status, reply.headers['content-type'], reply.headers[HEADER.requestId], reply.text]).toEqual([status, 'application/problem+json', requestId, '']);
      expect(seenWithRequestId(requestId)).toEqual([]);
      await expectStillServing();
    });

    // RFC 9110 9.3.2: a HEAD's fields are those of a GET. Node ends an HTTP/2 HEAD stream's writable side as it
    // arrives; Koa's respond took that for a client gone and ended the answer without the Content-Length it gives a
    // HEAD over HTTP/1.1 (and a GET over both).
    it.each([
      { desc: 'the health probe', headers: () => ({ ':path': '/health' }), status: 200 },
      { desc: 'an unknown route', headers: () => ({ ':path': '/api/nothing-here', authorization: `Bearer ${bob}` }), status: 404 },
      { desc: 'no Authorization header', headers: () => ({ ':path': '/api/orders' }), status: 401 },
      { desc: 'the admin-only listing (Bob is a user)', headers: () => ({ ':path': '/api/users', authorization: `Bearer ${bob}` }), status: 403 },
      { desc: 'a route that takes POST only', headers: () => ({ ':path': '/api/auth/register' }), status: 405 },
    ])('answers a HEAD it answers itself ($desc) with the Content-Length of its GET, as over HTTP/1.1', async ({ headers, status }) => {
      const { ':path': path = '', ...fields } = headers() as Record<string, string>;
      // Request ids of one length: a problem's body names its own.
      const row = nextRequestId();
      const get = await h2Request(session, { ':path': path, ...fields, [HEADER.requestId]: `${row}-g` });
      const h2Head = await h2Request(session, { ':method': 'HEAD', ':path': path, ...fields, [HEADER.requestId]: `${row}-2` });
      const h1Head = await h1Request(url, certificate.cert, path, { ...fields, [HEADER.requestId]: `${row}-1` }, 'HEAD');
      expect([get.status, h2Head.status, h1Head.status]).toEqual([status, status, status]);
      expect(get.headers['content-length']).toBe(String(Buffer.byteLength(get.text)));
      // The HEAD's own length (a problem's detail may name the method), the same over both protocols.
      expect(Number(h2Head.headers['content-length'])).toBeGreaterThan(0);
      expect([h2Head.headers['content-length'], h2Head.text]).toEqual([h1Head.headers['content-length'], '']);
    });

    // Node's HTTP/2 server hands a CONNECT stream to the 'connect' listener HTTP/1.1 uses: it got `:status 200`
    // (a proxy client's "tunnel open") carrying the text of an HTTP/1.1 405.
    it('answers CONNECT with 405 problem+json and a request id, opening no tunnel, and serves on', async () => {
      const reply = await h2Request(session, { ':method': 'CONNECT', ':authority': 'example.com:443' });
      expect(reply.status).toBe(405);
      expect(reply.headers['content-type']).toBe('application/problem+json');
      expect(reply.headers.allow).toBe('GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS');
      expect(JSON.parse(reply.text)).toMatchObject({ status: 405, code: 'method_not_allowed', requestId: reply.headers[HEADER.requestId] });
      await expectStillServing();
    });

    // Over HTTP/1.1 Node's parser answers 431; nghttp2 would reset the stream unseen (and, before the client
    // acknowledged the SETTINGS announcing its bound, let the list through to a service).
    it('answers a header list over the HTTP/1 bound with 431 problem+json and the request id, reaching no service', async () => {
      const requestId = nextRequestId();
      const reply = await h2Request(session, { ':path': '/api/users/2', authorization: `Bearer ${bob}`, 'x-big': 'b'.repeat(http.maxHeaderSize), [HEADER.requestId]: requestId });
      expect(reply.status).toBe(431);
      expect(JSON.parse(reply.text)).toMatchObject({ status: 431, code: 'headers_too_large', requestId });
      expect(seenWithRequestId(requestId)).toEqual([]);
      // Octets over 0x7f count once each, as on the wire (and as HTTP/1.1's parser counts them): 9,000 fit.
      const obsText = await h2Request(session, { ':path': '/api/users/2', authorization: `Bearer ${bob}`, 'x-note': '\u00e9'.repeat(9000) });
      expect(obsText.status).toBe(200);
      const fitting = nextRequestId();
      // Just under the bound still passes.
      const reply2 = await h2Request(session, { ':path': '/api/users/2', authorization: `Bearer ${bob}`, [HEADER.requestId]: fitting, 'x-big': 'b'.repeat(http.maxHeaderSize - 2048) });
      expect(reply2.status).toBe(200);
      // Many small fields count as HTTP/1.1 carries them (4.4 KB here), which serves them: RFC 9113's 32 octets per
      // field beside name and value made these 18.8 KB, and 431, over HTTP/2 alone.
      const many = Object.fromEntries(Array.from({ length: 450 }, (_, index) => [`x-${index}`, '1']));
      expect((await h2Request(session, { ':path': '/api/users/2', authorization: `Bearer ${bob}`, ...many })).status).toBe(200);
      await expectStillServing();
    });

    it.each([
      { desc: 'X-User-Id and X-User-Role', forged: { 'x-user-id': '1', 'x-user-role': 'admin' } },
      { desc: 'underscore twins', forged: { x_user_id: '1', x_user_role: 'admin' } },
      { desc: 'X-Consumer-Id', forged: { 'x-consumer-id': 'acme' } },
      { desc: 'X-Gateway-Timestamp', forged: { 'x-gateway-timestamp': '1970-01-01T00:00:00Z' } },
      { desc: 'X-Forwarded-For / -Host / -Proto', forged: { 'x-forwarded-for': '6.6.6.6', 'x-forwarded-host': 'evil.example', 'x-forwarded-proto': 'http' } },
      { desc: 'X-HTTP-Method-Override', forged: { 'x-http-method-override': 'DELETE' } },
    ])('replaces forged $desc with the gateway’s own values', async ({ forged }) => {
      const requestId = nextRequestId();
      const reply = await h2Request(session, { ':path': '/api/users/2', authorization: `Bearer ${bob}`, ...forged, [HEADER.requestId]: requestId });
      expect(reply.status).toBe(200);
      const seen = seenWithRequestId(requestId)[0]!.headers;
      expect(seen).toMatchObject({ [HEADER.userId]: '2', [HEADER.userRole]: 'user', 'x-forwarded-for': '127.0.0.1', 'x-forwarded-proto': 'https', 'x-forwarded-host': new URL(url).host });
      for (const [name, value] of Object.entries(forged)) {
        if (seen[name] !== undefined) expect(seen[name]).not.toBe(value);
      }
      expect(seen['x-consumer-id']).toBeUndefined();
      expect(seen['x-http-method-override']).toBeUndefined();
    });

    describe('shapes only HTTP/2 has (frames written by hand)', () => {
      const requestHead = (requestId: string): [string, string][] => [
        [':method', 'GET'],
        [':scheme', 'https'],
        [':path', '/api/users/2'],
        [':authority', new URL(url).host],
        ['authorization', `Bearer ${bob}`],
        [HEADER.requestId, requestId],
      ];
      const headersFrame = (fields: [string, string][], flags = FLAG.endStream | FLAG.endHeaders) => frame(FRAME.headers, flags, 1, Buffer.concat(fields.map(([name, value]) => hpackLiteral(name, value))));

      it('answers a well-formed hand-written request (the harness itself works)', async () => {
        const requestId = nextRequestId();
        expect(await rawHttp2(url, certificate.cert, [headersFrame(requestHead(requestId))])).toEqual({ kind: 'status', status: 200 });
        expect(seenWithRequestId(requestId)).toHaveLength(1);
      });

      it.each([
        { desc: 'Connection: keep-alive', edit: (head: [string, string][]) => [...head, ['connection', 'keep-alive']] },
        { desc: 'Transfer-Encoding: chunked (smuggling into an HTTP/1.1 upstream)', edit: (head: [string, string][]) => [...head, ['transfer-encoding', 'chunked']] },
        { desc: 'Upgrade: websocket', edit: (head: [string, string][]) => [...head, ['upgrade', 'websocket']] },
        { desc: 'Keep-Alive', edit: (head: [string, string][]) => [...head, ['keep-alive', 'timeout=5']] },
        { desc: 'Proxy-Connection', edit: (head: [string, string][]) => [...head, ['proxy-connection', 'keep-alive']] },
        { desc: 'TE: gzip', edit: (head: [string, string][]) => [...head, ['te', 'gzip']] },
        { desc: 'an upper-case header name', edit: (head: [string, string][]) => [...head, ['X-User-Id', '1']] },
        { desc: 'an unknown pseudo-header', edit: (head: [string, string][]) => [...head, [':user', 'admin']] },
        { desc: 'a pseudo-header after a regular header', edit: (head: [string, string][]) => [...head, [':path', '/api/orders']] },
        { desc: 'a second :path', edit: (head: [string, string][]) => [head[0]!, head[1]!, head[2]!, [':path', '/api/orders'], ...head.slice(3)] },
        { desc: 'no :path', edit: (head: [string, string][]) => head.filter(([name]) => name !== ':path') },
        { desc: 'an empty :path', edit: (head: [string, string][]) => head.map(([name, value]): [string, string] => [name, name === ':path' ? '' : value]) },
        { desc: 'a :path without the leading slash', edit: (head: [string, string][]) => head.map(([name, value]): [string, string] => [name, name === ':path' ? 'api/users/2' : value]) },
        { desc: 'a CR LF in :path', edit: (head: [string, string][]) => head.map(([name, value]): [string, string] => [name, name === ':path' ? '/api/users/2\r\nx-user-id: 1' : value]) },
        // Raw bytes, not percent-encoded: HTTP/1.1's parser refuses them; they passed the path guard's decoding.
        { desc: 'raw bytes outside ASCII in :path (an overlong UTF-8 dot-dot)', edit: (head: [string, string][]) => head.map(([name, value]): [string, string] => [name, name === ':path' ? '/api/orders/\xc0\xae\xc0\xae/1' : value]) },
        { desc: 'a raw space in :path', edit: (head: [string, string][]) => head.map(([name, value]): [string, string] => [name, name === ':path' ? '/api/users/2 x' : value]) },
        { desc: 'a Host that names another authority than :authority', edit: (head: [string, string][]) => [...head, ['host', 'evil.example']] },
      ])('refuses a request with $desc (stream reset or 400), reaching no service', async ({ edit }) => {
        const requestId = nextRequestId();
        const outcome = await rawHttp2(url, certificate.cert, [headersFrame(edit(requestHead(requestId)) as [string, string][])]);
        expect([{ kind: 'reset' }, { kind: 'status', status: 400 }, { kind: 'goaway' }]).toContainEqual(outcome);
        expect(seenWithRequestId(requestId)).toEqual([]);
        await expectStillServing();
      });

      // Node's HTTP/2 parser drops such a field and serves the rest of the request (nghttp2's lenient mode), where
      // HTTP/1.1's parser refuses the request; either way the field must never reach a service (createHttp2Requests
      // refuses it should a Node version pass it on).
      it.each([
        { desc: 'a header value with CR LF (header injection)', field: ['x-note', 'a\r\nx-user-id: 1'] },
        { desc: 'a header value with NUL', field: ['x-note', 'a\0b'] },
        { desc: 'a header value with a leading space', field: ['x-note', ' padded'] },
        { desc: 'a header name with a space', field: ['x-user-id ', '1'] },
        { desc: 'a header name with a colon inside', field: ['x-user:id', '1'] },
      ])('never forwards $desc: refused, or dropped from the request', async ({ field }) => {
        const requestId = nextRequestId();
        const outcome = await rawHttp2(url, certificate.cert, [headersFrame([...requestHead(requestId), field as [string, string]])]);
        expect([{ kind: 'reset' }, { kind: 'status', status: 400 }, { kind: 'goaway' }, { kind: 'status', status: 200 }]).toContainEqual(outcome);
        for (const seen of seenWithRequestId(requestId)) {
          expect(seen.headers['x-note']).toBeUndefined();
          expect(seen.headers[HEADER.userId]).toBe('2');
          expect(Object.keys(seen.headers).filter((name) => name.includes(' ') || name.includes(':'))).toEqual([]);
        }
        await expectStillServing();
      });

      it('refuses a body longer than its content-length, reaching no service with it', async () => {
        const requestId = nextRequestId();
        const head: [string, string][] = [[':method', 'POST'], [':scheme', 'https'], [':path', '/api/auth/register'], [':authority', new URL(url).host], ['content-type', 'application/json'], ['content-length', '2'], [HEADER.requestId, requestId]];
        const outcome = await rawHttp2(url, certificate.cert, [headersFrame(head, FLAG.endHeaders), frame(FRAME.data, FLAG.endStream, 1, Buffer.from('{"email":"smuggled@example.com"}'))]);
        expect([{ kind: 'reset' }, { kind: 'status', status: 400 }, { kind: 'goaway' }]).toContainEqual(outcome);
        expect(stack.users.requests.filter((request) => request.headers[HEADER.requestId] === requestId && request.method === 'POST')).toEqual([]);
        await expectStillServing();
      });

      it('ends a CONTINUATION flood (a header block that never ends) without reaching a service', async () => {
        const requestId = nextRequestId();
        const filler = hpackLiteral('x-filler', 'f'.repeat(1000));
        const flood = Array.from({ length: 200 }, () => frame(FRAME.continuation, 0, 1, filler));
        const outcome = await rawHttp2(url, certificate.cert, [headersFrame(requestHead(requestId), FLAG.endStream), ...flood]);
        // 200 KB of headers against a 16 KB bound: the stream or the whole connection ends; nothing is buffered on.
        expect(['reset', 'goaway', 'closed', 'status']).toContain(outcome.kind);
        if (outcome.kind === 'status') expect(outcome.status).toBe(431);
        expect(seenWithRequestId(requestId)).toEqual([]);
        await expectStillServing();
      });

      it('ends a rapid-reset flood (CVE-2023-44487: streams opened and reset at once) with GOAWAY, and serves on', async () => {
        // Node's nghttp2 closes a session past its stream-reset budget (a burst of 1000); 5000 pairs in one write.
        const head = Buffer.concat(requestHead(nextRequestId()).map(([name, value]) => hpackLiteral(name, name === ':path' ? '/health' : value)));
        const cancel = Buffer.alloc(4);
        cancel.writeUInt32BE(http2.constants.NGHTTP2_CANCEL);
        const flood = Array.from({ length: 5000 }, (_, index) => [frame(FRAME.headers, FLAG.endStream | FLAG.endHeaders, 1 + 2 * index, head), frame(FRAME.rstStream, 0, 1 + 2 * index, cancel)]).flat();
        expect(['goaway', 'closed']).toContain((await rawHttp2(url, certificate.cert, flood)).kind);
        await expectStillServing();
      });

      it('refuses a header list over the HTTP/1 limit in one block, as HTTP/1.1 would (431 or reset)', async () => {
        const requestId = nextRequestId();
        const outcome = await rawHttp2(url, certificate.cert, [headersFrame([...requestHead(requestId), ['x-big', 'b'.repeat(http.maxHeaderSize + 1024)]])]);
        expect(['reset', 'goaway', 'closed', 'status']).toContain(outcome.kind);
        if (outcome.kind === 'status') expect(outcome.status).toBe(431);
        expect(seenWithRequestId(requestId)).toEqual([]);
        await expectStillServing();
      });

      // HPACK lets a block name a dynamic-table entry in one byte: the bounds hold for the list it decodes to, so a block
      // of a few KB cannot make the gateway hold or forward a list of any size (RFC 9113 10.5.1). Before the client
      // acknowledges the SETTINGS (these frames go with the preface) nghttp2 applies no list size of its own: the
      // pipeline's 431, Node's 16 MiB per list and the session's memory bound (maxSessionMemoryMb) are what hold.
      // Each field counts its name and value and, as the pipeline counts it (HTTP/1.1's line), 4 octets; as nghttp2
      // counts it (RFC 9113 6.5.2), 32.
      it.each([
        { desc: 'a 200-octet entry named past the HTTP/1 bound: 431, as HTTP/1.1', value: 200, decoded: http.maxHeaderSize, perField: 4, outcomes: [{ kind: 'status', status: 431 }] },
        { desc: 'a 200-octet entry named past the hard list size', value: 200, decoded: HTTP2_LIMITS.hardHeaderListSize, perField: 32, outcomes: [{ kind: 'status', status: 431 }, { kind: 'reset' }] },
        { desc: 'a 4000-octet entry named 900 times (3.5 MiB)', value: 4000, decoded: 900 * 4037, perField: 32, outcomes: [{ kind: 'status', status: 431 }, { kind: 'reset' }] },
      ])('bounds a header list by what HPACK decodes it to, not by its bytes on the wire ($desc), reaching no service', async ({ value, decoded, perField, outcomes }) => {
        const requestId = nextRequestId();
        // One entry (5 + value octets and its per-field count) put in the dynamic table (index 62), then named again and again.
        const entry = Buffer.concat([Buffer.from([0x40]), hpackInteger(5, 7, 0), Buffer.from('x-pad'), hpackInteger(value, 7, 0), Buffer.from('p'.repeat(value))]);
        const references = Math.ceil(decoded / (value + 5 + perField)) + 1;
        const block = Buffer.concat([...requestHead(requestId).map(([name, field]) => hpackLiteral(name, field)), entry, Buffer.alloc(references, 0x80 | 62)]);
        expect(block.length).toBeLessThan(8192);
        expect(outcomes).toContainEqual(await rawHttp2(url, certificate.cert, [frame(FRAME.headers, FLAG.endStream | FLAG.endHeaders, 1, block)]));
        expect(seenWithRequestId(requestId)).toEqual([]);
        await expectStillServing();
      });

      // RFC 9113 8.3.1 compares them normalised (RFC 3986 6.2.3): the same origin in another spelling got 400.
      it.each([
        { desc: 'the default port', host: (authority: string) => `${authority.split(':')[0]}:443`, authority: (authority: string) => authority.split(':')[0]! },
        { desc: 'upper case', host: (authority: string) => authority.toUpperCase(), authority: (authority: string) => authority },
      ])('serves a Host that names :authority with $desc', async ({ host, authority }) => {
        const requestId = nextRequestId();
        const head = requestHead(requestId).map(([name, value]): [string, string] => [name, name === ':authority' ? authority(value) : value]);
        expect(await rawHttp2(url, certificate.cert, [headersFrame([...head, ['host', host(new URL(url).host)]])])).toEqual({ kind: 'status', status: 200 });
        expect(seenWithRequestId(requestId)).toHaveLength(1);
      });

      it.each(['trailers', 'Trailers', 'TRAILERS'])('serves TE: %s (the keyword in any case, RFC 9110 10.1.4), forwarding no TE', async (te) => {
        const requestId = nextRequestId();
        expect(await rawHttp2(url, certificate.cert, [headersFrame([...requestHead(requestId), ['te', te]])])).toEqual({ kind: 'status', status: 200 });
        expect(seenWithRequestId(requestId)[0]?.headers.te).toBeUndefined();
      });

      // Counted as fields of their own (Node's 128 pairs; 32 octets and a name each toward the 16 KiB), 180 cookies
      // that HTTP/1.1 serves in one line reset the stream, or got 431.
      it('serves a Cookie sent as crumbs, one field per cookie (RFC 9113 8.2.3, as Firefox sends it), that HTTP/1.1 serves in one line: the service gets them joined', async () => {
        const requestId = nextRequestId();
        const cookies = Array.from({ length: 180 }, (_, index) => `cookie-${String(index).padStart(3, '0')}=${'v'.repeat(48)}`);
        const crumbs = cookies.map((cookie): [string, string] => ['cookie', cookie]);
        expect(await rawHttp2(url, certificate.cert, [headersFrame([...requestHead(requestId), ...crumbs])])).toEqual({ kind: 'status', status: 200 });
        expect(seenWithRequestId(requestId)[0]?.headers.cookie).toBe(cookies.join('; '));
        const overHttp1 = await h1Request(url, certificate.cert, '/api/users/2', { authorization: `Bearer ${bob}`, cookie: cookies.join('; ') });
        expect(overHttp1.status).toBe(200);
      });

      it('refuses more header fields than HTTP2_LIMITS.maxHeaderListPairs', async () => {
        const requestId = nextRequestId();
        const many = Array.from({ length: HTTP2_LIMITS.maxHeaderListPairs + 10 }, (_, index): [string, string] => [`x-many-${index}`, 'v']);
        const outcome = await rawHttp2(url, certificate.cert, [headersFrame([...requestHead(requestId), ...many])]);
        expect(['reset', 'goaway', 'closed', 'status']).toContain(outcome.kind);
        if (outcome.kind === 'status') expect(outcome.status).toBe(431);
        expect(seenWithRequestId(requestId)).toEqual([]);
        await expectStillServing();
      });
    });
  });
});

/** Bob's token, logged in over `session`. */
async function loginOver(session: http2.ClientHttp2Session): Promise<string> {
  const reply = await h2Request(session, { ':method': 'POST', ':path': '/api/auth/login', 'content-type': 'application/json' }, JSON.stringify({ email: 'bob@example.com', password: 'builder' }));
  return (JSON.parse(reply.text) as { token: string }).token;
}


/** `/orders/die-mid-body`: a service that starts a 1 MB answer, then dies 1 KB into it (true when it took the request). */
function diedMidBody(req: http.IncomingMessage, res: http.ServerResponse): boolean {
  if (!req.url?.startsWith('/orders/die-mid-body')) return false;
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': '1000000' });
  res.write(Buffer.alloc(1000));
  setTimeout(() => req.socket.destroy(), 50);
  return true;
}

/**
 * Whether the gateway has closed the next connection made to it (the 'close' of its own HTTP/2 session for it). The
 * client's own 'close' cannot tell: under load Node's client session was seen to stall with frames queued
 * (outboundQueueSize 122) after the gateway had closed the connection (no TCP connection left on its port), and to
 * emit nothing for 10 s.
 */
function nextSessionClosedByGateway(running: RunningServer): () => boolean {
  let closed = false;
  (running.server as unknown as http2.Http2SecureServer).once('session', (session) => session.once('close', () => (closed = true)));
  return () => closed;
}

describe('HTTP/2 clients that leave, and TLS connections that never start', () => {
  let certificate: TestCertificate;
  let stack: TestStack;
  let gateway: RunningServer;
  let gatewayLog: Record<string, unknown>[];
  let service: http.Server;
  const closedEarly: string[] = [];
  /** Every request the service got, by URL, and whether it is still open (the gateway holds it and a connection). */
  const upstreamOpen = new Map<string, boolean>();
  const stillOpenUpstream = (tag: string) => [...upstreamOpen].filter(([url, open]) => open && url.includes(tag)).map(([url]) => url);
  /** What the service got of each `/orders/record-upload` body: bytes, and whether it ended (complete) or was aborted. */
  const recordedUploads = new Map<string, { received: number; ended: boolean; aborted: boolean }>();
  const short = { ...TIMEOUTS, headersMs: 1_000, keepAliveMs: 1_000 };
  const metrics = createGatewayMetrics();
  /** Attempts at the service that ended because their client left (gateway_upstream_request_duration_seconds). */
  const clientClosedAttempts = async () =>
    (await metrics.upstreamDuration.get()).values.filter((sample) => sample.metricName?.endsWith('_count') && sample.labels[METRIC_LABEL.upstreamOutcome] === 'client_closed').reduce((sum, sample) => sum + sample.value, 0);

  beforeAll(async () => {
    certificate = makeCertificate();
    // A service that streams an endless download, recording when the gateway gives up on it.
    service = http.createServer((req, res) => {
      upstreamOpen.set(req.url ?? '', true);
      res.on('close', () => upstreamOpen.set(req.url ?? '', false));
      if (diedMidBody(req, res)) return;
      // An upload stored only once its body ended: a body cut short must never look complete.
      if (req.url?.startsWith('/orders/record-upload')) {
        // `answer-first`: the head and a first chunk go out at once, before the body is read (a streaming exchange).
        if (req.url.includes('answer-first')) {
          res.writeHead(200, { 'content-type': 'application/octet-stream' });
          res.write(Buffer.alloc(1024));
        }
        const record = { received: 0, ended: false, aborted: false };
        recordedUploads.set(req.url, record);
        req.on('data', (chunk: Buffer) => (record.received += chunk.length));
        req.on('end', () => {
          record.ended = true;
          res.end('stored');
        });
        req.on('error', () => (record.aborted = true));
        return;
      }
      // A slow download: its head, then nothing for as long as the gateway waits.
      if (req.url?.startsWith('/orders/slow-download')) {
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        res.flushHeaders();
        return;
      }
      // Uploads are answered once read: the streams rapid-reset clients open must not each hold a download open.
      if (req.url?.startsWith('/orders/upload')) {
        req.resume();
        req.on('end', () => res.end());
        return;
      }
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const chunk = Buffer.alloc(64 * 1024);
      const pump = () => {
        while (!res.destroyed && res.write(chunk));
      };
      res.on('drain', pump);
      res.on('close', () => closedEarly.push(req.url ?? ''));
      pump();
    });
    await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve));
    const serviceUrl = `http://127.0.0.1:${(service.address() as { port: number }).port}`;
    stack = await startStack({
      serviceUrls: { orders: serviceUrl },
      // The rapid-reset client must reach the proxy (not a 429 answered at once) with every stream.
      env: { RATE_LIMIT_MAX: '100000' },
      overrides: {
        tls: { certFile: certificate.certFile, keyFile: certificate.keyFile },
        // Bodies stream from their first byte (none read ahead, proxy.requestBufferBytes): the uploads cut short below
        // must be under way at the service when their clients leave. test/gateway/request-read-ahead.test.ts has the
        // bodies read ahead, which a service never sees cut short.
        proxy: { timeoutMs: 60_000, deadlineMs: 120_000, requestBufferBytes: 0 },
        // The one instance breaks off a hundred answers below: it must stay in rotation for each to be cut.
        services: { users: { url: 'http://placeholder' }, orders: { url: 'http://placeholder', ejectAfterFailures: 100_000 }, notifications: { url: 'http://placeholder' } },
      },
    });
    const { logger, lines } = memoryLogger('gateway');
    gatewayLog = lines;
    gateway = await runServer({ app: createGatewayApps(stack.config, { logger, metrics }).gateway, name: 'gateway', port: 0, host: '127.0.0.1', logger, timeouts: short, createServer: createTlsServer({ tls: stack.config.tls!, timeouts: short, sendTimeoutMs: 1000, logger }).create });
  });
  afterAll(async () => {
    // The service's connections first: an exchange the gateway failed to end would keep everything else open.
    service?.closeAllConnections();
    await new Promise((resolve) => service?.close(resolve));
    await gateway?.close();
    await stack?.close();
  });

  it.each([
    ['resets its stream mid-body', (stream: http2.ClientHttp2Stream) => stream.close(http2.constants.NGHTTP2_CANCEL)],
    ['closes its connection mid-body', (stream: http2.ClientHttp2Stream) => stream.session?.destroy()],
  ])('ends the upstream exchange of a client that %s (it held its upstream connection for good), and logs 499', async (desc, leave) => {
    const session = await connectH2(gateway.url, certificate.cert);
    session.on('error', () => undefined);
    const token = await loginOver(session);
    const path = `/orders/download?client=${desc.length}`;
    const stream = session.request({ ':path': `/api${path}`, authorization: `Bearer ${token}` });
    stream.on('error', () => undefined);
    // Reads nothing: the upstream exchange is paused by back-pressure when the client leaves.
    await new Promise((resolve) => stream.once('response', resolve));
    leave(stream);
    await waitFor(() => closedEarly.includes(path), 'the upstream exchange to end').catch(() => undefined);
    expect(closedEarly).toContain(path);
    await waitFor(() => gatewayLog.some((line) => line.message === 'request completed' && line.url === `/api${path}`));
    expect(gatewayLog.find((line) => line.message === 'request completed' && line.url === `/api${path}`)).toMatchObject({ status: 499, error_code: null });
    session.destroy();
  });

  it.each([
    { desc: 'CANCEL', code: http2.constants.NGHTTP2_CANCEL, download: 'download' },
    { desc: 'NO_ERROR', code: http2.constants.NGHTTP2_NO_ERROR, download: 'download' },
    { desc: 'CANCEL', code: http2.constants.NGHTTP2_CANCEL, download: 'slow-download' },
  ])('holds no upstream request of an HTTP/2 client that resets its streams as soon as it opens them (RST_STREAM $desc, $download): they stayed open at the service, exhausting its connections', async ({ desc, code, download }) => {
    const tag = `early-reset-${desc}-${download}`;
    const attemptsBefore = await clientClosedAttempts();
    const session = await connectH2(gateway.url, certificate.cert);
    session.on('error', () => undefined);
    try {
      const token = await loginOver(session);
      // Well within the rapid-reset budget, so the connection stays open. Each reset comes in with its HEADERS, so
      // it reaches the gateway before the request reaches the proxy (authentication and the rate limit run first).
      for (let index = 0; index < 20; index++) {
        const stream = session.request({ ':path': `/api/orders/${download}?${tag}=${index}`, authorization: `Bearer ${token}` });
        stream.on('error', () => undefined);
        stream.close(code);
      }
      await expectNoneHeldUpstream(tag, attemptsBefore);
      // The connection serves on.
      const upload = await h2Request(session, { ':method': 'POST', ':path': `/api/orders/upload?${tag}=after`, 'content-type': 'application/json', authorization: `Bearer ${token}` }, '{}');
      expect(upload.status).toBe(200);
    } finally {
      session.destroy();
    }
  });

  it.each(['download', 'slow-download'])('holds no upstream request of an HTTP/1.1 client that closes its connection right after the request head (%s)', async (download) => {
    const tag = `early-close-h1-${download}`;
    const attemptsBefore = await clientClosedAttempts();
    const { port } = new URL(gateway.url);
    await Promise.all(
      Array.from({ length: 20 }, (_, index) =>
        new Promise<void>((resolve) => {
          const socket = tls.connect({ host: '127.0.0.1', port: Number(port), ca: certificate.cert, ALPNProtocols: ['http/1.1'], servername: 'localhost' }, () => {
            // The head and the close in one go; a token of its own, whose check (not yet cached) lets the close arrive
            // before the request reaches the proxy.
            void signToken({ claims: { connection: index } }).then((token) => socket.end(`GET /api/orders/${download}?${tag}=${index} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${token}\r\n\r\n`));
          });
          socket.on('error', () => undefined);
          socket.on('close', () => resolve());
        }),
      ),
    );
    await expectNoneHeldUpstream(tag, attemptsBefore);
    const token = await signToken();
    expect((await h1Request(gateway.url, certificate.cert, `/api/orders/upload?${tag}=after`, { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, 'POST', '{}')).status).toBe(200);
  });

  /**
   * The 20 requests tagged `tag` ended as clients that left: logged 499, each attempt at the service recorded
   * `client_closed` (the gateway is done with it), and every request the service got of them closed.
   */
  async function expectNoneHeldUpstream(tag: string, attemptsBefore: number): Promise<void> {
    const accessLines = () => gatewayLog.filter((line) => line.message === ACCESS_LINE_MESSAGE && String(line.url).includes(`${tag}=`));
    await waitFor(() => accessLines().length === 20, 'the access lines of the clients that left');
    expect(new Set(accessLines().map((line) => line.status))).toEqual(new Set([499]));
    await waitFor(async () => (await clientClosedAttempts()) - attemptsBefore >= 20, 'every attempt at the service to end as client_closed').catch(() => undefined);
    expect((await clientClosedAttempts()) - attemptsBefore).toBeGreaterThanOrEqual(20);
    await waitFor(() => stillOpenUpstream(tag).length === 0, 'every upstream request of the clients that left to be closed').catch(() => undefined);
    expect(stillOpenUpstream(tag)).toEqual([]);
  }

  /** Starts an upload of part of a JSON body, its end never sent; resolves to how its client then leaves. */
  type CutUpload = (path: string, token: string) => Promise<() => void>;
  const uploadSockets: tls.TLSSocket[] = [];
  /**
   * HEADERS and a DATA frame without END_STREAM, then RST_STREAM, written by hand: Node's client ends a stream
   * (END_STREAM) before the reset it is asked to send, which is a body its client declared whole.
   */
  const http2Upload =
    (code: number, fields: [string, string][] = [], settings = Buffer.alloc(0)): CutUpload =>
    async (path, token) => {
      const head: [string, string][] = [[':method', 'POST'], [':scheme', 'https'], [':path', path], [':authority', new URL(gateway.url).host], ['content-type', 'application/json'], ['authorization', `Bearer ${token}`], ...fields];
      const { socket } = await holdRawHttp2(gateway.url, certificate.cert, settings, [
        frame(FRAME.headers, FLAG.endHeaders, 1, Buffer.concat(head.map(([name, value]) => hpackLiteral(name, value)))),
        frame(FRAME.data, 0, 1, Buffer.from('{"items": [')),
      ]);
      uploadSockets.push(socket);
      const errorCode = Buffer.alloc(4);
      errorCode.writeUInt32BE(code);
      return () => socket.write(frame(FRAME.rstStream, 0, 1, errorCode));
    };
  const http1ChunkedUpload: CutUpload = async (path, token) => {
    const socket = tls.connect({ host: '127.0.0.1', port: Number(new URL(gateway.url).port), ca: certificate.cert, ALPNProtocols: ['http/1.1'], servername: 'localhost' });
    socket.on('error', () => undefined);
    await new Promise((resolve) => socket.once('secureConnect', resolve));
    uploadSockets.push(socket);
    socket.write(`POST ${path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n{"items": [\r\n`);
    return () => socket.destroy();
  };

  /** SETTINGS_INITIAL_WINDOW_SIZE 0: the gateway may send no byte of an answer on the client's streams. */
  const noWindow = Buffer.from([0x00, 0x04, 0x00, 0x00, 0x00, 0x00]);

  it.each([
    { desc: 'an HTTP/2 stream reset with CANCEL', start: http2Upload(http2.constants.NGHTTP2_CANCEL), answerFirst: false },
    { desc: 'an HTTP/2 stream reset with NO_ERROR', start: http2Upload(http2.constants.NGHTTP2_NO_ERROR), answerFirst: false },
    // The service answers while it reads, and the client takes none of it: Node keeps the stream open (its side not
    // finished) past the request's 'end', and the body without Content-Length went on with its last chunk.
    { desc: 'an HTTP/2 stream reset with NO_ERROR during an answer its client holds back', start: http2Upload(http2.constants.NGHTTP2_NO_ERROR, [], noWindow), answerFirst: true },
    { desc: 'an HTTP/2 stream reset with CANCEL during an answer its client holds back', start: http2Upload(http2.constants.NGHTTP2_CANCEL, [], noWindow), answerFirst: true },
    { desc: 'an HTTP/2 stream reset with CANCEL, content-length declared', start: http2Upload(http2.constants.NGHTTP2_CANCEL, [['content-length', '100']]), answerFirst: false },
    // Node's HTTP/1 parser never ends such a body ('aborted' and 'error', no 'end').
    { desc: 'an HTTP/1.1 connection closed mid-chunked-body', start: http1ChunkedUpload, answerFirst: false },
  ])('never hands the service an upload its client cut short as a complete request ($desc): the service sees it aborted', async ({ desc, start, answerFirst }) => {
    const path = `/orders/record-upload?${answerFirst ? 'answer-first&' : ''}cut=${encodeURIComponent(desc)}`;
    const attemptsBefore = await clientClosedAttempts();
    try {
      const leave = await start(`/api${path}`, await signToken());
      // The gateway is forwarding the body: the service has its start.
      await waitFor(() => (recordedUploads.get(path)?.received ?? 0) > 0, 'the start of the body at the service');
      leave();
      const recorded = recordedUploads.get(path)!;
      await waitFor(() => recorded.ended || recorded.aborted, 'the service to see the upload end or break off');
      expect(recorded).toMatchObject({ ended: false, aborted: true });
      // The client's doing: logged 499, the attempt recorded client_closed, not the instance's failure.
      await waitFor(() => gatewayLog.some((line) => line.message === ACCESS_LINE_MESSAGE && line.url === `/api${path}`), 'the access line');
      expect(gatewayLog.find((line) => line.message === ACCESS_LINE_MESSAGE && line.url === `/api${path}`)).toMatchObject({ status: 499, error_code: null });
      await waitFor(async () => (await clientClosedAttempts()) > attemptsBefore, 'the attempt to be recorded client_closed');
    } finally {
      for (const socket of uploadSockets.splice(0)) socket.destroy();
    }
  });

  it.each([
    { desc: 'CANCEL', code: http2.constants.NGHTTP2_CANCEL },
    // Code 0 is as cheap to send and costs the gateway the same: it was taken for a stream that ended normally.
    { desc: 'NO_ERROR', code: http2.constants.NGHTTP2_NO_ERROR },
  ])('closes an HTTP/2 connection whose client resets stream after stream before the answer (rapid reset, RST_STREAM $desc), and keeps serving others', async ({ code }) => {
    const logFrom = gatewayLog.length;
    const closedByGateway = nextSessionClosedByGateway(gateway);
    const attacker = await connectH2(gateway.url, certificate.cert);
    attacker.on('error', () => undefined);
    const token = await loginOver(attacker);
    let closed = false;
    attacker.once('close', () => (closed = true));
    let sent = 0;
    let finished = 0;
    // Well under nghttp2's own limit (about 1,000), over the gateway's budget; paced to stay within the 100
    // concurrent streams (a stream counts until it closed). Each reset comes with two completed requests, which
    // kept a share-of-streams rule from ever closing the connection.
    while (!closed && sent < RESET_STREAMS_BUDGET * 4 * 3) {
      if (sent - finished >= 60) {
        await new Promise((resolve) => setTimeout(resolve, 10));
        continue;
      }
      // A request whose body is still to come (no END_STREAM), so the gateway has it open when the reset arrives.
      const stream = attacker.request({ ':method': 'POST', ':path': '/api/orders/upload', 'content-type': 'application/json', authorization: `Bearer ${token}` }, { endStream: false });
      stream.on('error', () => undefined);
      // HEADERS and a byte out, then RST_STREAM at once: the server has the stream to process, the client wants nothing back.
      stream.write('{', () => stream.close(code));
      stream.once('close', () => finished++);
      for (const padding of [attacker.request({ ':path': '/health' }), attacker.request({ ':path': '/health' })]) {
        padding.on('error', () => undefined);
        padding.resume();
        padding.once('close', () => finished++);
      }
      sent += 3;
    }
    await waitFor(closedByGateway, 'the gateway to close the attacking connection', 10_000).catch(() => undefined);
    expect(closedByGateway()).toBe(true);
    // Closed for its resets (not as an idle connection), after at most the budget and the streams in flight.
    expect(gatewayLog.slice(logFrom).some((line) => line.message === 'closed an HTTP/2 connection that reset too many of its streams')).toBe(true);
    const fresh = await connectH2(gateway.url, certificate.cert);
    try {
      expect((await h2Request(fresh, { ':path': '/health' })).status).toBe(200);
    } finally {
      fresh.close();
      attacker.destroy();
    }
  });

  // Node's compatibility response took no notice of a HEAD's stream closing before its end(), nor marked the stream
  // aborted: every one of them went to the service, and with NO_ERROR none counted against the budget.
  it('closes an HTTP/2 connection whose client sends HEAD after HEAD and resets each with NO_ERROR before the answer, forwarding none', async () => {
    const logFrom = gatewayLog.length;
    const closedByGateway = nextSessionClosedByGateway(gateway);
    const attacker = await connectH2(gateway.url, certificate.cert);
    attacker.on('error', () => undefined);
    const token = await loginOver(attacker);
    let closed = false;
    attacker.once('close', () => (closed = true));
    let sent = 0;
    while (!closed && sent < RESET_STREAMS_BUDGET * 3) {
      const stream = attacker.request({ ':method': 'HEAD', ':path': `/api/orders/upload?head-reset-${sent}`, authorization: `Bearer ${token}` });
      stream.on('error', () => undefined);
      stream.close(http2.constants.NGHTTP2_NO_ERROR);
      sent++;
      if (sent % 20 === 0) await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await waitFor(closedByGateway, 'the gateway to close the attacking connection', 10_000).catch(() => undefined);
    expect(closedByGateway()).toBe(true);
    expect(gatewayLog.slice(logFrom).some((line) => line.message === 'closed an HTTP/2 connection that reset too many of its streams')).toBe(true);
    // Each was reset as the service would have got it: every one reached it before (some may still, by a race).
    expect([...upstreamOpen.keys()].filter((url) => url.includes('head-reset')).length).toBeLessThan(RESET_STREAMS_BUDGET / 2);
    const fresh = await connectH2(gateway.url, certificate.cert);
    try {
      expect((await h2Request(fresh, { ':path': '/health' })).status).toBe(200);
    } finally {
      fresh.close();
      attacker.destroy();
    }
  });

  it('counts no completed request against the rapid-reset budget, uploads answered before their end included', async () => {
    const session = await connectH2(gateway.url, certificate.cert);
    session.on('error', () => undefined);
    try {
      // Three times the budget, in batches within the concurrent-stream limit: GETs, and uploads the gateway answers
      // 401 while their body is still coming, each stream closed once its answer was read.
      const upload = () =>
        new Promise<{ status: number }>((resolve) => {
          const stream = session.request({ ':method': 'POST', ':path': '/api/orders/upload', 'content-type': 'application/json' }, { endStream: false });
          let status = 0;
          stream.on('error', () => undefined);
          stream.on('response', (headers) => (status = Number(headers[':status'])));
          stream.on('end', () => stream.end());
          stream.on('close', () => resolve({ status }));
          stream.write('{');
          stream.resume();
        });
      for (let batch = 0; batch < 6; batch++) {
        const replies = await Promise.all(Array.from({ length: RESET_STREAMS_BUDGET / 2 }, (_, index) => (index % 2 === 0 ? h2Request(session, { ':path': '/health' }) : upload())));
        expect(new Set(replies.map((reply) => reply.status))).toEqual(new Set([200, 401]));
      }
      expect(session.closed || session.destroyed).toBe(false);
      expect((await h2Request(session, { ':path': '/health' })).status).toBe(200);
    } finally {
      session.destroy();
    }
  });

  it('resets the stream of a response the service broke off mid-body (a clean end would pass a truncated 200 for the answer)', async () => {
    const session = await connectH2(gateway.url, certificate.cert);
    session.on('error', () => undefined);
    try {
      const token = await loginOver(session);
      const outcome = await new Promise<string>((resolve) => {
        const stream = session.request({ ':path': '/api/orders/die-mid-body', authorization: `Bearer ${token}` });
        stream.on('data', () => undefined);
        stream.on('end', () => resolve('ended'));
        stream.on('error', () => resolve(`reset ${stream.rstCode}`));
        stream.on('close', () => resolve(stream.rstCode ? `reset ${stream.rstCode}` : 'closed'));
      });
      expect(outcome).toBe(`reset ${http2.constants.NGHTTP2_INTERNAL_ERROR}`);
    } finally {
      session.destroy();
    }
  });

  it('counts none of its own resets against the client\'s rapid-reset budget (a service dying mid-body 100 times closed its clients)', async () => {
    const session = await connectH2(gateway.url, certificate.cert);
    session.on('error', () => undefined);
    try {
      const token = await loginOver(session);
      const cutOne = () =>
        new Promise<number | undefined>((resolve) => {
          const stream = session.request({ ':path': '/api/orders/die-mid-body', authorization: `Bearer ${token}` });
          stream.on('data', () => undefined);
          stream.on('error', () => undefined);
          stream.on('close', () => resolve(stream.rstCode));
        });
      const codes: (number | undefined)[] = [];
      for (let batch = 0; batch < 6; batch++) codes.push(...(await Promise.all(Array.from({ length: 20 }, cutOne))));
      expect(new Set(codes)).toEqual(new Set([http2.constants.NGHTTP2_INTERNAL_ERROR]));
      // 120 cuts of the gateway's own: the connection serves on (it was closed with ENHANCE_YOUR_CALM after 100).
      expect(session.closed || session.destroyed).toBe(false);
      expect((await h2Request(session, { ':path': '/health' })).status).toBe(200);
    } finally {
      session.destroy();
    }
  });

  it('resets the stream of an answer a client holds back with a window of 0 past sendTimeoutMs, and records why', async () => {
    // A flow-control window of 0: HEADERS go out, the body never can; PINGs would keep the session timer away for good.
    const session = await connectH2(gateway.url, certificate.cert, { initialWindowSize: 0 });
    session.on('error', () => undefined);
    try {
      const outcome = await new Promise<{ status?: number; rstCode?: number }>((resolve) => {
        const stream = session.request({ ':path': '/api/nothing-here', [HEADER.requestId]: 'h2-window-0' });
        let status: number | undefined;
        stream.on('response', (headers) => (status = Number(headers[':status'])));
        stream.on('error', () => undefined);
        stream.on('close', () => resolve({ status, rstCode: stream.rstCode }));
      });
      expect(outcome).toEqual({ status: 404, rstCode: http2.constants.NGHTTP2_CANCEL });
      await waitFor(() => gatewayLog.some((line) => line.message === ACCESS_LINE_MESSAGE && line.request_id === 'h2-window-0'), 'the access line');
      expect(gatewayLog.filter((line) => line.message === ACCESS_LINE_MESSAGE && line.request_id === 'h2-window-0')).toEqual([expect.objectContaining({ status: 404, error_code: 'client_read_timeout' })]);
    } finally {
      session.destroy();
    }
  });

  it('closes an idle HTTP/2 connection after keepAliveTimeoutMs, as HTTP/1.1 (it stayed open for the whole-request timeout)', async () => {
    const idle = await connectH2(gateway.url, certificate.cert);
    idle.on('error', () => undefined);
    let closed = false;
    idle.once('close', () => (closed = true));
    expect((await h2Request(idle, { ':path': '/health' })).status).toBe(200);
    await waitFor(() => closed, 'the idle connection to be closed', short.keepAliveMs * 3).catch(() => undefined);
    expect(closed).toBe(true);
    idle.destroy();
  });

  it('closes a connection asked to close (idle) whose client answers no FIN and leaves a header block unfinished (HEADERS without END_HEADERS): it held its slot for good', async () => {
    const accepted = nextAccepted(gateway.server);
    const { socket, received } = await holdRawHttp2(gateway.url, certificate.cert, Buffer.alloc(0));
    socket.on('error', () => undefined);
    const gatewaySide = await accepted;
    try {
      await waitFor(() => received.includes(FRAME.goaway), 'the idle close (GOAWAY)', short.keepAliveMs * 5);
      // A request head begun after the GOAWAY and never finished: no CONTINUATION follows.
      const head = Buffer.concat([hpackLiteral(':method', 'GET'), hpackLiteral(':scheme', 'https'), hpackLiteral(':path', '/health')]);
      socket.write(frame(FRAME.headers, FLAG.endStream, 1, head));
      expect(await closedWithin(gatewaySide, HTTP2_CLOSE_GRACE_MS + 5_000)).toBe(true);
    } finally {
      socket.destroy();
    }
  });

  it('warns once of a connection whose every stream its client held back, and closes it though the client reads nothing more (the warning came every second, the connection stayed)', async () => {
    const logFrom = gatewayLog.length;
    const heldBack = () => gatewayLog.slice(logFrom).filter((line) => line.message === 'closed an HTTP/2 connection whose every stream its client held back');
    // Windows as large as HTTP/2 allows, so the endless answer fills every buffer up to the client's socket; then
    // the client stops reading: the gateway's RST_STREAM and GOAWAY wait behind bytes that never leave.
    const largest = 2 ** 31 - 1;
    const settings = Buffer.alloc(6);
    settings.writeUInt16BE(0x4, 0);
    settings.writeUInt32BE(largest, 2);
    const increment = Buffer.alloc(4);
    increment.writeUInt32BE(largest - 65_535);
    const { host } = new URL(gateway.url);
    const head = [[':method', 'GET'], [':scheme', 'https'], [':path', '/api/orders/download?client=held-back'], [':authority', host], ['authorization', `Bearer ${await signToken()}`]];
    const request = frame(FRAME.headers, FLAG.endStream | FLAG.endHeaders, 1, Buffer.concat(head.map(([name, value]) => hpackLiteral(name!, value!))));
    const accepted = nextAccepted(gateway.server);
    const { socket, received } = await holdRawHttp2(gateway.url, certificate.cert, settings, [frame(FRAME.windowUpdate, 0, 0, increment), request]);
    socket.on('error', () => undefined);
    const gatewaySide = await accepted;
    try {
      await waitFor(() => received.includes(FRAME.data), 'the answer to start');
      socket.pause();
      await waitFor(() => heldBack().length > 0, 'the held-back warning', 10_000);
      expect(await closedWithin(gatewaySide, HTTP2_CLOSE_GRACE_MS + 5_000)).toBe(true);
      expect(heldBack()).toHaveLength(1);
    } finally {
      socket.destroy();
    }
  });

  it('closes a TCP connection that never starts its TLS handshake once the head timeout passed (it held a connection slot for good)', async () => {
    const { port } = new URL(gateway.url);
    const socket = net.connect(Number(port), '127.0.0.1');
    socket.on('error', () => undefined);
    const received: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    const closed = new Promise<boolean>((resolve) => {
      socket.once('close', () => resolve(true));
      setTimeout(() => resolve(false), short.headersMs * 10).unref();
    });
    expect(await closed).toBe(true);
    // Nothing in plain HTTP is written into a TLS connection.
    expect(Buffer.concat(received).toString('latin1')).not.toContain('HTTP/1.1');
    socket.destroy();
  });
});

describe('HTTP/2 clients that read slowly', () => {
  let certificate: TestCertificate;
  let stack: TestStack;
  let gateway: RunningServer;
  let gatewayLog: Record<string, unknown>[];
  let service: http.Server;
  const SEND_MS = 1000;
  const accessLine = (requestId: string) => gatewayLog.find((line) => line.message === ACCESS_LINE_MESSAGE && line.request_id === requestId);

  beforeAll(async () => {
    certificate = makeCertificate();
    // A service as Node makes one, closing a connection idle for its keep-alive timeout (5 s by default, short
    // here): once it has written a whole answer, a connection the gateway stopped reading is idle to it.
    service = http.createServer((req, res) => {
      if (diedMidBody(req, res)) return;
      const size = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('size') ?? 1000);
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size), 'cache-control': 'no-store' });
      res.end(Buffer.alloc(size, 'x'));
    });
    service.keepAliveTimeout = 100;
    await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve));
    stack = await startStack({
      serviceUrls: { orders: `http://127.0.0.1:${(service.address() as { port: number }).port}` },
      env: { RATE_LIMIT_MAX: '100000' },
      overrides: {
        tls: { certFile: certificate.certFile, keyFile: certificate.keyFile },
        proxy: { timeoutMs: 60_000, deadlineMs: 120_000 },
        // One failure ejects the only instance: any blame shows as a 503 for the next request.
        services: { users: { url: 'http://placeholder' }, orders: { url: 'http://placeholder', ejectAfterFailures: 1 }, notifications: { url: 'http://placeholder' } },
      },
    });
    const { logger, lines } = memoryLogger('gateway');
    gatewayLog = lines;
    gateway = await runServer({ app: createGatewayApps(stack.config, { logger, metrics: false }).gateway, name: 'gateway', port: 0, host: '127.0.0.1', logger, timeouts: TIMEOUTS, createServer: createTlsServer({ tls: stack.config.tls!, timeouts: TIMEOUTS, sendTimeoutMs: SEND_MS, logger }).create });
  });
  afterAll(async () => {
    service?.closeAllConnections();
    await new Promise((resolve) => service?.close(resolve));
    await gateway?.close();
    await stack?.close();
  });

  /** `use` on a new HTTP/2 connection to the gateway, closed after it whatever happens. */
  const inSession = async <T>(use: (session: http2.ClientHttp2Session) => Promise<T>, settings?: http2.Settings): Promise<T> => {
    const session = await connectH2(gateway.url, certificate.cert, settings);
    session.on('error', () => undefined);
    try {
      return await use(session);
    } finally {
      session.destroy();
    }
  };

  /** A normal request to the orders service on a new connection: 503 once the instance is ejected. */
  const ordersStatus = () => inSession(async (session) => (await h2Request(session, { ':path': '/api/orders/small', authorization: `Bearer ${await signToken()}` })).status);

  it('resets a stream held back with a window of 0 though the client keeps its connection busy with PINGs (they counted as the stream\'s progress)', async () => {
    await inSession(async (session) => {
      const pings = setInterval(() => session.ping(() => undefined), 40);
      const started = performance.now();
      const rstCode = await new Promise<number>((resolve) => {
        const stream = session.request({ ':path': '/api/nothing-here', [HEADER.requestId]: 'h2-window-0-pings' });
        stream.on('error', () => undefined);
        stream.on('close', () => resolve(stream.rstCode));
      }).finally(() => clearInterval(pings));
      expect(rstCode).toBe(http2.constants.NGHTTP2_CANCEL);
      expect(performance.now() - started).toBeLessThan(4 * SEND_MS);
      await waitFor(() => accessLine('h2-window-0-pings') !== undefined, 'the access line');
      expect(accessLine('h2-window-0-pings')).toMatchObject({ status: 404, error_code: 'client_read_timeout' });
    }, { initialWindowSize: 0 });
  });

  /**
   * A download of `size` bytes from order-service read `bytesPerTick` every 100 ms, and what arrived before the end
   * but was not read yet (a stream closes with its last bytes unread); its status and how it closed.
   */
  const downloadSteadily = (session: http2.ClientHttp2Session, size: number, requestId: string, bytesPerTick: number) =>
    new Promise<{ status?: number; received: number; rstCode: number }>((resolve) => {
      void signToken().then((token) => {
        const stream = session.request({ ':path': `/api/orders/download?size=${size}`, authorization: `Bearer ${token}`, [HEADER.requestId]: requestId });
        let status: number | undefined;
        let received = 0;
        stream.on('response', (headers) => (status = Number(headers[':status'])));
        stream.on('error', () => undefined);
        stream.pause();
        const reader = setInterval(() => {
          const chunk = stream.read(Math.min(bytesPerTick, stream.readableLength)) as Buffer | null;
          if (chunk) received += chunk.length;
        }, 100);
        stream.on('close', () => {
          clearInterval(reader);
          for (let rest = stream.read() as Buffer | null; rest !== null; rest = stream.read() as Buffer | null) received += rest.length;
          resolve({ status, received, rstCode: stream.rstCode });
        });
      });
    });

  it('gives a steady reader its whole proxied answer though the service closes its idle connection meanwhile, and blames no one', async () => {
    const size = 100_000;
    // A window of 16 KB read at 20 KB/s: 5 s for the answer, its window opened again every 400 ms or so, each time
    // longer than the service's keep-alive timeout.
    await inSession(async (session) => {
      expect(await downloadSteadily(session, size, 'h2-steady-reader', 2000)).toEqual({ status: 200, received: size, rstCode: http2.constants.NGHTTP2_NO_ERROR });
      await waitFor(() => accessLine('h2-steady-reader') !== undefined, 'the access line');
      expect(accessLine('h2-steady-reader')).toMatchObject({ status: 200, error_code: null });
      expect(await ordersStatus()).toBe(200);
    }, { initialWindowSize: 16_384 });
  });

  // Progress was counted in pieces of 16 KiB, each once all of it had gone: a reader well above the least rate
  // (240 B/s) but slower than a piece per window was reset (1.6 KB/s at the default 10 s window; 16 KB/s at this 1 s).
  it('gives a steady reader its whole answer, though no 16 KiB of it goes out in a window', async () => {
    // Past what Node takes into its buffers at once (their writes complete at once): the rest waits for the reader.
    const size = 120_000;
    // 1,000 bytes every 100 ms: 10 KB/s, under a 16 KiB piece per window of SEND_MS (1 s), through a window of 4 KB.
    await inSession(async (session) => {
      expect(await downloadSteadily(session, size, 'h2-slow-steady-reader', 1000)).toEqual({ status: 200, received: size, rstCode: http2.constants.NGHTTP2_NO_ERROR });
    }, { initialWindowSize: 4096 });
  });

  it('records client_read_timeout, not the service\'s failure, when a client leaves an answer too big to hold unread while its service closes the connection (the instance was ejected)', async () => {
    // More than the gateway holds for a client (CLIENT_BUFFER_BYTES): the service's answer is paused for it.
    await inSession(async (session) => {
      const stream = session.request({ ':path': '/api/orders/download?size=600000', authorization: `Bearer ${await signToken()}`, [HEADER.requestId]: 'h2-never-reads' });
      stream.on('error', () => undefined);
      stream.pause();
      await waitFor(() => accessLine('h2-never-reads') !== undefined, 'the access line', 10_000);
      expect(accessLine('h2-never-reads')).toMatchObject({ status: 200, error_code: 'client_read_timeout' });
      expect(await ordersStatus()).toBe(200);
    });
  });

  it('still blames a service that dies mid-body while its answer is read normally (upstream_reset, the instance ejected)', async () => {
    await inSession(async (session) => {
      const authorization = `Bearer ${await signToken()}`;
      const rstCode = await new Promise<number>((resolve) => {
        const stream = session.request({ ':path': '/api/orders/die-mid-body', authorization, [HEADER.requestId]: 'h2-dies-mid-body' });
        stream.on('error', () => undefined);
        stream.resume();
        stream.on('close', () => resolve(stream.rstCode));
      });
      expect(rstCode).toBe(http2.constants.NGHTTP2_INTERNAL_ERROR);
      await waitFor(() => accessLine('h2-dies-mid-body') !== undefined, 'the access line');
      expect(accessLine('h2-dies-mid-body')).toMatchObject({ status: 200, error_code: 'upstream_reset' });
      expect(await ordersStatus()).toBe(503);
    });
  });
});

describe('certificate files that cannot serve', () => {
  // OpenSSL alone says "key values mismatch" or "bad decrypt": the error must say which setting to fix.
  it('refuses at start-up a certificate and key that do not belong together, naming both settings', () => {
    const [one, two] = [makeCertificate(), makeCertificate()];
    const { logger } = memoryLogger('gateway');
    expect(() => createTlsServer({ tls: { certFile: one.certFile, keyFile: two.keyFile, minVersion: 'TLSv1.2' }, timeouts: TIMEOUTS, logger })).toThrow(
      new RegExp(`tls\\.certFile \\(${one.certFile}\\) and tls\\.keyFile \\(${two.keyFile}\\) are not a usable certificate and key`),
    );
  });

  it('refuses an encrypted key, saying the gateway takes no passphrase', () => {
    const certificate = makeCertificate();
    const encrypted = `${certificate.keyFile}.enc`;
    execFileSync('openssl', ['pkey', '-in', certificate.keyFile, '-aes256', '-passout', 'pass:secret', '-out', encrypted], { stdio: 'ignore', env: { PATH: process.env.PATH ?? '' } });
    const { logger } = memoryLogger('gateway');
    expect(() => createTlsServer({ tls: { certFile: certificate.certFile, keyFile: encrypted, minVersion: 'TLSv1.2' }, timeouts: TIMEOUTS, logger })).toThrow(/tls\.keyFile .*passphrase/);
  });

  it('refuses a caFile that holds no certificate (a key copied there by mistake)', () => {
    const certificate = makeCertificate();
    const { logger } = memoryLogger('gateway');
    expect(() => createTlsServer({ tls: { certFile: certificate.certFile, keyFile: certificate.keyFile, caFile: certificate.keyFile, minVersion: 'TLSv1.2' }, timeouts: TIMEOUTS, logger })).toThrow(/tls\.caFile .* holds no PEM certificate/);
  });
});

describe('HSTS is the gateway\'s own', () => {
  let certificate: TestCertificate;
  let stack: TestStack;
  let gateway: RunningServer;
  let service: Awaited<ReturnType<typeof listen>>;

  beforeAll(async () => {
    certificate = makeCertificate();
    // A service sending policies of its own: helmet's default, or max-age=0 (browsers then forget the policy).
    service = await listen((req, res) => {
      const lines = new URL(req.url ?? '/', 'http://service').searchParams.getAll('sts');
      if (lines.length > 0) res.setHeader('strict-transport-security', lines);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
    const route = { name: 'sts', prefix: '/api/sts', service: 'notifications', upstreamPath: '/sts', auth: 'public' };
    stack = await startStack({
      serviceUrls: { notifications: service.url },
      overrides: { routes: [...(shippedConfigFile().routes as unknown[]), route], tls: { certFile: certificate.certFile, keyFile: certificate.keyFile, hsts: { maxAgeSeconds: 600, includeSubDomains: true } } },
    });
    const { logger } = memoryLogger('gateway');
    gateway = await runServer({ app: createGatewayApps(stack.config, { logger, metrics: false }).gateway, name: 'gateway', port: 0, host: '127.0.0.1', logger, timeouts: TIMEOUTS, createServer: createTlsServer({ tls: stack.config.tls!, timeouts: TIMEOUTS, logger }).create });
  });
  afterAll(async () => {
    await gateway?.close();
    await stack?.close();
    await service?.close();
  });

  it.each([
    { desc: 'max-age=0', query: 'sts=max-age%3D0' },
    { desc: 'two policies', query: 'sts=max-age%3D0&sts=max-age%3D5' },
  ])('sends its policy alone when the service sends $desc (RFC 6797 6.1: one field)', async ({ query }) => {
    const reply = await h1Request(gateway.url, certificate.cert, `/api/sts/x?${query}`);
    expect(reply.status).toBe(200);
    expect(reply.headers['strict-transport-security']).toBe('max-age=600; includeSubDomains');
  });
});

describe('header fields HTTP/2 cannot carry as they came: values ending in whitespace (a service\'s or a rule\'s), repeats', () => {
  let certificate: TestCertificate;
  let stack: TestStack;
  let gateway: RunningServer;
  let service: Awaited<ReturnType<typeof listen>>;

  beforeAll(async () => {
    certificate = makeCertificate();
    // Whitespace before the line's end is no part of a value (RFC 9110 5.5); undici keeps it. 0xA0 is obs-text, a byte of the value.
    service = await listen((req, res) => {
      // Fields Node's HTTP/2 writes once, repeated (an HTTP/1.1 service may): a list, the same value twice, or two values.
      if (req.url?.startsWith('/padded/repeated')) {
        res.setHeader('content-language', ['en', 'fr']);
        res.setHeader('x-content-type-options', ['nosniff', 'nosniff']);
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
        return;
      }
      if (req.url?.startsWith('/padded/two-dates')) {
        res.setHeader('date', ['Sun, 06 Dec 2026 19:00:00 GMT', 'Sun, 06 Dec 2026 19:00:01 GMT']);
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
        return;
      }
      if (req.url?.startsWith('/padded/two-etags')) {
        res.setHeader('etag', ['"a"', '"b"']);
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain', 'x-padded': 'padded  ', 'x-tabbed': 'tabbed\t', 'x-blank': '   ', 'x-nbsp': 'a\u00a0', 'set-cookie': ['a=1 ', 'b=2'] }).end('ok');
    });
    // A rule whose placeholder is empty for this caller (no user on a public route) leaves a space at the end.
    const route = { name: 'padded', prefix: '/api/padded', service: 'notifications', upstreamPath: '/padded', auth: 'public', headers: { response: { set: { 'x-served-for': 'user {userId}' } } } };
    stack = await startStack({
      serviceUrls: { notifications: service.url },
      overrides: { routes: [...(shippedConfigFile().routes as unknown[]), route], tls: { certFile: certificate.certFile, keyFile: certificate.keyFile } },
    });
    const { logger } = memoryLogger('gateway');
    gateway = await runServer({ app: createGatewayApps(stack.config, { logger, metrics: false }).gateway, name: 'gateway', port: 0, host: '127.0.0.1', logger, timeouts: TIMEOUTS, createServer: createTlsServer({ tls: stack.config.tls!, timeouts: TIMEOUTS, logger }).create });
  });
  afterAll(async () => {
    await gateway?.close();
    await stack?.close();
    await service?.close();
  });

  // Passed on, an HTTP/2 field ending in whitespace is malformed (RFC 9113 8.2.1): nghttp reset the stream and lost
  // the answer, Node's client dropped the field.
  it('passes them to an HTTP/2 client without it, every field kept', async () => {
    const session = await connectH2(gateway.url, certificate.cert);
    try {
      const reply = await h2Request(session, { ':path': '/api/padded/x' });
      expect(reply.status).toBe(200);
      const { 'x-padded': padded, 'x-tabbed': tabbed, 'x-blank': blank, 'x-nbsp': nbsp, 'set-cookie': cookies } = reply.headers;
      expect({ padded, tabbed, blank, nbsp, cookies }).toEqual({ padded: 'padded', tabbed: 'tabbed', blank: '', nbsp: 'a\u00a0', cookies: ['a=1', 'b=2'] });
      expect(reply.headers['x-served-for']).toBe('user');
    } finally {
      session.close();
    }
  });

  // Node's HTTP/2 writes each of these once: the whole answer was 502 to an HTTP/2 client, served to an HTTP/1.1 one.
  it('makes one field of repeats that change nothing (a list joined, the same value twice), and answers 502 for two values of a field allowed once', async () => {
    const session = await connectH2(gateway.url, certificate.cert);
    try {
      const repeated = await h2Request(session, { ':path': '/api/padded/repeated' });
      expect([repeated.status, repeated.headers['content-language'], repeated.headers['x-content-type-options'], repeated.text]).toEqual([200, 'en, fr', 'nosniff', 'ok']);
      const twoEtags = await h2Request(session, { ':path': '/api/padded/two-etags' });
      expect([twoEtags.status, (JSON.parse(twoEtags.text) as ProblemBody).code]).toEqual([502, 'upstream_bad_response']);
      // HTTP/1.1 carries both lines as they came (Node's client keeps the first).
      expect((await h1Request(gateway.url, certificate.cert, '/api/padded/two-etags')).status).toBe(200);
      // Two Dates (two writers a clock tick apart) are the first one: as two values, the 502 for them could not be
      // written either (Node's HTTP/2 response keeps a `date` through removeHeader), and its throw ended the process.
      const twoDates = await h2Request(session, { ':path': '/api/padded/two-dates' });
      expect([twoDates.status, twoDates.headers.date, twoDates.text]).toEqual([200, 'Sun, 06 Dec 2026 19:00:00 GMT', 'ok']);
      expect((await h2Request(session, { ':path': '/api/padded/repeated' })).status).toBe(200);
    } finally {
      session.close();
    }
  });
});

describe('the HTTP/2 session timeout', () => {
  it.each([
    { desc: 'the whole-request limit when it is the longer', timeouts: { requestMs: 120_000, keepAliveMs: 5_000 }, expected: 120_000 },
    { desc: 'keep-alive when it is the longer', timeouts: { requestMs: 1_000, keepAliveMs: 5_000 }, expected: 5_000 },
    // Off, not keep-alive: a session timer that does not see a stream waiting for its upstream would cut it.
    { desc: 'off when the whole-request limit is off', timeouts: { requestMs: 0, keepAliveMs: 5_000 }, expected: 0 },
  ])('is $desc', ({ timeouts, expected }) => {
    expect(http2SessionTimeoutMs(timeouts)).toBe(expected);
  });
});

describe('the HTTPS redirect listener', () => {
  let redirect: RedirectListener;
  let restricted: RedirectListener;
  const health: http.RequestListener = (req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');

  beforeAll(async () => {
    redirect = await listenHttpsRedirect({ port: 0, host: '127.0.0.1', httpsPort: 8443, health, timeouts: TIMEOUTS });
    restricted = await listenHttpsRedirect({ port: 0, host: '127.0.0.1', httpsPort: 443, allowedHosts: ['api.example.com', '*.example.org'], health, timeouts: TIMEOUTS });
  });
  afterAll(async () => {
    await redirect?.close();
    await restricted?.close();
  });

  it.each([
    { desc: 'a GET with a query', method: 'GET', path: '/api/orders?page=2', host: 'api.example.com', location: 'https://api.example.com:8443/api/orders?page=2' },
    { desc: 'a POST (308 keeps method and body)', method: 'POST', path: '/api/auth/login', host: 'api.example.com', location: 'https://api.example.com:8443/api/auth/login' },
    { desc: 'a Host with a port (the HTTPS port replaces it)', method: 'GET', path: '/', host: 'api.example.com:80', location: 'https://api.example.com:8443/' },
    { desc: 'a path that only starts like /health', method: 'GET', path: '/healthz', host: 'a.example', location: 'https://a.example:8443/healthz' },
  ])('answers $desc with 308 to the HTTPS URL', async ({ method, path, host, location }) => {
    const reply = await plainRequest(redirect.url, path, { host }, method);
    expect(reply.status).toBe(308);
    expect(reply.headers.location).toBe(location);
  });

  // main.ts gives the running config's list: built once at start, a reload's new host got 421 here while HTTPS
  // served it, and a removed one was still redirected.
  it('takes the hosts a reload allows, and refuses the ones it removed', async () => {
    let hosts: readonly string[] = ['api.example.com'];
    const reloadable = await listenHttpsRedirect({ port: 0, host: '127.0.0.1', httpsPort: 443, allowedHosts: () => hosts, health, timeouts: TIMEOUTS });
    try {
      const statuses = async () => [(await plainRequest(reloadable.url, '/', { host: 'api.example.com' })).status, (await plainRequest(reloadable.url, '/', { host: 'new.example.com' })).status];
      expect(await statuses()).toEqual([308, 421]);
      hosts = ['new.example.com'];
      expect(await statuses()).toEqual([421, 308]);
    } finally {
      await reloadable.close();
    }
  });

  it('answers /health itself (load balancers probe the plain port)', async () => {
    const reply = await plainRequest(redirect.url, '/health');
    expect(reply.status).toBe(200);
    expect(reply.text).toBe('{"status":"ok"}');
  });

  it.each([
    { desc: 'a host not in allowedHosts', host: 'evil.example', status: 421 },
    { desc: 'a host that only ends like an allowed suffix', host: 'evilexample.org', status: 421 },
    { desc: 'a host with a path in it', host: 'api.example.com/@evil.example', status: 400 },
    { desc: 'a host with userinfo', host: 'api.example.com@evil.example', status: 400 },
  ])('never redirects to $desc ($status)', async ({ host, status }) => {
    const reply = await plainRequest(restricted.url, '/api/orders', { host });
    expect(reply.status).toBe(status);
    expect(reply.headers.location).toBeUndefined();
    expect(JSON.parse(reply.text)).toMatchObject({ status, requestId: reply.headers[HEADER.requestId], detail: expect.stringContaining('HTTPS') });
  });

  it('redirects an allowed host to port 443 without naming the port', async () => {
    expect((await plainRequest(restricted.url, '/x', { host: 'www.example.org' })).headers.location).toBe('https://www.example.org/x');
  });

  it('refuses a request with two Host lines (RFC 9112 3.2: 400), as the HTTPS listener does, rather than redirecting to the first', async () => {
    const { port } = new URL(restricted.url);
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(Number(port), '127.0.0.1', () => socket.write('GET /api/orders HTTP/1.1\r\nHost: api.example.com\r\nHost: evil.example\r\n\r\n'));
      let text = '';
      socket.on('data', (chunk) => (text += chunk.toString()));
      socket.on('close', () => resolve(text));
      socket.on('error', reject);
    });
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    expect(answer).not.toMatch(/^location:/im);
  });

  it('refuses an absolute-form request target rather than redirecting to its authority', async () => {
    const reply = await plainRequest(redirect.url, 'http://evil.example/steal', { host: 'api.example.com' });
    expect(reply.status).toBe(400);
    expect(reply.headers.location).toBeUndefined();
  });

  // Node sends 100 Continue before 'request' to a server without a checkContinue listener: a client then sent its
  // body (a login's credentials) in cleartext to a listener that only ever redirects it.
  it('answers a POST with Expect: 100-continue with the 308 and no 100 Continue, inviting no upload in cleartext', async () => {
    const { port } = new URL(redirect.url);
    const socket = net.connect(Number(port), '127.0.0.1');
    let received = '';
    socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
    socket.write('POST /api/auth/login HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: application/json\r\nContent-Length: 52\r\nExpect: 100-continue\r\n\r\n');
    try {
      await waitFor(() => /\r\n\r\n/.test(received), 'an answer');
      expect(received).toMatch(/^HTTP\/1\.1 308 /);
      expect(received).not.toMatch(/HTTP\/1\.1 100 /);
    } finally {
      socket.destroy();
    }
  });

  // Node checks head and request timeouts every connectionsCheckingInterval, 30 s by default: a connection that sent
  // nothing was held up to 30 s past the bound (the public listener checks every second).
  it('closes a connection that sends no request head close to its bound', async () => {
    const quick = await listenHttpsRedirect({ port: 0, host: '127.0.0.1', httpsPort: 443, health, timeouts: { headersMs: 1000, requestMs: 2000, keepAliveMs: 1000 } });
    const socket = net.connect(Number(new URL(quick.url).port), '127.0.0.1');
    let closed = false;
    socket.on('close', () => (closed = true));
    socket.on('error', () => undefined);
    // Read what comes (the 408), so the listener's close reaches this end.
    socket.resume();
    try {
      await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
      socket.write('GET / HTTP/1.1\r\nHo');
      await waitFor(() => closed, 'the idle connection to be closed', 6000);
    } finally {
      socket.destroy();
      await quick.close();
    }
  });
});

describe('certificate reload', () => {
  const presented = presentedFingerprint;

  it('takes rotated files for new connections, keeps open ones, and keeps the old certificate when the new files are broken', async () => {
    const { first, second, live } = rotatingCertificates('gateway-tls-reload-');
    const { logger, lines } = memoryLogger('gateway');
    const tlsServer: TlsServer = createTlsServer({ tls: { ...live, minVersion: 'TLSv1.2' }, timeouts: TIMEOUTS, logger });
    const server = await runServer({ app: { callback: () => (_req, res) => res.end('ok') }, name: 'gateway', port: 0, host: '127.0.0.1', logger, createServer: tlsServer.create });
    const ca = [first.cert, second.cert];
    try {
      const open = await connectH2(server.url, first.cert);
      expect((await h2Request(open, { ':path': '/' })).text).toBe('ok');
      expect(await presented(server.url, ca)).toBe(first.fingerprint256);

      copyFileSync(second.certFile, live.certFile);
      copyFileSync(second.keyFile, live.keyFile);
      expect(tlsServer.reloadCertificates()).toBe(true);
      expect(await presented(server.url, ca)).toBe(second.fingerprint256);
      // The connection opened before the reload is still there, on its old certificate.
      expect((await h2Request(open, { ':path': '/' })).text).toBe('ok');
      expect(open.closed || open.destroyed).toBe(false);

      // A key that does not match the certificate: refused, logged, the previous pair stays in use.
      copyFileSync(first.keyFile, live.keyFile);
      expect(tlsServer.reloadCertificates()).toBe(false);
      expect(lines.find((line) => line.message === 'tls certificates not reloaded; the previous ones stay in use')).toBeDefined();
      expect(await presented(server.url, ca)).toBe(second.fingerprint256);
      writeFileSync(live.certFile, 'not a certificate');
      expect(tlsServer.reloadCertificates()).toBe(false);
      expect(await presented(server.url, ca)).toBe(second.fingerprint256);
      open.close();
    } finally {
      await server.close();
    }
  });

  it('refuses a rotation to an expired or not yet valid certificate (every verifying client would fail), and warns of one at start', async () => {
    const { directory, first, live } = rotatingCertificates('gateway-tls-dated-');
    const { logger, lines } = memoryLogger('gateway');
    const tlsServer: TlsServer = createTlsServer({ tls: { ...live, minVersion: 'TLSv1.2' }, timeouts: TIMEOUTS, logger });
    const server = await runServer({ app: { callback: () => (_req, res) => res.end('ok') }, name: 'gateway', port: 0, host: '127.0.0.1', logger, createServer: tlsServer.create });
    try {
      for (const [dated, reason] of [
        [makeCertificateValidBetween('20200101000000Z', '20200102000000Z', directory), /expired on 2020-01-02/],
        [makeCertificateValidBetween('20991231000000Z', '21000101000000Z', directory), /not valid before 2099-12-31/],
      ] as const) {
        copyFileSync(dated.certFile, live.certFile);
        copyFileSync(dated.keyFile, live.keyFile);
        const from = lines.length;
        expect(tlsServer.reloadCertificates()).toBe(false);
        expect(lines.slice(from).find((line) => line.message === 'tls certificates not reloaded; the previous ones stay in use')).toMatchObject({ error: expect.stringMatching(reason) });
        expect(await presented(server.url, [first.cert])).toBe(first.fingerprint256);
      }
      // At start the gateway cannot fall back to anything: it serves, and says so.
      const { logger: startLogger, lines: startLines } = memoryLogger('gateway');
      createTlsServer({ tls: { ...live, minVersion: 'TLSv1.2' }, timeouts: TIMEOUTS, logger: startLogger });
      expect(startLines.find((line) => line.message === 'tls certificate not valid now; verifying clients will refuse it')).toMatchObject({ level: 'warn', reason: expect.stringMatching(/not valid before/) });
    } finally {
      await server.close();
    }
  });

  it('re-reads the files on SIGHUP in the built gateway, without dropping an open HTTP/2 connection; the redirect listener answers', async () => {
    const { directory, first, second, live } = rotatingCertificates('gateway-tls-sighup-');
    const configFile = path.join(directory, 'gateway.config.json');
    writeFileSync(configFile, JSON.stringify({ ...shippedConfigFile(), tls: { ...live, redirectHttpPort: 0, hsts: { maxAgeSeconds: 60 } } }));
    const gateway = spawnGateway({ GATEWAY_CONFIG: configFile, HOST: '127.0.0.1' });
    try {
      const started = await gateway.waitForLine('gateway listening');
      const origin = String(started.url);
      expect(origin).toMatch(/^https:\/\//);
      const redirectLine = await gateway.waitForLine('https redirect listener started');
      const redirected = await plainRequest(String(redirectLine.url), '/api/orders', { host: 'localhost' });
      expect(redirected.status).toBe(308);
      expect(redirected.headers.location).toBe(`https://localhost:${new URL(origin).port}/api/orders`);

      const ca = [first.cert, second.cert];
      const open = await connectH2(origin, first.cert);
      const before = await h2Request(open, { ':path': '/health' });
      expect(before.status).toBe(200);
      expect(before.headers['strict-transport-security']).toBe('max-age=60');
      expect(await presented(origin, ca)).toBe(first.fingerprint256);

      copyFileSync(second.certFile, live.certFile);
      copyFileSync(second.keyFile, live.keyFile);
      gateway.child.kill('SIGHUP');
      await gateway.waitForLine('tls certificates reloaded');
      expect(await presented(origin, ca)).toBe(second.fingerprint256);
      expect((await h2Request(open, { ':path': '/health' })).status).toBe(200);
      open.close();
    } finally {
      gateway.child.kill('SIGTERM');
      await exitOf(gateway.child);
    }
  });
});

describe('HTTP/2 at the drain bound', () => {
  /**
   * The gateway over TLS in front of `service`, with a 300 ms drain bound, and one HTTP/2 request to it (id
   * `requestId`) in flight; `atFlush()` is its access line's [status, error_code] as onShutdown found it.
   */
  async function drainingGateway(service: { url: string }, requestId: string, method = 'GET') {
    const certificate = makeCertificate();
    const config = testConfig({ users: service.url, orders: service.url, notifications: service.url }, { tls: { certFile: certificate.certFile, keyFile: certificate.keyFile } });
    const { logger, lines } = memoryLogger('gateway');
    let atFlush: unknown;
    const gateway = await runServer({
      app: createGatewayApps(config, { logger, metrics: false }).gateway,
      name: 'gateway',
      port: 0,
      host: '127.0.0.1',
      logger,
      timeouts: TIMEOUTS,
      drainTimeoutMs: 300,
      createServer: createTlsServer({ tls: config.tls!, timeouts: TIMEOUTS, logger }).create,
      onShutdown: async () => {
        const line = lines.find((each) => each.message === ACCESS_LINE_MESSAGE && each.request_id === requestId);
        atFlush = [line?.status, line?.error_code];
      },
    });
    const session = await connectH2(gateway.url, certificate.cert);
    const token = await signToken({ subject: '2', claims: { role: 'user', email: 'bob@example.com' } });
    const stream = session.request({ ':method': method, ':path': '/api/orders/1', authorization: `Bearer ${token}`, [HEADER.requestId]: requestId });
    stream.on('error', () => undefined);
    return { gateway, session, stream, atFlush: () => atFlush };
  }

  it('answers a stream whose answer has not started by the drain bound with 503 shutting_down and its request id, as HTTP/1.1 (it used to be cut)', async () => {
    // A service that never answers: the request is still waiting when the drain bound passes.
    const arrived: string[] = [];
    const silent = await listen((req) => void arrived.push(String(req.headers[HEADER.requestId])));
    const { gateway, session, stream, atFlush } = await drainingGateway(silent, 'h2-drain-unanswered');
    try {
      const answer = new Promise<{ headers: http2.IncomingHttpHeaders; body: string }>((resolve) => {
        let body = '';
        let headers: http2.IncomingHttpHeaders = {};
        stream.on('response', (received) => (headers = received));
        stream.on('data', (chunk: Buffer) => (body += chunk.toString()));
        stream.on('close', () => resolve({ headers, body }));
      });
      await waitFor(() => arrived.includes('h2-drain-unanswered'), 'the request to reach the silent service');
      await gateway.close();
      const { headers, body } = await answer;
      expect([headers[':status'], headers['retry-after']]).toEqual([503, '1']);
      expect(JSON.parse(body)).toMatchObject({ status: 503, code: 'shutting_down', requestId: 'h2-drain-unanswered' });
      expect(atFlush()).toEqual([503, 'shutting_down']);
    } finally {
      session.destroy();
      await silent.close();
    }
  });

  it('answers a HEAD stream whose answer has not started by the drain bound with the 503 head (its body reset the stream, then the connection closed under it)', async () => {
    const arrived: string[] = [];
    const silent = await listen((req) => void arrived.push(String(req.headers[HEADER.requestId])));
    const { gateway, session, stream, atFlush } = await drainingGateway(silent, 'h2-drain-head', 'HEAD');
    try {
      const answer = new Promise<http2.IncomingHttpHeaders>((resolve) => {
        let headers: http2.IncomingHttpHeaders = {};
        stream.on('response', (received) => (headers = received));
        stream.on('close', () => resolve(headers));
      });
      await waitFor(() => arrived.includes('h2-drain-head'), 'the request to reach the silent service');
      await gateway.close();
      const headers = await answer;
      expect([headers[':status'], headers['retry-after'], headers[HEADER.requestId]]).toEqual([503, '1', 'h2-drain-head']);
      expect(atFlush()).toEqual([503, 'shutting_down']);
    } finally {
      session.destroy();
      await silent.close();
    }
  });

  it('records a stream still answering at the drain bound as cut by the gateway (shutting_down), not as a client that left', async () => {
    // A service that sends its head and a first chunk, then nothing more.
    const stalled = await listen((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first chunk');
    });
    const { gateway, session, stream, atFlush } = await drainingGateway(stalled, 'h2-drain-1');
    try {
      await new Promise((resolve) => stream.once('response', resolve));
      await gateway.close();
      expect(atFlush()).toEqual([200, 'shutting_down']);
    } finally {
      session.destroy();
      await stalled.close();
    }
  });
});

/**
 * The session timer (Node's, `http2SessionTimeoutMs`) and HTTP/1.1's socket timer on the TLS listener see frames and
 * bytes, not a request waiting for its service: a route whose `timeoutMs`/`deadlineMs` outlast the whole-request limit
 * (which bounds the client's sending, not the service's answering) had its connection destroyed under it, every
 * other stream of the HTTP/2 connection with it, where the plain listener gave the answer.
 */
describe('a request waiting for its service longer than the TLS listener’s connection timers', () => {
  const SHORT = { headersMs: 500, requestMs: 1000, keepAliveMs: 500 };
  let certificate: TestCertificate;
  let stack: TestStack;
  let gateway: RunningServer;
  let service: http.Server;

  beforeAll(async () => {
    certificate = makeCertificate();
    service = http.createServer((_req, res) => {
      setTimeout(() => res.writeHead(200, { 'content-type': 'application/json' }).end('{"late":true}'), 2500).unref();
    });
    await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve));
    stack = await startStack({
      serviceUrls: { orders: `http://127.0.0.1:${(service.address() as { port: number }).port}` },
      overrides: { tls: { certFile: certificate.certFile, keyFile: certificate.keyFile }, proxy: { timeoutMs: 10_000, deadlineMs: 20_000 } },
    });
    const { logger } = memoryLogger('gateway');
    gateway = await runServer({ app: createGatewayApps(stack.config, { logger, metrics: false }).gateway, name: 'gateway', port: 0, host: '127.0.0.1', logger, timeouts: SHORT, createServer: createTlsServer({ tls: stack.config.tls!, timeouts: SHORT, logger }).create });
  });
  afterAll(async () => {
    service?.closeAllConnections();
    await new Promise((resolve) => service?.close(resolve));
    await gateway?.close();
    await stack?.close();
  });

  it('gets its answer over HTTP/2', async () => {
    const session = await connectH2(gateway.url, certificate.cert);
    session.on('error', () => undefined);
    try {
      const reply = await h2Request(session, { ':path': '/api/orders/slow', authorization: `Bearer ${await signToken()}` });
      expect([reply.status, reply.text]).toEqual([200, '{"late":true}']);
    } finally {
      session.destroy();
    }
  });

  it('gets its answer over HTTP/1.1', async () => {
    const reply = await h1Request(gateway.url, certificate.cert, '/api/orders/slow', { authorization: `Bearer ${await signToken()}` });
    expect([reply.status, reply.text]).toEqual([200, '{"late":true}']);
  });
});

describe('bodies read before the service is asked, over HTTP/2', () => {
  let certificate: TestCertificate;
  let stack: TestStack;
  let gateway: RunningServer;
  let gatewayLog: Record<string, unknown>[];
  const registrations = (name: string) => stack.users.requests.filter((request) => request.method === 'POST' && request.url === '/users' && request.headers[HEADER.requestId] === name);

  beforeAll(async () => {
    certificate = makeCertificate();
    const routes = (shippedConfigFile().routes as { name: string }[]).map((route) => (route.name === 'register' ? { ...route, rateLimit: { max: 100_000, windowMs: 60_000 } } : route));
    stack = await startStack({ overrides: { routes, tls: { certFile: certificate.certFile, keyFile: certificate.keyFile } } });
    const { logger, lines } = memoryLogger('gateway');
    gatewayLog = lines;
    gateway = await runServer({ app: createGatewayApps(stack.config, { logger, metrics: false }).gateway, name: 'gateway', port: 0, host: '127.0.0.1', logger, timeouts: TIMEOUTS, createServer: createTlsServer({ tls: stack.config.tls!, timeouts: TIMEOUTS, logger }).create });
  });
  afterAll(async () => {
    await gateway?.close();
    await stack?.close();
  });

  // HTTP/2 frames a body without Content-Length; read whole, it goes to the service with its length.
  it('reads a body of unknown length whole, in however many DATA frames, and sends it with its length', async () => {
    const session = await connectH2(gateway.url, certificate.cert);
    try {
      const body = JSON.stringify({ name: 'Framed', email: 'framed@example.com', password: 'long enough' });
      const reply = await new Promise<number>((resolve, reject) => {
        const stream = session.request({ ':method': 'POST', ':path': '/api/auth/register', 'content-type': 'application/json', [HEADER.requestId]: 'h2-framed' }, { endStream: false });
        stream.on('response', (headers) => resolve(Number(headers[':status'])));
        stream.on('error', reject);
        stream.write(body.slice(0, 10));
        setImmediate(() => stream.end(body.slice(10)));
      });
      expect(reply).toBe(201);
      expect(registrations('h2-framed').map((request) => request.headers['content-length'])).toEqual([String(Buffer.byteLength(body))]);
    } finally {
      session.close();
    }
  });

  // Node's compatibility API ends a request whose stream was reset with NO_ERROR as if it were whole ('aborted', then
  // 'end'): read ahead, it must not go to the service as a complete registration.
  it.each([
    { desc: 'CANCEL', code: http2.constants.NGHTTP2_CANCEL },
    { desc: 'NO_ERROR', code: http2.constants.NGHTTP2_NO_ERROR },
  ])('asks the service nothing for a body whose stream its client reset mid-way (RST_STREAM $desc)', async ({ desc, code }) => {
    const requestId = `h2-reset-${desc}`;
    const head: [string, string][] = [[':method', 'POST'], [':scheme', 'https'], [':path', '/api/auth/register'], [':authority', new URL(gateway.url).host], ['content-type', 'application/json'], [HEADER.requestId, requestId]];
    const { socket } = await holdRawHttp2(gateway.url, certificate.cert, Buffer.alloc(0), [
      frame(FRAME.headers, FLAG.endHeaders, 1, Buffer.concat(head.map(([name, value]) => hpackLiteral(name, value)))),
      frame(FRAME.data, 0, 1, Buffer.from('{"name":"Reset","email":"reset@example.com"')),
    ]);
    try {
      const errorCode = Buffer.alloc(4);
      errorCode.writeUInt32BE(code);
      socket.write(frame(FRAME.rstStream, 0, 1, errorCode));
      const line = () => gatewayLog.find((entry) => entry.message === ACCESS_LINE_MESSAGE && entry.request_id === requestId);
      await waitFor(() => line() !== undefined, 'the access line of the reset stream');
      expect(line()).toMatchObject({ status: 499 });
      expect(registrations(requestId)).toEqual([]);
    } finally {
      socket.destroy();
    }
  });
});
