import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { callerSigningKey, serviceSigningKey } from '../../src/gateway-signature';

describe('npm run service-key (dist/src/tools/service-key.js, built by npm test)', () => {
  const tool = path.join(__dirname, '../../dist/src/tools/service-key.js');
  const run = (args: string[], env: Record<string, string>) => promisify(execFile)(process.execPath, [tool, ...args], { env: { PATH: process.env.PATH ?? '', ...env } });
  const GATEWAY_KEY = 'a-gateway-signing-key-for-the-tool-0123456789';

  it('prints its usage on stdout when asked (--help)', async () => {
    const { stdout } = await run(['--help'], {});
    expect(stdout).toMatch(/^usage: GATEWAY_SIGNING_KEY=\.\.\. service-key /);
  });

  it("prints one service's key alone, as the gateway derives it", async () => {
    expect(existsSync(tool)).toBe(true);
    const { stdout } = await run(['users'], { GATEWAY_SIGNING_KEY: GATEWAY_KEY });
    expect(stdout).toBe(`${serviceSigningKey(GATEWAY_KEY, 'users')}\n`);
  });

  it("prints compose's variables for several, one line each", async () => {
    const { stdout } = await run(['--env', 'users', 'orders', 'notifications', 'billing-api'], { GATEWAY_SIGNING_KEY: GATEWAY_KEY });
    expect(stdout.split('\n')).toEqual([
      `USERS_SIGNING_KEY=${serviceSigningKey(GATEWAY_KEY, 'users')}`,
      `ORDERS_SIGNING_KEY=${serviceSigningKey(GATEWAY_KEY, 'orders')}`,
      `NOTIFICATIONS_SIGNING_KEY=${serviceSigningKey(GATEWAY_KEY, 'notifications')}`,
      `BILLING_API_SIGNING_KEY=${serviceSigningKey(GATEWAY_KEY, 'billing-api')}`,
      '',
    ]);
  });

  it("prints the keys services give a caller, derived from each one's own key, alone or as compose's variables", async () => {
    const alone = await run(['--caller', 'orders', 'users'], { GATEWAY_SIGNING_KEY: GATEWAY_KEY });
    expect(alone.stdout).toBe(`${callerSigningKey(serviceSigningKey(GATEWAY_KEY, 'users'), 'orders')}\n`);
    const lines = await run(['--env', 'users', '--caller', 'orders', 'notifications'], { GATEWAY_SIGNING_KEY: GATEWAY_KEY });
    expect(lines.stdout.split('\n')).toEqual([
      `ORDERS_USERS_CALLER_KEY=${callerSigningKey(serviceSigningKey(GATEWAY_KEY, 'users'), 'orders')}`,
      `ORDERS_NOTIFICATIONS_CALLER_KEY=${callerSigningKey(serviceSigningKey(GATEWAY_KEY, 'notifications'), 'orders')}`,
      '',
    ]);
  });

  it.each<[string, string[], Record<string, string>, RegExp]>([
    ['with --caller and no name after it', ['users', '--caller'], { GATEWAY_SIGNING_KEY: GATEWAY_KEY }, /--caller needs the calling service's name/],
    // In `--from-literal=users="$(...)"` the usage text on stdout with status 0 became the key.
    ['with no service named', ['--caller', 'orders'], { GATEWAY_SIGNING_KEY: GATEWAY_KEY }, /no service named\nusage:/],
    ['with no argument at all', [], { GATEWAY_SIGNING_KEY: GATEWAY_KEY }, /no service named/],
    ['with a key pasted as the caller, never echoing it', ['--caller', 'Secr3t+Key/With=Symbols', 'users'], { GATEWAY_SIGNING_KEY: GATEWAY_KEY }, /^service-key: --caller needs[^S]*$/],
    ['without the gateway key', ['users'], {}, /GATEWAY_SIGNING_KEY is not set/],
    ['with a gateway key shorter than the gateway takes', ['users'], { GATEWAY_SIGNING_KEY: 'short' }, /at least 32 characters/],
    ['for a name no service of the config can have', ['Users'], { GATEWAY_SIGNING_KEY: GATEWAY_KEY }, /the name given first is no service name/],
    ['for a key pasted where a name goes, never echoing it', ['--env', 'users', 'Secr3t+Key/With=Symbols'], { GATEWAY_SIGNING_KEY: GATEWAY_KEY }, /^service-key: the name given second is no service name[^S]*$/],
    ['for several services without --env', ['users', 'orders'], { GATEWAY_SIGNING_KEY: GATEWAY_KEY }, /add --env/],
  ])('fails %s, saying why, printing no key', async (_desc, args, env, says) => {
    const failed = await run(args, env).then(
      () => undefined,
      (error: { code: number; stdout: string; stderr: string }) => error,
    );
    expect(failed).toMatchObject({ code: 1, stdout: '', stderr: expect.stringMatching(says) });
  });
});
