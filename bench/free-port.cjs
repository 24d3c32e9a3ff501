'use strict';
// A loopback port for a server that is told its port before it listens: what the bench and the tests start on.
// CommonJS, so the bench's ES modules (bench/processes.mjs) and the tests' helpers (test/helpers/servers.ts,
// loaded as CommonJS by Jest) share the one implementation.
const fs = require('node:fs');
const net = require('node:net');

/** The lowest local port the kernel gives outgoing connections (net.ipv4.ip_local_port_range). */
function lowestLocalPort() {
  try {
    const low = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    if (Number.isInteger(low)) return low;
  } catch {
    // Not Linux, or no /proc: the kernel's default.
  }
  return 32768;
}

/** Lowest port freePort picks: above the usual ports of the services every session runs (Redis, PostgreSQL, NATS). */
const LOWEST_FREE_PORT = 10_000;

/** Ports this process handed out, never handed out twice (two servers told the same port). */
const handedOut = new Set();

/** Whether a server can listen on 127.0.0.1:`port` now. */
function canListen(port) {
  const server = net.createServer();
  return new Promise((resolve) => {
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/**
 * A port on 127.0.0.1 that was free a moment ago, below the range the kernel takes outgoing connections' local
 * ports from. A server is started on it a moment later, or again on the port it had (the bench's rounds, a
 * service brought back in a test); a port from that range (what listening on port 0 gives) can meanwhile become
 * the local port of any connection the process or its neighbours open (wrk's, undici's, an exporter's), and the
 * server then fails on EADDRINUSE: a full `npm run bench` stopped in its third round so. Where that range leaves
 * too little below it, any free port.
 * @returns {Promise<number>}
 */
async function freePort() {
  const low = lowestLocalPort();
  if (low - LOWEST_FREE_PORT >= 1000) {
    for (let attempt = 0; attempt < 100; attempt++) {
      const port = LOWEST_FREE_PORT + Math.floor(Math.random() * (low - LOWEST_FREE_PORT));
      if (handedOut.has(port) || !(await canListen(port))) continue;
      handedOut.add(port);
      return port;
    }
  }
  const server = net.createServer();
  await new Promise((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  handedOut.add(port);
  return port;
}

module.exports = { freePort };
