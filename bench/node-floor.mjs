// An optional reference case (`--with-floor`): the least a Node.js proxy can do per request, i.e. node:http
// in, http.request with a keep-alive agent out, streams piped, no auth, no log, no framework. What the
// gateway costs above this is the gateway's own code; what this costs above the upstream is Node's HTTP.
//   node bench/node-floor.mjs <port> <upstream port>
import http from 'node:http';

const [port, upstreamPort] = process.argv.slice(2).map(Number);
if (!(port > 0) || !(upstreamPort > 0)) {
  process.stderr.write('usage: node bench/node-floor.mjs <port> <upstream port>\n');
  process.exit(2);
}
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
const PREFIX = '/api/users';

const server = http.createServer((req, res) => {
  if (!req.url.startsWith(PREFIX)) {
    res.writeHead(404).end();
    return;
  }
  const headers = { ...req.headers, host: `127.0.0.1:${upstreamPort}` };
  delete headers.connection;
  const upstream = http.request({ host: '127.0.0.1', port: upstreamPort, method: req.method, path: `/users${req.url.slice(PREFIX.length)}`, headers, agent }, (response) => {
    res.writeHead(response.statusCode, response.headers);
    response.pipe(res);
  });
  upstream.on('error', () => {
    if (!res.headersSent) res.writeHead(502);
    res.end();
  });
  req.pipe(upstream);
});
server.listen(port, '127.0.0.1', () => process.stdout.write(`node floor proxy listening on 127.0.0.1:${port}\n`));
process.on('SIGTERM', () => server.close(() => process.exit(0)).closeAllConnections());
