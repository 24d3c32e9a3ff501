import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { childEnvironment, exitOf } from '../helpers/process-stack';

const DIST = path.resolve(__dirname, '../../dist');

/** A port held by this test for the duration of `run`. */
async function withBusyPort<T>(run: (port: number) => Promise<T>): Promise<T> {
  const holder = net.createServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  try {
    return await run((holder.address() as net.AddressInfo).port);
  } finally {
    holder.close();
  }
}

/** Starts a built service with exactly `env`, and returns its exit code and what it printed on stderr. */
async function startService(entry: string, env: Record<string, string>): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [path.join(DIST, entry)], { env: childEnvironment({ NODE_ENV: 'test', HOST: '127.0.0.1', OTEL_SDK_DISABLED: 'true', ...env }), stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const code = await exitOf(child);
  return { code, stderr };
}

// `npm start` beside another stack: a port in use is said in one line naming the service, as the gateway says it.
describe('a service that cannot listen', () => {
  it.each([
    { desc: 'user-service, its HTTP port in use', entry: 'services/users/main.js', env: (port: number) => ({ PORT: String(port) }), name: 'user-service' },
    { desc: 'notification-service, its gRPC port in use', entry: 'services/notifications/main.js', env: (port: number) => ({ PORT: '0', GRPC_PORT: String(port) }), name: 'notification-service' },
  ])('$desc: exits 1 with one line, no stack trace', async ({ entry, env, name }) =>
    withBusyPort(async (port) => {
      const { code, stderr } = await startService(entry, env(port));
      expect(code).toBe(1);
      expect(stderr.trim().split('\n')).toEqual([expect.stringMatching(new RegExp(`^${name}: failed to start: .*(EADDRINUSE|address already in use)`))]);
    }),
  );
});
