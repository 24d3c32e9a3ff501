// The reference floor: the least a Node.js proxy costs per request, i.e. node:http in,
// undici's dispatcher out over keep-alive connections (the client the gateway uses; ~35% less CPU per request
// than http.request here), the upstream's answer streamed back, no auth, no log, no framework. What the
// gateway costs above this is the gateway's own work; what this costs above the upstream is Node's HTTP.
//   node bench/node-floor.mjs <port> <upstream port>
import http from 'node:http';
import { Agent } from 'undici';

const [port, upstreamPort] = process.argv.slice(2).map(Number);
if (!(port > 0) || !(upstreamPort > 0)) {
  process.stderr.write('usage: node bench/node-floor.mjs <port> <upstream port>\n');
  process.exit(2);
}
const upstreams = new Agent({ connections: 256, pipelining: 1 });
const origin = `http://127.0.0.1:${upstreamPort}`;
const PREFIX = '/api/users';
// undici refuses hop-by-hop request headers; a proxy drops them anyway.
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'expect', 'te', 'trailer', 'proxy-connection']);

const server = http.createServer((req, res) => {
  if (!req.url.startsWith(PREFIX)) {
    res.writeHead(404).end();
    return;
  }
  const headers = {};
  for (const name in req.headers) if (!HOP_BY_HOP.has(name)) headers[name] = req.headers[name];
  headers.host = `127.0.0.1:${upstreamPort}`;
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  upstreams.dispatch(
    { origin, method: req.method, path: `/users${req.url.slice(PREFIX.length)}`, headers, body: hasBody ? req : null },
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
      },
      onResponseError() {
        if (!res.headersSent) res.writeHead(502);
        res.end();
      },
    },
  );
});
server.listen(port, '127.0.0.1', () => process.stdout.write(`node floor proxy listening on 127.0.0.1:${port}\n`));
process.on('SIGTERM', () => server.close(() => process.exit(0)).closeAllConnections());
