import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import type Koa from 'koa';
import winston from 'winston';
import { createLogger, type Logger } from '../../otel/logger';

export interface TestServer {
  url: string;
  server: http.Server;
  close(): Promise<void>;
}

/** Listens on 127.0.0.1 on an ephemeral port, or on `port` (rejecting when it is taken). */
export async function listen(handler: http.RequestListener, requestedPort = 0): Promise<TestServer> {
  const server = http.createServer(handler);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(requestedPort, '127.0.0.1', resolve);
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Answers 200 text/plain in six chunks, one every 200 ms (~1.2 s in all): a response still in flight for a while. */
export function streamSixChunks(res: http.ServerResponse): void {
  res.writeHead(200, { 'content-type': 'text/plain' });
  let sent = 0;
  const timer = setInterval(() => {
    res.write(`chunk ${sent}\n`);
    if (++sent === 6) {
      clearInterval(timer);
      res.end();
    }
  }, 200);
}

/** What `sendRaw` got back. */
export interface RawReply {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
}

/**
 * One plain HTTP/1.1 request on a fresh connection, path and headers sent as given, `Host` included (fetch would
 * normalise or refuse some of the hostile ones).
 */
export function sendRaw(origin: string, path: string, headers: http.OutgoingHttpHeaders = {}, method = 'GET'): Promise<RawReply> {
  const { hostname, port } = new URL(origin);
  return new Promise((resolve, reject) => {
    const request = http.request({ host: hostname, port: Number(port), path, method, headers, agent: false, setHost: !('host' in headers) }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, headers: response.headers, text: Buffer.concat(chunks).toString() }));
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end();
  });
}

export interface RecordedRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
}

/** A Koa app behind a recorder: every request that reached the service, as the service saw it. */
export async function listenRecording(app: Koa, port = 0): Promise<TestServer & { requests: RecordedRequest[] }> {
  const requests: RecordedRequest[] = [];
  const callback = app.callback();
  const server = await listen((req, res) => {
    requests.push({ method: req.method ?? '', url: req.url ?? '', headers: { ...req.headers } });
    void callback(req, res);
  }, port);
  return Object.assign(server, { requests });
}

/** A logger whose lines are kept in memory (and not printed), for assertions on log content. */
export function memoryLogger(serviceName: string): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const capture = new winston.transports.Stream({
    stream: new Writable({
      write(chunk: Buffer, _encoding: string, done: () => void) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    }),
  });
  // Keep test output clean: no stdout, only the capture.
  const logger = createLogger({ serviceName, level: 'debug', transports: [capture], stdout: false });
  return { logger, lines };
}

/** One scripted answer: what a stand-in upstream sends back. */
export interface ScriptedAnswer {
  status: number;
  headers?: Record<string, string>;
  body: string;
}

/**
 * A stand-in upstream (e.g. for user-service's credential check) that reads each request body, then sends
 * whatever `answer()` returns at that moment, so a test table can change the answer row by row.
 */
export function scriptedUpstream(answer: () => ScriptedAnswer): Promise<TestServer> {
  return listen((req, res) => {
    req.resume();
    req.on('end', () => {
      const { status, headers, body } = answer();
      res.writeHead(status, headers);
      res.end(body);
    });
  });
}

/** Whether a TCP connect to 127.0.0.1:port is refused (nothing listens there). */
function connectionRefused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code === 'ECONNREFUSED'));
  });
}

let nextRefusedPort = 1;

/**
 * A loopback origin with nothing listening on it: connections are refused. Each call gives another port, taken
 * from the privileged range (below 1024) after checking that it refuses: an ephemeral port freed by closing a
 * server (the earlier way) can be handed to a server of another jest worker a moment later, which then answered
 * the "dead" instance (a flaky 'Not found' body instead of the gateway's 502/503).
 */
export async function refusedOrigin(): Promise<string> {
  while (nextRefusedPort < 1024) {
    const port = nextRefusedPort++;
    if (await connectionRefused(port)) return `http://127.0.0.1:${port}`;
  }
  throw new Error('refusedOrigin: no refused port left below 1024');
}

/** An origin that accepts each connection, reads its request line and closes it unanswered: counted failures. */
export interface ResettingOrigin {
  url: string;
  /** How many requests for `path` (the request line's target) it has closed unanswered so far. */
  attempts(path: string): number;
  close(): Promise<void>;
}

/**
 * An origin every request to fails (the connection closed without an answer), counting the requests by path: a test
 * can wait for a number of failed attempts instead of sleeping through them, where a refused port counts nothing.
 */
export async function resettingOrigin(): Promise<ResettingOrigin> {
  const counts = new Map<string, number>();
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let head = '';
    socket.on('data', (chunk) => {
      head += chunk.toString('latin1');
      const lineEnd = head.indexOf('\r\n');
      if (lineEnd === -1) return;
      const target = head.slice(0, lineEnd).split(' ')[1] ?? '';
      counts.set(target, (counts.get(target) ?? 0) + 1);
      socket.destroy();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    attempts: (path) => counts.get(path) ?? 0,
    close: () => {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** A loopback port for a process that must be told its port before it starts (or a server started again on its port). */
export { freePort } from '../../bench/free-port.cjs';
