import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import { Redis } from 'ioredis';
import { waitForRedis } from '../../src/rate-limit-store';
import { freePort } from './servers';

/** A key prefix no other test run shares, so tests can use the machine's Redis side by side. */
export function isolatedKeyPrefix(): string {
  return `koa-gateway-test:${randomUUID()}`;
}

/**
 * Waits for a client to connect and fails loudly when it does not: without Redis the gateway's limiter falls back
 * to its store-down policy, and a test would see wrong statuses instead of the actual cause.
 */
export async function requireRedis(redis: Redis, url: string, timeoutMs = 3000): Promise<void> {
  if (await waitForRedis(redis, timeoutMs)) return;
  const { host } = new URL(url);
  throw new Error(`Redis at ${host} is not reachable (${url}, no connection within ${timeoutMs} ms); these tests need a running Redis there.`);
}

/** Deletes every key under a prefix (the test's own). */
export async function deleteKeys(url: string, prefix: string): Promise<void> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
  // connect() rejects with the cause; without a listener ioredis would also print an unhandled 'error' event.
  redis.on('error', () => undefined);
  await redis.connect().catch((error: unknown) => {
    throw new Error(`Redis at ${new URL(url).host} is not reachable (${url}): ${(error as Error).message}`);
  });
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
    if (keys.length > 0) await redis.del(...keys);
    cursor = next;
  } while (cursor !== '0');
  redis.disconnect();
}

export interface OwnRedis {
  url: string;
  stop(): Promise<void>;
  start(): Promise<void>;
  /** SIGSTOP: the connection stays up, nothing is answered (a hung Redis, not a down one). */
  pause(): void;
  /** SIGCONT. */
  resume(): void;
}

/**
 * A redis-server of the test's own on a free loopback port, which the test may stop and start again. `args`:
 * its settings (default: no persistence, as shipped).
 */
export async function startOwnRedis(args: readonly string[] = ['--save', '', '--appendonly', 'no']): Promise<OwnRedis> {
  const port = await freePort();
  let child: ChildProcess | undefined;
  const url = `redis://127.0.0.1:${port}`;
  const start = async () => {
    let spawnError: Error | undefined;
    child = spawn('redis-server', [...args, '--port', String(port), '--bind', '127.0.0.1'], { stdio: 'ignore' });
    // Without a listener, a missing redis-server binary (ENOENT) would be an uncaught 'error' event.
    child.on('error', (error) => (spawnError = error));
    for (let attempt = 0; attempt < 100; attempt++) {
      if (spawnError) throw new Error(`redis-server could not be started (is it installed and on PATH?): ${spawnError.message}`);
      const up = await new Promise<boolean>((resolve) => {
        const socket = net.connect(port, '127.0.0.1', () => {
          socket.destroy();
          resolve(true);
        });
        socket.on('error', () => resolve(false));
      });
      if (up) return;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error(`redis-server did not start on ${port}`);
  };
  const stop = async () => {
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child!.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  };
  await start();
  return { url, start, stop, pause: () => void child?.kill('SIGSTOP'), resume: () => void child?.kill('SIGCONT') };
}
