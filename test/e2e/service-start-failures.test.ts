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
  // One that takes what it should refuse listens for good: ended after a bound, it fails the test instead of hanging it.
  const bound = setTimeout(() => child.kill('SIGKILL'), 15_000);
  const code = await exitOf(child);
  clearTimeout(bound);
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

// An accepted key with no key of its own would be believed beside nothing: without GATEWAY_SIGNING_KEY a service believes
// any identity unsigned, so the accepted key would protect nothing and only look as if it did.
describe('a service given a signing key to accept but none of its own', () => {
  it.each([
    { desc: 'GATEWAY_SIGNING_KEY_ACCEPTED alone', env: { GATEWAY_SIGNING_KEY_ACCEPTED: 'the-next-gateway-signing-key-of-a-rotation-0123' } as Record<string, string>, says: /GATEWAY_SIGNING_KEY_ACCEPTED: needs GATEWAY_SIGNING_KEY/ },
    { desc: 'a GATEWAY_SIGNING_KEY_ACCEPTED under 32 characters', env: { GATEWAY_SIGNING_KEY: 'test-gateway-signing-key-shared-with-the-services', GATEWAY_SIGNING_KEY_ACCEPTED: 'short' }, says: /GATEWAY_SIGNING_KEY_ACCEPTED: must be at least 32 characters$/ },
  ])('refuses to start with $desc, in one line that never echoes a key', async ({ env, says }) => {
    const { code, stderr } = await startService('services/users/main.js', { PORT: '0', ...env });
    expect(code).toBe(1);
    expect(stderr.trim().split('\n')).toEqual([expect.stringMatching(says)]);
    expect(stderr).not.toContain('the-next-gateway');
    expect(stderr).not.toContain('short');
  });
});

// The gateway refused these keys in production and the services took them: one rule for both (keyMaterialProblem).
describe('a service in production given a signing key the gateway refuses', () => {
  it.each<{ desc: string; env: Record<string, string>; says: RegExp }>([
    { desc: 'a GATEWAY_SIGNING_KEY ending in a newline', env: { GATEWAY_SIGNING_KEY: 'test-gateway-signing-key-shared-with-the-services\n' }, says: /^user-service: config: GATEWAY_SIGNING_KEY: must not begin or end with blanks or a line break/ },
    { desc: 'a GATEWAY_SIGNING_KEY of one piece said four times', env: { GATEWAY_SIGNING_KEY: '01234567'.repeat(4) }, says: /^user-service: config: GATEWAY_SIGNING_KEY: is too regular to be a secret/ },
    {
      desc: 'a GATEWAY_SIGNING_KEY_ACCEPTED starting with a space',
      env: { GATEWAY_SIGNING_KEY: 'test-gateway-signing-key-shared-with-the-services', GATEWAY_SIGNING_KEY_ACCEPTED: ' the-next-gateway-signing-key-of-a-rotation-0123' },
      says: /^user-service: config: GATEWAY_SIGNING_KEY_ACCEPTED: must not begin or end with blanks or a line break/,
    },
  ])('refuses to start with $desc, in one line that never echoes a key', async ({ env, says }) => {
    const { code, stderr } = await startService('services/users/main.js', { PORT: '0', NODE_ENV: 'production', ...env });
    expect(code).toBe(1);
    expect(stderr.trim().split('\n')).toEqual([expect.stringMatching(says)]);
    expect(stderr).not.toContain('signing-key-');
    expect(stderr).not.toContain('01234567');
  });
});

// The services coerced their ports with Number(): "   " was port 0 (a random port nobody dialled), "0x10" port 16;
// and order-service took a URL with a path or credentials, then called its own paths on the origin alone.
describe('a service with a variable the gateway would refuse', () => {
  it.each<{ desc: string; entry: string; env: Record<string, string>; line: RegExp }>([
    { desc: 'a PORT of spaces (it listened on a random port)', entry: 'services/users/main.js', env: { PORT: '   ' }, line: /^user-service: config: PORT: must be a port number, decimal digits only \(got " {3}"\)$/ },
    { desc: 'a hexadecimal PORT (it listened on 16)', entry: 'services/users/main.js', env: { PORT: '0x10' }, line: /^user-service: config: PORT: must be a port number/ },
    { desc: 'a GRPC_PORT with a leading space', entry: 'services/notifications/main.js', env: { PORT: '0', GRPC_PORT: ' 50053' }, line: /^notification-service: config: GRPC_PORT: must be a port number/ },
    { desc: 'a USER_SERVICE_URL with a path (dropped)', entry: 'services/orders/main.js', env: { PORT: '0', USER_SERVICE_URL: 'http://127.0.0.1:4001/users-svc' }, line: /^order-service: config: USER_SERVICE_URL: must be an origin .*\(got "http:\/\/127\.0\.0\.1:4001\/users-svc"\)$/ },
    { desc: 'a NOTIF_SERVICE_URL with credentials, never echoed', entry: 'services/orders/main.js', env: { PORT: '0', NOTIF_SERVICE_URL: 'http://svc:s3cret@127.0.0.1:4003' }, line: /^order-service: config: NOTIF_SERVICE_URL: must be an origin .*\(got "http:\/\/svc:\*\*\*@127\.0\.0\.1:4003"\)$/ },
    // The services masked only a password without `/`, `?`, `#` or `@` (the gateway had stopped doing so): the rest showed.
    { desc: 'a NOTIF_SERVICE_URL whose password holds a slash and an at sign, never echoed', entry: 'services/orders/main.js', env: { PORT: '0', NOTIF_SERVICE_URL: 'http://svc:ab/cd@ef@127.0.0.1:4003' }, line: /^order-service: config: NOTIF_SERVICE_URL: must be an http\(s\) URL .*\(got "http:\/\/svc:\*\*\*@127\.0\.0\.1:4003"\)$/ },
    { desc: 'a NOTIF_GRPC_SERVICE_URL on port 0', entry: 'services/orders/main.js', env: { PORT: '0', NOTIF_GRPC_SERVICE_URL: 'http://127.0.0.1:0' }, line: /^order-service: config: NOTIF_GRPC_SERVICE_URL: must name a port other than 0/ },
  ])('$desc: exits 1 with one line naming it', async ({ entry, env, line }) => {
    const { code, stderr } = await startService(entry, env);
    expect({ code, lines: stderr.trim().split('\n') }).toEqual({ code: 1, lines: [expect.stringMatching(line)] });
  });
});
