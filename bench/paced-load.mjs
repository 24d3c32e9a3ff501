// A load generator at a fixed request rate (wrk only does "as fast as possible"), for the telemetry-loss
// check: GET <url> at <rate>/s for <seconds>, over at most <connections> keep-alive connections. Requests
// that would exceed twice that many in flight are skipped and counted, never queued, so a slow server shows
// up as `skipped` instead of a silently lower rate. Stops by itself; prints one JSON line.
//   node bench/paced-load.mjs <url> <rate> <seconds> <connections> [header: value]...
import http from 'node:http';
import { performance } from 'node:perf_hooks';

const [url, rateArg, secondsArg, connectionsArg, ...headerArgs] = process.argv.slice(2);
const rate = Number(rateArg);
const seconds = Number(secondsArg);
const connections = Number(connectionsArg);
if (!url || !(rate > 0) || !(seconds > 0) || !(connections > 0)) {
  process.stderr.write('usage: node bench/paced-load.mjs <url> <rate> <seconds> <connections> [header: value]...\n');
  process.exit(2);
}
const target = new URL(url);
if (!['127.0.0.1', 'localhost', '[::1]'].includes(target.hostname)) {
  process.stderr.write('paced-load: loopback targets only\n');
  process.exit(2);
}
const headers = Object.fromEntries(headerArgs.map((h) => [h.slice(0, h.indexOf(':')).trim(), h.slice(h.indexOf(':') + 1).trim()]));

const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
const maxInFlight = connections * 2;
const latenciesMs = [];
const result = { targetRate: rate, seconds, maxInFlight, sent: 0, ok: 0, non2xx: 0, errors: 0, errorCodes: {}, skipped: 0, retried: 0 };
let inFlight = 0;
let sending = true;

function send() {
  result.sent++;
  inFlight++;
  attempt(performance.now(), false);
}

function attempt(started, retry) {
  const request = http.get({ agent, hostname: target.hostname, port: target.port, path: target.pathname + target.search, headers }, (response) => {
    response.resume();
    response.on('end', () => {
      latenciesMs.push(performance.now() - started);
      if (response.statusCode >= 200 && response.statusCode < 300) result.ok++;
      else result.non2xx++;
      done();
    });
  });
  request.on('error', (error) => {
    // A kept-alive connection the server closed as idle (its keepAliveTimeout) just as this request was written on
    // it: the request never reached it, and HTTP clients send it again (Node's docs; undici retries it itself). 2 of
    // 111,203 requests failed so in one run, none of them in the gateway's access log, and the loss line failed.
    if (!retry && request.reusedSocket && (error.code === 'ECONNRESET' || error.code === 'EPIPE')) {
      result.retried++;
      attempt(started, true);
      return;
    }
    result.errors++;
    const code = error.code ?? error.message;
    result.errorCodes[code] = (result.errorCodes[code] ?? 0) + 1;
    done();
  });
}

function done() {
  inFlight--;
  if (!sending && inFlight === 0) finish();
}

const startedAt = performance.now();
const ticker = setInterval(() => {
  const elapsed = (performance.now() - startedAt) / 1000;
  if (elapsed >= seconds) {
    sending = false;
    clearInterval(ticker);
    if (inFlight === 0) finish();
    return;
  }
  const due = Math.floor(rate * elapsed) - result.sent - result.skipped;
  for (let i = 0; i < due; i++) {
    if (inFlight >= maxInFlight) result.skipped++;
    else send();
  }
}, 2);

// Whatever happens, the process ends: responses still missing 10 s after the end count as errors.
const deadline = setTimeout(() => {
  result.errors += inFlight;
  result.unfinished = inFlight;
  if (inFlight > 0) result.errorCodes.unfinished = inFlight;
  finish();
}, (seconds + 10) * 1000);

let finished = false;
function finish() {
  if (finished) return;
  finished = true;
  clearTimeout(deadline);
  clearInterval(ticker);
  const elapsed = (performance.now() - startedAt) / 1000;
  latenciesMs.sort((a, b) => a - b);
  const at = (p) => (latenciesMs.length === 0 ? null : Math.round(latenciesMs[Math.min(latenciesMs.length - 1, Math.floor((p / 100) * latenciesMs.length))] * 1000) / 1000);
  result.achievedRate = Math.round(result.ok / Math.min(elapsed, seconds));
  result.latencyMs = { p50: at(50), p99: at(99), max: at(100) };
  process.stdout.write(`PACED_JSON ${JSON.stringify(result)}\n`);
  agent.destroy();
  process.exit(0);
}
