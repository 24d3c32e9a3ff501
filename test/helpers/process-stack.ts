import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { callerKeyFromGatewayKey, serviceSigningKey } from '../../src/gateway-signature';
import { TEST_JWT_SECRET, TEST_SIGNING_KEY } from './test-config';

/**
 * The four real processes from dist/ (built by `npm test` before Jest runs), each with the telemetry
 * bootstrap preloaded as in production, on ephemeral loopback ports.
 */
const ROOT = path.resolve(__dirname, '../..');
const REGISTER = path.join(ROOT, 'dist/otel/register.js');

export interface RunningProcess {
  name: string;
  child: ChildProcess;
  url: string;
  /** JSON lines this process printed on stdout. */
  lines: Record<string, unknown>[];
  stderr: string[];
}

export interface ProcessStack {
  gatewayUrl: string;
  processes: RunningProcess[];
  /** Sends the signal to all four and resolves with their exit codes once they exited. */
  stop(signal?: NodeJS.Signals): Promise<(number | null)[]>;
}

/**
 * The whole environment of a child process: PATH and exactly the variables given (undefined ones left out).
 * Nothing else of the test runner's environment (REDIS_URL, JWT_*, GATEWAY_CONFIG, OTEL_*, ...) leaks in.
 */
export function childEnvironment(env: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const given = Object.entries(env).filter((entry): entry is [string, string] => entry[1] !== undefined);
  return { PATH: process.env.PATH ?? '', ...Object.fromEntries(given) };
}

/**
 * Calls `onLine` with each JSON log line a stream prints, as it arrives (lines split across chunks are
 * joined; anything that is not JSON, such as console exporter output, is skipped).
 */
export function onJsonLines(stream: NodeJS.ReadableStream, onLine: (line: Record<string, unknown>) => void): void {
  let partial = '';
  stream.on('data', (chunk: Buffer) => {
    partial += chunk.toString();
    const complete = partial.split('\n');
    partial = complete.pop()!;
    for (const text of complete) {
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(text) as Record<string, unknown>;
      } catch {
        continue;
      }
      onLine(line);
    }
  });
}

/**
 * The gateway alone from dist/ (port 0, telemetry off, the test secret, then `env`), with its JSON log lines
 * collected; `waitForLine` resolves with the first line of that message, or throws once the process exited.
 */
export function spawnGateway(env: Record<string, string>, nodeArgs: readonly string[] = []) {
  const child = spawn(process.execPath, [...nodeArgs, path.join(ROOT, 'dist/src/main.js')], {
    cwd: ROOT,
    env: childEnvironment({ PORT: '0', JWT_SECRET: TEST_JWT_SECRET, OTEL_SDK_DISABLED: 'true', ...env }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Record<string, unknown>[] = [];
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  onJsonLines(child.stdout!, (line) => lines.push(line));
  async function waitForLine(message: string, timeoutMs = 15_000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const line = lines.find((each) => each.message === message);
      if (line) return line;
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`no "${message}" line; stderr:\n${stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
  return { child, lines, waitForLine, stderr: () => stderr };
}

/** Resolves with the child's exit code once it exited. */
export function exitOf(child: ChildProcess): Promise<number | null> {
  return child.exitCode !== null ? Promise.resolve(child.exitCode) : new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

/** One of the processes, from dist/ with the telemetry bootstrap, once it logged that it listens. */
export function startProcess(name: string, entry: string, env: Record<string, string>): Promise<RunningProcess> {
  const child = spawn(process.execPath, ['--require', REGISTER, path.join(ROOT, 'dist', entry)], {
    cwd: ROOT,
    env: childEnvironment({ NODE_ENV: 'test', PORT: '0', HOST: '127.0.0.1', ...env }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const running: RunningProcess = { name, child, url: '', lines: [], stderr: [] };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not start:\n${running.stderr.join('')}`)), 20_000);
    onJsonLines(child.stdout!, (line) => {
      running.lines.push(line);
      if (typeof line.url === 'string' && String(line.message).endsWith('listening')) {
        running.url = line.url;
        clearTimeout(timer);
        resolve(running);
      }
    });
    child.stderr!.on('data', (chunk: Buffer) => running.stderr.push(chunk.toString()));
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (!running.url) reject(new Error(`${name} exited with ${code}:\n${running.stderr.join('')}`));
    });
  });
}

export async function startProcessStack(callerEnv: Record<string, string> = {}, ordersEnv: Record<string, string> = {}): Promise<ProcessStack> {
  // The gateway's signing key (a test may set its own, or '' for none) and each service's own, derived from it, as deployed.
  const env = { GATEWAY_SIGNING_KEY: TEST_SIGNING_KEY, ...callerEnv };
  const keyOf = (service: string) => (env.GATEWAY_SIGNING_KEY === '' ? '' : serviceSigningKey(env.GATEWAY_SIGNING_KEY, service));
  const callerKeyOf = (service: string) => (env.GATEWAY_SIGNING_KEY === '' ? '' : callerKeyFromGatewayKey(env.GATEWAY_SIGNING_KEY, service, 'orders'));
  const processes: RunningProcess[] = [];
  try {
    const [users, notifications] = await Promise.all([
      startProcess('user-service', 'services/users/main.js', { ...env, GATEWAY_SIGNING_KEY: keyOf('users') }),
      startProcess('notification-service', 'services/notifications/main.js', { ...env, GATEWAY_SIGNING_KEY: keyOf('notifications') }),
    ]);
    processes.push(users, notifications);
    const orders = await startProcess('order-service', 'services/orders/main.js', {
      ...env,
      GATEWAY_SIGNING_KEY: keyOf('orders'),
      // The keys the two it calls give it as a caller, as deployed.
      USER_SERVICE_SIGNING_KEY: callerKeyOf('users'),
      NOTIF_SERVICE_SIGNING_KEY: callerKeyOf('notifications'),
      USER_SERVICE_URL: users.url,
      NOTIF_SERVICE_URL: notifications.url,
      ...ordersEnv,
    });
    processes.push(orders);
    const gateway = await startProcess('gateway', 'src/main.js', {
      JWT_SECRET: TEST_JWT_SECRET,
      USER_SERVICE_URL: users.url,
      ORDER_SERVICE_URL: orders.url,
      NOTIF_SERVICE_URL: notifications.url,
      ...env,
    });
    processes.push(gateway);
    return {
      gatewayUrl: gateway.url,
      processes,
      stop: (signal = 'SIGTERM') => stopAll(processes, signal),
    };
  } catch (error) {
    await stopAll(processes, 'SIGKILL');
    throw error;
  }
}

function stopAll(processes: RunningProcess[], signal: NodeJS.Signals): Promise<(number | null)[]> {
  return Promise.all(
    processes.map(
      ({ child }) =>
        new Promise<number | null>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode);
          const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
          child.once('exit', (code) => {
            clearTimeout(killer);
            resolve(code);
          });
          child.kill(signal);
        }),
    ),
  );
}
