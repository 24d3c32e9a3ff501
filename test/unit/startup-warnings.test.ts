import { parseConfig } from '../../src/config';
import { startupWarnings } from '../../src/startup-warnings';
import { memoryLogger } from '../helpers/servers';
import { shippedConfigFile, TEST_JWT_SECRET, TEST_SIGNING_KEY } from '../helpers/test-config';

/** The warnings a gateway with this file patch and env logs at start. */
function warningsFor(patch: Record<string, unknown>, env: Record<string, string> = {}): string[] {
  const { logger, lines } = memoryLogger('gateway');
  startupWarnings(parseConfig({ ...shippedConfigFile(), ...patch }, { JWT_SECRET: TEST_JWT_SECRET, GATEWAY_SIGNING_KEY: TEST_SIGNING_KEY, ...env }), logger);
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

  // Compose runs the gateway in development, where it starts without one: only the services said so (an outside review).
  it('warns when the gateway signs nothing (no GATEWAY_SIGNING_KEY)', () => {
    expect(warningsFor({}, { GATEWAY_SIGNING_KEY: '' })).toEqual([expect.stringMatching(/^GATEWAY_SIGNING_KEY is not set: requests to the services carry no signature/)]);
  });

  it('warns when token keys come over plain http (production refuses them), not over https', () => {
    const jwks = (url: string) => ({ auth: { jwks: { url, issuer: 'https://idp.example.com/', audience: 'koa-gateway' } } });
    expect(warningsFor(jwks('http://idp.example.com/.well-known/jwks.json'))).toEqual([expect.stringMatching(/^auth\.jwks\.url is plain http/)]);
    expect(warningsFor(jwks('https://idp.example.com/.well-known/jwks.json'))).toEqual([]);
    // A credential in its query is not written to the log (as the key fetch's own lines redact it).
    const { logger, lines } = memoryLogger('gateway');
    startupWarnings(parseConfig({ ...shippedConfigFile(), ...jwks('http://idp.example.com/jwks?api_key=SUPERSECRET123') }, { JWT_SECRET: TEST_JWT_SECRET, GATEWAY_SIGNING_KEY: TEST_SIGNING_KEY }), logger);
    expect(JSON.stringify(lines)).not.toContain('SUPERSECRET123');
  });

  it('warns when every peer may set X-Forwarded-For (trustProxy without trustedProxies), not when proxies are listed', () => {
    expect(warningsFor({ trustProxy: true })).toEqual([expect.stringMatching(/^trustProxy is on with no trustedProxies/)]);
    expect(warningsFor({ trustProxy: true, trustedProxies: ['10.0.0.0/8'] })).toEqual([]);
  });
});
