import { spawn } from 'node:child_process';
import path from 'node:path';
import { SERVICE_NAME } from '../../otel/wire-names';
import { parseConfig } from '../../src/config';
import { createGateway } from '../../src/gateway';
import { createApp as createUsersApp } from '../../services/users/app';
import { listen, listenRecording, memoryLogger, type TestServer } from '../helpers/servers';
import { login } from '../helpers/stack';
import { shippedConfigFile, TEST_JWT_SECRET, TEST_SIGNING_KEY } from '../helpers/test-config';
import { signToken } from '../helpers/tokens';

const ROOT = path.join(__dirname, '../..');

/** A gateway in development mode with no JWT_SECRET at all, in front of one user-service. */
async function gatewayWithoutSecret(usersUrl: string): Promise<{ server: TestServer; secretSource: string }> {
  const config = parseConfig(shippedConfigFile(), { USER_SERVICE_URL: usersUrl, ORDER_SERVICE_URL: usersUrl, NOTIF_SERVICE_URL: usersUrl });
  return { server: await listen(createGateway(config, { logger: memoryLogger('gateway').logger }).callback()), secretSource: config.auth.secretSource };
}

describe('the signing secret when JWT_SECRET is not set', () => {
  let users: TestServer;
  let first: TestServer;
  let second: TestServer;

  beforeAll(async () => {
    users = await listenRecording(await createUsersApp({ logger: memoryLogger('user-service').logger }));
    const a = await gatewayWithoutSecret(users.url);
    const b = await gatewayWithoutSecret(users.url);
    expect([a.secretSource, b.secretSource]).toEqual(['generated', 'generated']);
    first = a.server;
    second = b.server;
  });
  afterAll(async () => {
    await Promise.all([first.close(), second.close(), users.close()]);
  });

  it('issues tokens that the same gateway accepts', async () => {
    const token = await login(first.url, 'bob@example.com', 'builder');
    expect((await fetch(`${first.url}/api/users/2`, { headers: { authorization: `Bearer ${token}` } })).status).toBe(200);
  });

  it('refuses tokens of another process: each generates a secret nobody else knows', async () => {
    const token = await login(first.url, 'bob@example.com', 'builder');
    const reply = await fetch(`${second.url}/api/users/2`, { headers: { authorization: `Bearer ${token}` } });
    expect(reply.status).toBe(401);
    expect(await reply.json()).toMatchObject({ code: 'invalid_token' });
  });

  it('refuses an admin token minted offline with the formerly documented development secret', async () => {
    const forged = await signToken({ secret: 'dev-only-insecure-jwt-secret-change-me', subject: '666', claims: { role: 'admin' } });
    const reply = await fetch(`${first.url}/api/users`, { headers: { authorization: `Bearer ${forged}` } });
    expect(reply.status).toBe(401);
    expect((users as TestServer & { requests: unknown[] }).requests.filter((request) => (request as { url: string }).url === '/users')).toHaveLength(0);
  });
});

describe('demo accounts', () => {
  it('exist in development and not in production (user-service seeds none)', async () => {
    const logger = memoryLogger('user-service').logger;
    const development = await listen((await createUsersApp({ logger, seedDemoAccounts: true })).callback());
    const production = await listen((await createUsersApp({ logger, seedDemoAccounts: false })).callback());
    try {
      const check = (origin: string) =>
        fetch(`${origin}/internal/credentials/verify`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'alice@example.com', password: 'wonderland' }) });
      expect((await check(development.url)).status).toBe(200);
      expect((await check(production.url)).status).toBe(401);
    } finally {
      await Promise.all([development.close(), production.close()]);
    }
  });
});

/** Runs one process from dist/ until it logs `until` (or exits), with an explicit environment. */
function runUntil(entry: string, env: Record<string, string>, until: RegExp): Promise<{ stdout: string; stderr: string; code: number | null }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(ROOT, 'dist', entry)], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', OTEL_SDK_DISABLED: 'true', HOST: '127.0.0.1', PORT: '0', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`no ${until} within 15 s; stdout:\n${stdout}\nstderr:\n${stderr}`));
    }, 15_000);
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      if (until.test(stdout)) child.kill('SIGTERM');
    });
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ stdout, stderr, code });
    });
  });
}

describe('what the processes say at start-up', () => {
  it('the gateway says once that it generated a secret, and what that means', async () => {
    const { stdout } = await runUntil('src/main.js', { NODE_ENV: 'development' }, /gateway listening/);
    const warnings = stdout.split('\n').filter((line) => line.includes('JWT_SECRET is not set'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/random secret.*restarts.*other replicas/);
  });

  it('the gateway refuses to start in production without JWT_SECRET', async () => {
    const { stderr, code } = await runUntil('src/main.js', { NODE_ENV: 'production' }, /gateway listening/);
    expect(code).toBe(1);
    expect(stderr).toMatch(/JWT_SECRET \(auth\.secret\): must be set/);
  });

  it('the gateway warns in production when no allowed hosts are set', async () => {
    const { stdout } = await runUntil('src/main.js', { NODE_ENV: 'production', JWT_SECRET: TEST_JWT_SECRET, GATEWAY_SIGNING_KEY: TEST_SIGNING_KEY }, /gateway listening/);
    expect(stdout).toMatch(/gateway listening/);
    expect(stdout).toMatch(/allowedHosts is not set/);
    expect(stdout).not.toMatch(/JWT_SECRET is not set/);
  });

  it('user-service says the demo accounts are development-only, and seeds none in production', async () => {
    const development = await runUntil('services/users/main.js', { NODE_ENV: 'development' }, /user-service listening/);
    expect(development.stdout).toMatch(/demo accounts seeded \(development only/);
    const production = await runUntil('services/users/main.js', { NODE_ENV: 'production', GATEWAY_SIGNING_KEY: TEST_SIGNING_KEY }, /user-service listening/);
    expect(production.stdout).toMatch(/user-service listening/);
    expect(production.stdout).not.toMatch(/demo accounts/);
  });

  it('the gateway refuses to start in production without GATEWAY_SIGNING_KEY, and never echoes a short one', async () => {
    const unset = await runUntil('src/main.js', { NODE_ENV: 'production', JWT_SECRET: TEST_JWT_SECRET }, /gateway listening/);
    expect(unset.code).toBe(1);
    expect(unset.stderr).toMatch(/GATEWAY_SIGNING_KEY \(proxy\.signingKey\): must be set \(GATEWAY_SIGNING_KEY\) in production/);
    const short = await runUntil('src/main.js', { NODE_ENV: 'development', GATEWAY_SIGNING_KEY: 'short-key-1234' }, /gateway listening/);
    expect(short.code).toBe(1);
    expect(short.stderr).toMatch(/GATEWAY_SIGNING_KEY \(proxy\.signingKey\): must be at least 32 characters/);
    expect(short.stderr).not.toContain('short-key-1234');
  });

  it.each(['users', 'orders', 'notifications'] as const)('%s: the service refuses to start in production without GATEWAY_SIGNING_KEY, and warns without it elsewhere', async (service) => {
    const name = SERVICE_NAME[service];
    const production = await runUntil(`services/${service}/main.js`, { NODE_ENV: 'production' }, new RegExp(`${name} listening`));
    expect(production.code).toBe(1);
    expect(production.stderr).toMatch(/GATEWAY_SIGNING_KEY: must be set in production/);
    const development = await runUntil(`services/${service}/main.js`, { NODE_ENV: 'development' }, new RegExp(`${name} listening`));
    expect(development.stdout).toMatch(/GATEWAY_SIGNING_KEY is unset: identity headers are believed from any peer/);
    const keyed = await runUntil(`services/${service}/main.js`, { NODE_ENV: 'development', GATEWAY_SIGNING_KEY: TEST_SIGNING_KEY }, new RegExp(`${name} listening`));
    expect(keyed.stdout).toMatch(new RegExp(`${name} listening`));
    expect(keyed.stdout).not.toMatch(/GATEWAY_SIGNING_KEY/);
  });
});
