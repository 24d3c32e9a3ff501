import { parseConfig } from '../../src/config';
import { startupWarnings } from '../../src/startup-warnings';
import { memoryLogger } from '../helpers/servers';
import { shippedConfigFile, TEST_JWT_SECRET } from '../helpers/test-config';

/** The warnings a gateway with this file patch and env logs at start. */
function warningsFor(patch: Record<string, unknown>, env: Record<string, string> = {}): string[] {
  const { logger, lines } = memoryLogger('gateway');
  startupWarnings(parseConfig({ ...shippedConfigFile(), ...patch }, { JWT_SECRET: TEST_JWT_SECRET, ...env }), logger);
  return lines.filter((line) => line.level === 'warn').map((line) => String(line.message));
}

describe('start-up warnings about configurations that are allowed but open', () => {
  it('says nothing for the shipped configuration', () => {
    expect(warningsFor({})).toEqual([]);
  });

  it.each(['0.0.0.0', '::', '10.0.0.5'])('warns when the internal listener is on %s (no authentication on /admin/reload)', (host) => {
    expect(warningsFor({ admin: { port: 3100, host } })).toEqual([expect.stringMatching(/^the internal listener is not on a loopback address/)]);
  });

  it.each(['127.0.0.1', '127.0.0.2', '::1', 'localhost'])('does not warn for the loopback address %s', (host) => {
    expect(warningsFor({ admin: { port: 3100, host } })).toEqual([]);
  });

  it('warns when every peer may set X-Forwarded-For (trustProxy without trustedProxies), not when proxies are listed', () => {
    expect(warningsFor({ trustProxy: true })).toEqual([expect.stringMatching(/^trustProxy is on with no trustedProxies/)]);
    expect(warningsFor({ trustProxy: true, trustedProxies: ['10.0.0.0/8'] })).toEqual([]);
  });
});
