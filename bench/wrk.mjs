// Runs wrk (Debian's `wrk` package) once and returns its summary, read from bench/wrk-report.lua's JSON line.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const BENCH = path.dirname(fileURLToPath(import.meta.url));
const REPORT_SCRIPT = path.join(BENCH, 'wrk-report.lua');
/** wrk takes one script: the report's `done` with wrk-tokens.lua's `init` and `request`, written once. */
let tokensScript;
function reportWithTokensScript() {
  if (tokensScript) return tokensScript;
  tokensScript = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'bench-wrk-')), 'report-with-tokens.lua');
  fs.writeFileSync(tokensScript, `${fs.readFileSync(REPORT_SCRIPT, 'utf8')}\n${fs.readFileSync(path.join(BENCH, 'wrk-tokens.lua'), 'utf8')}`);
  return tokensScript;
}

/** `wrk 4.1.0`, or undefined when wrk is not installed. */
export function wrkVersion() {
  try {
    // wrk prints its banner and exits 1 when run without a URL.
    execFileSync('wrk', ['--version'], { stdio: 'pipe' });
  } catch (error) {
    if (error.code === 'ENOENT') return undefined;
    const banner = `${error.stdout ?? ''}${error.stderr ?? ''}`;
    return /wrk (\S+)/.exec(banner)?.[0] ?? 'wrk (unknown version)';
  }
  return 'wrk (unknown version)';
}

/**
 * GET `url` over `connections` keep-alive connections from one wrk thread for `seconds`. Resolves with
 * { requests, seconds, rps, errors, latencyMs: { p50, p90, p99, max, mean } }. wrk is killed if it overruns.
 * `tokens` ({ file, count, next }): each request carries the next of the file's tokens (one per line), round robin
 * from index `next`, as a bearer token; `next` is moved on past the requests the run made, for the case's next run.
 */
export async function runWrk({ url, connections, seconds, headers = {}, tokens }) {
  const args = ['-t1', `-c${connections}`, `-d${seconds}s`, '--timeout', '2s', '-s', tokens ? reportWithTokensScript() : REPORT_SCRIPT];
  for (const [name, value] of Object.entries(headers)) args.push('-H', `${name}: ${value}`);
  args.push(url);
  if (tokens) args.push('--', tokens.file, String(tokens.next));
  const result = await wrkRun(args, seconds);
  // Past the ones sent but not answered when it stopped too (at most one per connection).
  if (tokens) tokens.next = (tokens.next + result.requests + connections) % tokens.count;
  return result;
}

function wrkRun(args, seconds) {
  return new Promise((resolve, reject) => {
    const child = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (output += chunk));
    const killer = setTimeout(() => child.kill('SIGKILL'), (seconds + 15) * 1000);
    child.once('error', (error) => {
      clearTimeout(killer);
      reject(error);
    });
    child.once('exit', (code) => {
      clearTimeout(killer);
      const line = /^WRK_JSON (.*)$/m.exec(output)?.[1];
      if (!line) {
        reject(new Error(`wrk exited ${code} without a summary:\n${output}`));
        return;
      }
      const summary = JSON.parse(line);
      const elapsed = summary.duration_us / 1e6;
      const e = summary.errors;
      const ms = (us) => Math.round(us) / 1000;
      resolve({
        requests: summary.requests,
        seconds: elapsed,
        rps: summary.requests / elapsed,
        errors: e.connect + e.read + e.write + e.status + e.timeout,
        errorKinds: e,
        latencyMs: { p50: ms(summary.latency_us.p50), p90: ms(summary.latency_us.p90), p99: ms(summary.latency_us.p99), max: ms(summary.latency_us.max), mean: ms(summary.latency_us.mean) },
      });
    });
  });
}

/**
 * Unmeasured load before a server's first measured run: `seconds` wrk runs of 1 s each, so its connections are
 * also closed and opened again several times. A gateway measured after one 3 s run was still compiling: the
 * first close of wrk's connections deoptimised the code optimised without it (V8's "wrong map" in the socket
 * and response paths), and its next 1 s runs took 290, 240, 220, 195 µs per request before settling at ~160;
 * after six to eight 1 s runs the first measured second was at that level (bench/RESULTS.md, thirty-first session).
 */
export async function warmUp({ url, connections, seconds, headers = {}, tokens }) {
  // A count of runs: NaN or 2.5 would silently warm up for no time or for 3 s.
  if (!Number.isInteger(seconds) || seconds < 0) throw new Error(`warm-up of ${seconds} s: expected a whole number of seconds`);
  for (let run = 0; run < seconds; run++) await runWrk({ url, connections, seconds: 1, headers, tokens });
}

/** The warm-up's default length, seconds (eight 1 s runs): what the measurements above found enough. */
export const WARMUP_SECONDS = 8;
