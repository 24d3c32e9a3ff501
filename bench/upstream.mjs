// The benchmark's fixed upstream: one small JSON answer (~110 bytes) for GET /users/<anything>, nothing else.
// It stands in for the users service without its work, so what the benchmark sees is the gateway's cost.
// It also counts how many requests arrived with the identity headers a gateway injects (x-user-id), so the
// runner can check that every gateway case really ran authentication (`GET /__stats`).
//   node bench/upstream.mjs <port>
import http from 'node:http';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  process.stderr.write('usage: node bench/upstream.mjs <port>\n');
  process.exit(2);
}

const body = Buffer.from(JSON.stringify({ id: '42', name: 'Ada Lovelace', email: 'ada@example.com', role: 'user', createdAt: '2026-01-01T00:00:00.000Z' }));
const headers = { 'content-type': 'application/json; charset=utf-8', 'content-length': body.length };
const stats = { requests: 0, withIdentity: 0 };

const server = http.createServer((req, res) => {
  if (req.url.startsWith('/users')) {
    stats.requests++;
    if (req.headers['x-user-id'] !== undefined) stats.withIdentity++;
    res.writeHead(200, headers).end(body);
  } else if (req.url === '/__stats') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(stats));
  } else {
    res.writeHead(404).end();
  }
});
// Longer than any client's idle time, so keep-alive pools of the proxies are never cut from this side.
server.keepAliveTimeout = 65_000;
server.listen(port, '127.0.0.1', () => process.stdout.write(`upstream listening on 127.0.0.1:${port}\n`));
process.on('SIGTERM', () => server.close(() => process.exit(0)).closeAllConnections());
