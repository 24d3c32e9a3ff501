import { readFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import path from 'node:path';
import type { Socket } from 'node:net';
import { randomBytes, X509Certificate } from 'node:crypto';
import { createSecureContext, type SecureContextOptions, type TLSSocket } from 'node:tls';
import type { Logger } from '../otel/logger';
import { answerHttp2RequestTimeout, createSendWindows, DEFAULT_SEND_TIMEOUT_MS, fieldLineCount, listenInternal, markServerAnswer, resetByGateway, resetStream, stopRequestOnceAnswered, type ConnectionBounds, type PublicServer } from '../otel/lifecycle';
import type { TlsConfig } from './config';
import { createHostMatcher } from './middleware/host-guard';
import { isHttp2Request } from './middleware/http2-requests';
import { mintRequestId } from './middleware/request-id';
import { countSentBytes } from './http2-sent-bytes';

/**
 * TLS termination on the public port: one `http2.createSecureServer` that offers `h2` and `http/1.1` by ALPN
 * (`allowHTTP1`), so HTTP/2 clients get multiplexing and everything else keeps working. Koa runs on Node's
 * HTTP/2 compatibility API; what differs from HTTP/1 in the pipeline (pseudo-headers, bodies without a length)
 * is settled in src/middleware/http2-requests.ts and src/upstream-headers.ts.
 */

/**
 * HTTP/2 bounds, each the HTTP/1 listener's where one exists, so no limit can be dodged by switching protocol.
 * Header block: Node's HTTP/1 `maxHeaderSize` (16 KiB unless --max-http-header-size) also bounds what HPACK
 * may decompress to, and CONTINUATION frames that pile past it end the session (CVE-2024-27983 was fixed
 * in Node itself; this keeps the bound small). Streams: 100 at once per connection (RFC 9113 6.5.2 suggests
 * no fewer); Node's default is unlimited.
 */
export const HTTP2_LIMITS = {
  maxConcurrentStreams: 100,
  /**
   * The header list a request may carry, counted as HTTP/1.1 would carry it (name and value octets plus 4 per field),
   * checked by the pipeline (src/middleware/http2-requests.ts: 431 problem+json with a request id, logged and traced). nghttp2
   * only applies its own bound once the client acknowledged the SETTINGS that announce it, so a stream sent
   * at once on a new session got past it; and what it refuses it resets unseen.
   */
  maxHeaderListSize: http.maxHeaderSize,
  /** What nghttp2 itself refuses (the stream reset, ENHANCE_YOUR_CALM): twice the list, a memory bound only. */
  hardHeaderListSize: 2 * http.maxHeaderSize,
  /**
   * Header fields per request, pseudo-headers included: as many as the hard list size can hold (Node counts 32
   * octets per field beside its name and value). Past some 850 tiny fields (`x-1: 1`, ...) the hard size or this
   * count resets the stream that HTTP/1.1 would serve (its 2,000 fields): the pipeline's 431 counts 4 octets a field. Node's
   * default, 128, reset the stream of a request whose Cookie came as crumbs (RFC 9113 8.2.3: one field per cookie,
   * as Firefox sends it) past some 120 cookies, a request HTTP/1.1 serves in one line.
   */
  maxHeaderListPairs: Math.floor((2 * http.maxHeaderSize) / 33),
  /**
   * Per-session buffers (HPACK tables, queued frames, header lists being received), MB; beyond it new streams are
   * refused (Node's default). Before a client acknowledges the SETTINGS nghttp2 applies no header list size, and
   * HPACK lets a few KB name one 4 KB dynamic-table entry hundreds of times (MiBs decoded; Node's own cap is 16 MiB a
   * list): this bound is what then resets the streams (ENHANCE_YOUR_CALM), a few lists into the connection, before
   * the pipeline's 431. Measured: 50 connections of 100 such streams each raised RSS by ~1 MiB a connection.
   */
  maxSessionMemoryMb: 10,
  /** Invalid frames tolerated per session before it is closed (Node's default is 1000). */
  maxSessionInvalidFrames: 100,
  /** Streams the server may refuse per session (RST_STREAM flood, rapid reset) before closing it (Node's default). */
  maxSessionRejectedStreams: 100,
} as const;

export interface TlsServerOptions {
  tls: TlsConfig;
  /** Client timeouts, ms, as on the plain listener: whole head, whole request, idle keep-alive. */
  timeouts: { headersMs: number; requestMs: number; keepAliveMs: number };
  /** `server.sendTimeoutMs`: how long a finished answer may wait for an HTTP/2 client to take it. Default 10 s. */
  sendTimeoutMs?: number;
  logger: Logger;
  /** Where relative file names resolve. Default the working directory. */
  cwd?: string;
  /** The pair to serve with, already read (a cluster worker gets its primary's); read from the files when absent. */
  certificates?: CertificatePems;
  /** How long one session-ticket key encrypts tickets before a new random one replaces it, ms. Default TICKET_KEY_LIFETIME_MS. */
  ticketKeyLifetimeMs?: number;
}

/**
 * How long a session-ticket key is used, ms (1 hour). A ticket carries its session's secret encrypted under the
 * server's ticket key, so whoever reads that key (a memory dump, a core file) can open every ticket it sealed: for
 * TLS 1.2 the master secret, so the traffic of the session the ticket came from and of each resumption of it (TLS
 * 1.3 resumes with a fresh key exchange, but the ticket still lets its holder resume as that session). Node makes
 * the key once per secure context and keeps it for the process's life (only a certificate reload made a new one);
 * rotating bounds what one key opens to an hour of tickets. Node holds one key, so a rotation also ends the
 * resumption of tickets issued under the last one (they live 300 s): a full handshake for those clients, once an hour.
 */
export const TICKET_KEY_LIFETIME_MS = 60 * 60 * 1000;

/**
 * A certificate, its key and the optional CA, as PEM text: what a cluster's primary reads once and hands every
 * worker (src/workers.ts). A worker that read the files itself failed to start after a rotation the gateway had
 * refused (the files on disk half-replaced while the previous pair stayed in use), and so did each replacement.
 */
export interface CertificatePems {
  cert: string;
  key: string;
  ca?: string;
}

export interface TlsServer {
  /** Builds the listening server (for runServer's `createServer`); call once. */
  create(listener: http.RequestListener): PublicServer;
  /**
   * Takes rotated certificates: `certificates` when given (a worker's, from its primary), else `certFile`,
   * `keyFile` and `caFile` read again. New connections use them, open ones keep theirs and are not dropped.
   * Files that cannot be read or do not match leave the old ones in use (logged); returns whether the new ones
   * were taken.
   */
  reloadCertificates(certificates?: CertificatePems): boolean;
}

/** Reads the PEM files `tls` names and checks they are a usable pair; throws, naming the files, when not. */
export function readCertificatePems(tls: TlsConfig, cwd = process.cwd()): CertificatePems {
  // Node's own words named no key, and for a directory not even the file ("EISDIR: illegal operation on a directory, read").
  const read = (key: 'certFile' | 'keyFile' | 'caFile', file: string) => {
    const resolved = path.resolve(cwd, file);
    try {
      return readFileSync(resolved, 'utf8');
    } catch (error) {
      throw new Error(`tls.${key}: cannot read ${resolved} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`, { cause: error });
    }
  };
  const pems: CertificatePems = { cert: read('certFile', tls.certFile), key: read('keyFile', tls.keyFile), ...(tls.caFile ? { ca: read('caFile', tls.caFile) } : {}) };
  secureContextOptions(tls, pems);
  return pems;
}

/**
 * Why the certificate (the first of the file) is not valid now, or undefined. A rotation to an expired or
 * not yet valid certificate is refused (every verifying client would fail its handshakes); at start-up it is
 * only warned about, since the gateway cannot serve at all without a pair.
 */
export function certificateOutOfDate(pems: CertificatePems, now = new Date()): string | undefined {
  const certificate = new X509Certificate(pems.cert);
  const validFrom = new Date(certificate.validFrom);
  const validTo = new Date(certificate.validTo);
  if (now > validTo) return `it expired on ${validTo.toISOString()}`;
  if (now < validFrom) return `it is not valid before ${validFrom.toISOString()}`;
  return undefined;
}

/**
 * A rotated pair as readCertificatePems reads it (SIGHUP: by the single process, or a cluster's primary for its
 * workers), or undefined, logged, when it cannot be read, does not match or is out of date: the pair in use stays.
 */
export function readRotatedCertificates(tls: TlsConfig, logger: Logger, cwd?: string): CertificatePems | undefined {
  try {
    const pems = readCertificatePems(tls, cwd);
    const outOfDate = certificateOutOfDate(pems);
    if (outOfDate) throw new Error(`tls.certFile (${tls.certFile}) is not usable now: ${outOfDate}`);
    return pems;
  } catch (error) {
    logRotationRefused(tls, logger, error);
    return undefined;
  }
}

function logRotationRefused(tls: TlsConfig, logger: Logger, error: unknown): void {
  logger.error('tls certificates not reloaded; the previous ones stay in use', { certFile: tls.certFile, error: error instanceof Error ? error.message : String(error) });
}

/**
 * TLS 1.3's suites, then TLS 1.2's ECDHE ones with AEAD only (Mozilla's "intermediate" without its DHE suites, which
 * Node serves only with a `dhparam` the gateway does not set): Node's default list
 * takes `HIGH`, which lets CBC and SHA-1 suites through, and HTTP/2 must not run over them (RFC 9113 9.2.2, Appendix A),
 * which Node does not check: `ECDHE-ECDSA-AES128-SHA` was negotiated with ALPN h2. Node turns TLS 1.3 off when the
 * list names none of its suites, so they are named.
 */
export const CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

/** The PEMs as secure-context options; throws, naming `tls`'s files, when they are not a usable pair. */
function secureContextOptions(tls: TlsConfig, pems: CertificatePems): SecureContextOptions {
  const options: SecureContextOptions = { ...pems, minVersion: tls.minVersion, ciphers: CIPHERS, honorCipherOrder: true };
  if (options.ca !== undefined && !String(options.ca).includes('-----BEGIN CERTIFICATE-----')) {
    throw new Error(`tls.caFile (${tls.caFile}) holds no PEM certificate`);
  }
  // Built once here so a broken pair is named by its files (OpenSSL says only "bad decrypt" or "key values mismatch").
  try {
    createSecureContext(options);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    // An encrypted key is told by its PEM, not by OpenSSL's message: decrypted with no passphrase, its last block
    // ends in valid padding about once in 256 tries, and OpenSSL then fails parsing the garbage instead ("bad decrypt").
    const encrypted = /-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: *4, *ENCRYPTED/.test(pems.key);
    const hint = encrypted || /decrypt|passphrase|PEM/i.test(reason) ? '; an encrypted key needs a passphrase, which the gateway does not take: store it decrypted (openssl pkey -in key.pem -out key.plain.pem)' : '';
    throw new Error(`tls.certFile (${tls.certFile}) and tls.keyFile (${tls.keyFile}) are not a usable certificate and key: ${reason}${hint}`, { cause: error });
  }
  return options;
}

/**
 * How long an HTTP/2 connection may go without a frame before it is closed (HTTP/1.1 ones by keepAliveTimeout).
 * Never shorter than a whole request may take, since the session timer does not see a stream waiting for its
 * upstream; so with the whole-request limit off (`requestMs` 0) it is off too. A backstop: a connection that still
 * owes an answer when it fires is kept (createTlsServer's 'timeout' listener), as a route may wait longer.
 */
export function http2SessionTimeoutMs(timeouts: { requestMs: number; keepAliveMs: number }): number {
  return timeouts.requestMs === 0 ? 0 : Math.max(timeouts.requestMs, timeouts.keepAliveMs);
}

export function createTlsServer(options: TlsServerOptions): TlsServer {
  const { tls, timeouts, logger } = options;
  // Read now: a missing or unreadable file stops startup, not the first handshake.
  const pems = options.certificates ?? readCertificatePems(tls, options.cwd);
  const certificates = secureContextOptions(tls, pems);
  const outOfDate = certificateOutOfDate(pems);
  if (outOfDate) logger.warn('tls certificate not valid now; verifying clients will refuse it', { certFile: tls.certFile, reason: outOfDate });
  let server: http2.Http2SecureServer | undefined;

  return {
    create(listener) {
      const secure = http2.createSecureServer(
        {
          ...certificates,
          allowHTTP1: true,
          settings: { maxConcurrentStreams: HTTP2_LIMITS.maxConcurrentStreams, maxHeaderListSize: HTTP2_LIMITS.hardHeaderListSize, enablePush: false },
          maxHeaderListPairs: HTTP2_LIMITS.maxHeaderListPairs,
          maxSessionMemory: HTTP2_LIMITS.maxSessionMemoryMb,
          maxSessionInvalidFrames: HTTP2_LIMITS.maxSessionInvalidFrames,
          maxSessionRejectedStreams: HTTP2_LIMITS.maxSessionRejectedStreams,
          // HTTP/1.1 over TLS is served by Node's HTTP/1 server code with the plain listener's bounds.
          headersTimeout: timeouts.headersMs,
          requestTimeout: timeouts.requestMs,
          keepAliveTimeout: timeouts.keepAliveMs,
          connectionsCheckingInterval: Math.min(1000, timeouts.headersMs),
          // A TLS handshake (or an HTTP/2 preface) that never finishes is cut like a slow request head.
          handshakeTimeout: timeouts.headersMs,
          unknownProtocolTimeout: timeouts.headersMs,
        } as http2.SecureServerOptions,
        // Koa's callback reads only what the compatibility request and response share with HTTP/1's.
        countingAnswers(withStreamRequestTimeout(listener as unknown as (request: http2.Http2ServerRequest, response: http2.Http2ServerResponse) => void, timeouts.requestMs)),
      );
      secure.setTimeout(http2SessionTimeoutMs(timeouts));
      // The timers see frames and bytes, not a request waiting for its service: Node destroyed a connection silent
      // this long with an answer still to come (a route's timeoutMs and deadlineMs may outlast the whole-request
      // limit, which bounds the client's sending), every other stream of an HTTP/2 one with it. Such a connection
      // is left to its requests' own bounds (the route's deadline, the send timeout); a silent one with no answer
      // owed is destroyed, as Node does without a listener.
      secure.on('timeout', (connection: http2.ServerHttp2Session | Socket) => {
        if (!owesAnswers(connection)) connection.destroy();
      });
      const sendMs = options.sendTimeoutMs ?? DEFAULT_SEND_TIMEOUT_MS;
      const sockets = new Set<Socket>();
      /**
       * The TLS socket of the connection being opened: ahead of Node's own 'secureConnection' listener, which
       * opens the HTTP/2 session on it and emits 'session' at once. `session.socket` is a proxy that can destroy
       * nothing, and a session closed gracefully only ends its socket (guardSession needs the socket itself).
       */
      let opening: Socket | undefined;
      secure.prependListener('secureConnection', (socket: TLSSocket) => {
        // A client-asked TLS 1.2 renegotiation is a full handshake the server pays for, three per connection by
        // Node's default, on every connection a client may hold; HTTP/2 forbids it already (RFC 9113 9.2.1).
        socket.disableRenegotiation();
        opening = socket;
        sockets.add(socket);
        socket.once('close', () => sockets.delete(socket));
      });
      secure.on('session', (session: http2.ServerHttp2Session) => guardSession(session, opening!, { keepAliveMs: timeouts.keepAliveMs, sendMs, logger }));
      // Broken handshakes and protocol errors are the client's; they close its connection and nothing else.
      secure.on('tlsClientError', () => {});
      secure.on('sessionError', () => {});
      const ticketKeyRotation = setInterval(() => secure.setTicketKeys(randomBytes(48)), options.ticketKeyLifetimeMs ?? TICKET_KEY_LIFETIME_MS);
      ticketKeyRotation.unref();
      secure.once('close', () => clearInterval(ticketKeyRotation));
      server = secure;
      return Object.assign(secure, {
        // Node's own closes idle HTTP/1.1 connections; close() already sends GOAWAY to every HTTP/2 session.
        closeIdleConnections: (secure as unknown as { closeIdleConnections(): void }).closeIdleConnections.bind(secure),
        closeAllConnections() {
          for (const socket of sockets) socket.destroy();
        },
      });
    },
    reloadCertificates(given) {
      if (!server) return false;
      const pems = given ?? readRotatedCertificates(tls, logger, options.cwd);
      if (!pems) return false;
      try {
        server.setSecureContext(secureContextOptions(tls, pems));
      } catch (error) {
        logRotationRefused(tls, logger, error);
        return false;
      }
      logger.info('tls certificates reloaded', { certFile: tls.certFile });
      return true;
    },
  };
}

/**
 * How long an HTTP/2 connection asked to close (GOAWAY: idle, every stream held back, the server stopping) may
 * stay open once no stream the gateway still serves is left, ms; then its session and TLS socket are destroyed.
 */
export const HTTP2_CLOSE_GRACE_MS = 1000;

/** Streams a client may reset before their answer, per connection and RESET_WINDOW_MS, before the connection is closed (below). */
export const RESET_STREAMS_BUDGET = 100;
const RESET_WINDOW_MS = 10_000;

/**
 * What one HTTP/2 connection may cost beyond its streams' own limits:
 * - Rapid reset (CVE-2023-44487): a client opening streams and resetting them at once makes the gateway run its
 *   pipeline for each while never reading an answer. nghttp2's own limit let about 1,000 per connection through,
 *   and `maxSessionRejectedStreams` counts only streams the server refuses. Once more than RESET_STREAMS_BUDGET
 *   streams were reset by their client before their answer finished (whatever the code, resetByClient) within
 *   10 s, the connection is closed (GOAWAY ENHANCE_YOUR_CALM). Not a share of all its streams, as Envoy counts:
 *   cheap completed requests in between would keep any number of resets under a share.
 * - Idle connections: with no stream open, one closes after `keepAliveMs`, as an idle HTTP/1.1 connection does
 *   (the session timer is a backstop as long as a whole request may take, 120 s by default, and spares a
 *   connection with a stream waiting for its service).
 * - Closing connections: a graceful close (GOAWAY: idle, every stream held back, the server stopping) waits for
 *   the open streams, and Node then only ends the socket (its FIN) and waits for the client's. A client that
 *   answers no FIN, reads nothing more (the gateway's last frames wait behind bytes that never leave) or leaves
 *   a header block unfinished (no stream Node sees) held the connection and its slot for good, its session timer
 *   off once closing. Once no stream the gateway still serves is open (the rest it reset itself), the connection
 *   gets HTTP2_CLOSE_GRACE_MS, then its session and `socket` (the TLS socket, not the session's proxy) are destroyed.
 */
function guardSession(session: http2.ServerHttp2Session, socket: Socket, options: { keepAliveMs: number; sendMs: number; logger: Logger }): void {
  const { keepAliveMs, sendMs, logger } = options;
  let resets = 0;
  /** The session's open streams (their count arms the idle close), watched until their answers are taken. */
  const streams = watchStalledStreams(sendMs, (allStalled) => {
    // Every stream open is one its client holds back: nothing on this connection is worth keeping it for. Said
    // once: the streams stay open until their resets can be sent, and each sweep finds them held back again.
    if (allStalled && !session.closed && !session.destroyed) {
      logger.warn('closed an HTTP/2 connection whose every stream its client held back', { remote_address: session.socket?.remoteAddress });
      session.close();
    }
    // A stream it reset may be the last one it served.
    boundClose();
  });
  let closeGrace: NodeJS.Timeout | undefined;
  const boundClose = () => {
    if (closeGrace || !(session.closed || session.destroyed) || streams.served > 0) return;
    closeGrace = setTimeout(() => {
      session.destroy();
      socket.destroy();
    }, HTTP2_CLOSE_GRACE_MS);
    closeGrace.unref();
  };
  // Every graceful close goes through session.close() (Node's own at server shutdown too: closeAllSessions), and
  // nothing is emitted when one starts.
  const close = session.close.bind(session);
  session.close = (callback?: () => void) => {
    close(callback);
    boundClose();
  };
  let windowStarted = performance.now();
  let idle: NodeJS.Timeout | undefined;
  const armIdle = () => {
    clearTimeout(idle);
    idle = setTimeout(() => {
      if (streams.open === 0 && !session.closed && !session.destroyed) session.close();
    }, keepAliveMs);
    idle.unref();
  };
  armIdle();
  session.on('stream', (stream: http2.ServerHttp2Stream) => {
    clearTimeout(idle);
    streams.add(stream);
    stream.once('close', () => {
      streams.delete(stream);
      if (resetByClient(stream)) {
        const now = performance.now();
        if (now - windowStarted > RESET_WINDOW_MS) {
          windowStarted = now;
          resets = 0;
        }
        resets++;
      }
      if (resets > RESET_STREAMS_BUDGET && !session.destroyed) {
        logger.warn('closed an HTTP/2 connection that reset too many of its streams', { resets, window_ms: RESET_WINDOW_MS, remote_address: session.socket?.remoteAddress });
        session.goaway(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
        session.destroy();
      }
      if (streams.open === 0) armIdle();
      boundClose();
    });
  });
  session.once('close', () => {
    clearTimeout(idle);
    clearTimeout(closeGrace);
    streams.stop();
  });
}

/**
 * Whether the client reset this stream (RST_STREAM) before its answer was over: with any code while the gateway
 * had not ended its answer (`aborted`: Node closed the stream with the gateway's side still open; or, for a HEAD,
 * whose side Node ends as it arrives and never marks aborted, before its answer's head went out), or with an
 * error code at any time. Rapid reset works as well with NO_ERROR (code 0) as with CANCEL, and reading the code
 * alone took such a stream for one that ended normally. The gateway's own resets (a cut answer, a timeout, a
 * request stopped once answered) are no sign of abuse: counted, a service dying mid-body a hundred times closed
 * its clients.
 */
function resetByClient(stream: http2.ServerHttp2Stream): boolean {
  return !resetByGateway(stream) && (stream.aborted || stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR || !stream.headersSent);
}

/**
 * Streams whose answer waits for its client: with a flow-control window of 0 a client holds any answer back (a
 * 404, a 429, a proxied 200: the rate limit does not bound them), and PINGs, or another stream it reads, keep the
 * session timer from ever firing; the proxy's deadline no longer applies to an ended response. One sweep per
 * session while streams are open; a stream with bytes waiting that was sent less than the least rate over a
 * window of `sendMs` (otel/lifecycle.ts createSendWindows), counted on the stream itself (countSentBytes), is
 * reset (CANCEL, the gateway's) and its answer recorded `client_read_timeout`. `afterSweep` is told after each
 * sweep whether every open stream of the connection was held back so.
 */
function watchStalledStreams(sendMs: number, afterSweep: (allStalled: boolean) => void) {
  const streams = new Map<http2.ServerHttp2Stream, () => number>();
  const windows = createSendWindows<http2.ServerHttp2Stream>(sendMs, { bursts: true });
  let sweep: NodeJS.Timeout | undefined;
  const check = () => {
    const now = performance.now();
    let stalled = 0;
    for (const [stream, sent] of streams) {
      const waiting = stream.writableLength > 0 || (stream.writableEnded && !stream.writableFinished);
      if (!waiting || stream.destroyed) {
        windows.forget(stream);
        continue;
      }
      if (!windows.tooSlow(stream, now, sent())) continue;
      stalled++;
      const response = answerOf.get(stream);
      if (response) markServerAnswer(response, 'client_read_timeout');
      resetStream(stream, http2.constants.NGHTTP2_CANCEL);
    }
    afterSweep(stalled > 0 && stalled === streams.size);
  };
  const stop = () => {
    clearInterval(sweep);
    sweep = undefined;
  };
  return {
    get open() {
      return streams.size;
    },
    /** Open streams the gateway has not reset itself (those only wait for their RST_STREAM to go out). */
    get served() {
      let served = 0;
      for (const stream of streams.keys()) if (!resetByGateway(stream)) served++;
      return served;
    },
    add(stream: http2.ServerHttp2Stream) {
      streams.set(stream, countSentBytes(stream, windows.halfWindowBytes));
      if (sweep) return;
      sweep = setInterval(check, windows.sweepMs);
      sweep.unref();
    },
    delete(stream: http2.ServerHttp2Stream) {
      streams.delete(stream);
      if (streams.size === 0) stop();
    },
    stop,
  };
}

/** Each HTTP/2 stream's compatibility response, for the answer's record when the gateway resets the stream. */
const answerOf = new WeakMap<http2.ServerHttp2Stream, http2.Http2ServerResponse>();

/**
 * The plain listener's `requestTimeout` (the whole request within `requestMs`) for HTTP/2 streams: Node's
 * HTTP/1 server enforces it, its HTTP/2 server does not, and the session timer restarts on every frame. Without
 * this a body dripped a byte at a time into a reader with no rate limit of its own (login's body parser, the
 * gRPC translation) holds its stream, and the connection's slot, for ever. A stream whose client has not ended
 * its request by then is answered 408 and closed (or, its answer started, reset), as after an HTTP/1.1 request
 * timeout (otel/lifecycle.ts answerHttp2RequestTimeout). HTTP/1.1 requests on this listener are Node's to time.
 * A stream whose answer finished while its client was still sending (an early 413 or 401) is ended then
 * (stopRequestOnceAnswered), not at the timeout, which would record the finished answer as `request_timeout`.
 * Each HTTP/2 stream's response is kept here too (`answerOf`), for the record of a stream the send sweep resets.
 */
/** Answers not yet over, per connection: an HTTP/2 connection's session, or an HTTP/1.1 connection's socket. */
const answersOwed = new WeakMap<object, number>();

function owesAnswers(connection: object): boolean {
  return (answersOwed.get(connection) ?? 0) > 0;
}

/** Counts each request's answer against its connection (answersOwed) until the response closes. */
function countingAnswers(listener: (request: http2.Http2ServerRequest, response: http2.Http2ServerResponse) => void) {
  return (request: http2.Http2ServerRequest, response: http2.Http2ServerResponse) => {
    // An HTTP/1.1 request comes here too (allowHTTP1), as Node's IncomingMessage on the connection's TLS socket.
    const incoming = request as http2.Http2ServerRequest | http.IncomingMessage;
    const connection: object = isHttp2Request(incoming) ? incoming.stream.session! : incoming.socket;
    answersOwed.set(connection, (answersOwed.get(connection) ?? 0) + 1);
    response.once('close', () => answersOwed.set(connection, answersOwed.get(connection)! - 1));
    listener(request, response);
  };
}

function withStreamRequestTimeout(listener: (request: http2.Http2ServerRequest, response: http2.Http2ServerResponse) => void, requestMs: number) {
  return (request: http2.Http2ServerRequest, response: http2.Http2ServerResponse) => {
    // The HTTP/2 compatibility request, not its version: an HTTP/1.1 request line may say `HTTP/2.0` (Node's
    // HTTP/1 parser accepts it), and that request has no stream (createRequestHeadCheck refuses it).
    if (!isHttp2Request(request)) return listener(request, response);
    const { stream } = request;
    answerOf.set(stream, response);
    // Node's compatibility response ignores its stream closing before its own end() when the request is a HEAD (it
    // compares a head-request flag only end() sets): a HEAD its client reset went on as if still wanted, forwarded
    // to its service and the answer awaited, its access line and span held until then. Its 'close' comes here, as
    // for any other request (the end() that follows emits it again, to no listener left).
    if (request.method === 'HEAD') {
      stream.once('close', () => {
        if (!response.writableEnded) response.emit('close');
      });
    }
    if (!stream.endAfterHeaders) {
      stream.once('finish', () => stopRequestOnceAnswered(response));
      if (requestMs !== 0) {
        const timer = setTimeout(() => {
          // `remoteClose`: the client's END_STREAM arrived (a body read or not, as HTTP/1's parser counts it). An
          // answer already ended is the pipeline's, whatever the upload does (a client slow to take it is the send
          // sweep's).
          if (!stream.destroyed && !stream.state.remoteClose && !response.writableEnded) answerHttp2RequestTimeout(response);
        }, requestMs);
        stream.once('close', () => clearTimeout(timer));
      }
    }
    listener(request, response);
  };
}

export interface RedirectListenerOptions {
  port: number;
  host: string;
  /** The HTTPS port named in `Location` (omitted when 443). */
  httpsPort: number;
  /**
   * Host names served (config `allowedHosts`); other hosts get 421 rather than a redirect to them. Any when absent.
   * A function is read per request: the running config's, which a reload may change.
   */
  allowedHosts?: readonly string[] | (() => readonly string[] | undefined);
  /** Answers `/health` on this listener too (load balancers probe the plain port). */
  health: http.RequestListener;
  timeouts: { headersMs: number; requestMs: number; keepAliveMs: number };
  /** Bounds on its connections, as on the HTTPS listener (`server.maxConnections`, `server.maxConnectionsPerClient`). */
  connections?: ConnectionBounds;
  /** The slow-read bound, ms (`server.sendTimeoutMs`). */
  sendTimeoutMs?: number;
}

export interface RedirectListener {
  url: string;
  close(): Promise<void>;
}

/** A host and optional port as a Location may carry it: a DNS name, IPv4, or bracketed IPv6. */
const HOST_AND_PORT = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(:\d{1,5})?$/;

/**
 * The plain-HTTP listener beside HTTPS: every request but `/health` gets 308 (method and body kept, RFC 9110
 * 15.4.9) to the same host and path over HTTPS. The host must look like one (and be allowed, when
 * `allowedHosts` says which), so the redirect never points a client at a name it did not reach us by.
 */
export async function listenHttpsRedirect(options: RedirectListenerOptions): Promise<RedirectListener> {
  const { allowedHosts } = options;
  // One matcher per list (a config's is frozen: the same array until a reload replaces it). Built once at start,
  // a reload's hosts were refused here (421) while HTTPS served them, and removed ones still redirected.
  let matcherOf: { hosts: readonly string[]; matches: ReturnType<typeof createHostMatcher> } | undefined;
  const matcher = () => {
    const hosts = typeof allowedHosts === 'function' ? allowedHosts() : allowedHosts;
    if (hosts === undefined) return undefined;
    if (matcherOf?.hosts !== hosts) matcherOf = { hosts, matches: createHostMatcher(hosts) };
    return matcherOf.matches;
  };
  // The matcher takes an IPv6 address without brackets; the Location keeps them.
  const allowed = (hostname: string) => {
    const matches = matcher();
    return matches === undefined || matches(hostname.replace(/^\[(.*)\]$/, '$1'));
  };
  const portSuffix = options.httpsPort === 443 ? '' : `:${options.httpsPort}`;

  const redirect: http.RequestListener = (req, res) => {
    const url = req.url ?? '';
    if (url === '/health' || url.startsWith('/health?')) return options.health(req, res);
    const host = req.headers.host ?? '';
    const match = HOST_AND_PORT.exec(host);
    const hostname = match?.[1]!.toLowerCase();
    // Origin-form targets only: an absolute-form one (`GET http://elsewhere/`) names another authority. One Host
    // line only (RFC 9112 3.2), as the HTTPS listener holds it: Node keeps the first of several, another hop the last.
    const problem = !url.startsWith('/') || url.startsWith('//') || fieldLineCount(req.rawHeaders, 'host') > 1 ? 400 : !hostname ? 400 : !allowed(hostname) ? 421 : undefined;
    if (problem) {
      const code = problem === 421 ? 'host_not_allowed' : 'bad_request';
      const requestId = mintRequestId();
      res.writeHead(problem, { 'content-type': 'application/problem+json', connection: 'close', 'x-request-id': requestId, 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' });
      // The detail every other problem answer carries: what the client may do instead.
      const detail = problem === 421 ? 'This gateway redirects to HTTPS only for the host names it serves.' : 'The plain-HTTP listener redirects a path (origin-form target) under one Host to HTTPS.';
      res.end(JSON.stringify({ type: `urn:koa-gateway:problem:${code}`, title: problem === 421 ? 'Misdirected request' : 'Bad request', status: problem, detail, code, requestId }));
      return;
    }
    res.writeHead(308, { location: `https://${hostname}${portSuffix}${url}`, 'content-length': '0' });
    res.end();
  };
  return listenInternal(redirect, { port: options.port, host: options.host, timeouts: options.timeouts, connections: options.connections, sendTimeoutMs: options.sendTimeoutMs });
}
