// The reference floor: the least a Node.js proxy costs per request, i.e. node:http in,
// undici's dispatcher out over keep-alive connections (the client the gateway uses; ~35% less CPU per request
// than http.request here), the upstream's answer streamed back, no auth, no log, no framework. What the
// gateway costs above this is the gateway's own work; what this costs above the upstream is Node's HTTP.
//
// With --traced (and the gateway's telemetry bootstrap preloaded, bench/servers.mjs startNodeFloor), the same
// proxy also records what 100% tracing cannot do without: a SERVER span and a CLIENT span per request through
// the gateway's tracer (otel/gateway-tracer.ts), with the HTTP attributes the gateway's spans carry, and the
// CLIENT span's `traceparent` sent upstream; the spans are batched and exported over OTLP like the gateway's.
// No context manager, no baggage, no `traceresponse`, no trace ids in a log. Its cost above the floor is the
// least tracing every request costs with this tracing stack: the floor of issue 12's tracing-cost line.
//   node bench/node-floor.mjs <port> <upstream port> [--traced]
import http from 'node:http';
import { Agent } from 'undici';

const [port, upstreamPort] = process.argv.slice(2, 4).map(Number);
const traced = process.argv[4] === '--traced';
if (!(port > 0) || !(upstreamPort > 0) || (process.argv[4] !== undefined && !traced)) {
  process.stderr.write('usage: node bench/node-floor.mjs <port> <upstream port> [--traced]\n');
  process.exit(2);
}
const upstreams = new Agent({ connections: 256, pipelining: 1 });
const origin = `http://127.0.0.1:${upstreamPort}`;
const PREFIX = '/api/users';
// undici refuses hop-by-hop request headers; a proxy drops them anyway.
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'expect', 'te', 'trailer', 'proxy-connection']);

/** Both spans of a request, or nothing when untraced: `start` before forwarding, `end` once answered. */
const tracing = traced ? await requestSpans() : undefined;

const server = http.createServer((req, res) => {
  if (!req.url.startsWith(PREFIX)) {
    res.writeHead(404).end();
    return;
  }
  const headers = {};
  for (const name in req.headers) if (!HOP_BY_HOP.has(name)) headers[name] = req.headers[name];
  headers.host = `127.0.0.1:${upstreamPort}`;
  const upstreamPath = `/users${req.url.slice(PREFIX.length)}`;
  const spans = tracing?.start(req, upstreamPath, headers);
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  upstreams.dispatch(
    { origin, method: req.method, path: upstreamPath, headers, body: hasBody ? req : null },
    {
      onRequestStart() {},
      onResponseStart(controller, statusCode, upstreamHeaders) {
        const responseHeaders = {};
        for (const name in upstreamHeaders) if (!HOP_BY_HOP.has(name)) responseHeaders[name] = upstreamHeaders[name];
        res.writeHead(statusCode, responseHeaders);
        res.on('drain', () => controller.resume());
      },
      onResponseData(controller, chunk) {
        if (!res.write(chunk)) controller.pause();
      },
      onResponseEnd() {
        res.end();
        if (spans) tracing.end(spans, res.statusCode);
      },
      onResponseError() {
        if (!res.headersSent) res.writeHead(502);
        res.end();
        if (spans) tracing.end(spans, 502);
      },
    },
  );
});

/** The two spans the gateway records per proxied request, with the attributes both of its spans carry. */
async function requestSpans() {
  const { propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } = await import('@opentelemetry/api');
  // The name the telemetry bootstrap hands the gateway's lean tracer for (otel/sdk.ts).
  const tracer = trace.getTracer('koa-gateway');
  return {
    start(req, upstreamPath, headers) {
      const attributes = {};
      attributes['http.request.method'] = req.method;
      attributes['url.path'] = req.url;
      attributes['url.scheme'] = 'http';
      attributes['server.address'] = '127.0.0.1';
      attributes['client.address'] = req.socket.remoteAddress;
      attributes['network.protocol.version'] = req.httpVersion;
      const server = tracer.startSpan(req.method, { kind: SpanKind.SERVER, attributes }, ROOT_CONTEXT);
      const parent = trace.setSpan(ROOT_CONTEXT, server);
      const callAttributes = {};
      callAttributes['http.request.method'] = req.method;
      callAttributes['url.full'] = origin + upstreamPath;
      callAttributes['server.address'] = '127.0.0.1';
      callAttributes['server.port'] = upstreamPort;
      callAttributes['gateway.upstream.service'] = 'users';
      const client = tracer.startSpan(req.method, { kind: SpanKind.CLIENT, attributes: callAttributes }, parent);
      propagation.inject(trace.setSpan(ROOT_CONTEXT, client), headers);
      return { server, client, method: req.method };
    },
    end({ server, client, method }, status) {
      client.setAttribute('gateway.upstream.outcome', status === 502 ? 'refused' : 'ok');
      client.setAttribute('http.response.status_code', status);
      if (status >= 500) client.setStatus({ code: SpanStatusCode.ERROR });
      client.end();
      server.updateName(`${method} /api/users`);
      server.setAttribute('http.route', '/api/users');
      server.setAttribute('gateway.route.name', 'users');
      server.setAttribute('http.response.status_code', status);
      if (status >= 500) server.setStatus({ code: SpanStatusCode.ERROR });
      server.end();
    },
  };
}

server.listen(port, '127.0.0.1', () => process.stdout.write(`node floor proxy${traced ? ' (traced)' : ''} listening on 127.0.0.1:${port}\n`));
process.on('SIGTERM', () => server.close(() => process.exit(0)).closeAllConnections());
