import { mkdtempSync, writeFileSync } from 'node:fs';
import { BlockList } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { ConfigError, describeRouteAccess, GATEWAY_ENV_VARIABLES, jsonSyntaxError, loadConfig, MAX_ROUTE_NAME_LENGTH, parseConfig, PUBLISHED_JWT_SECRETS } from '../../src/config';
import { shippedConfigFile, TEST_JWT_SECRET, TEST_SIGNING_KEY } from '../helpers/test-config';

describe('gateway config', () => {
  it('parses the shipped gateway.config.json into the documented defaults', () => {
    const config = parseConfig(shippedConfigFile());
    expect(config.port).toBe(3000);
    expect(config.host).toBe('127.0.0.1');
    // No JWT_SECRET outside production: a random secret of this process, never a known one.
    expect(config.auth.secretSource).toBe('generated');
    expect(config.auth.secret).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(parseConfig(shippedConfigFile()).auth.secret).not.toBe(config.auth.secret);
    expect(config.routes.map((route) => [route.prefix, route.service, route.upstreamPath])).toEqual([
      ['/api/auth/register', 'users', '/users'],
      ['/api/users', 'users', '/users'],
      ['/api/users', 'users', '/users'],
      ['/api/orders', 'orders', '/orders'],
      ['/api/notifications', 'notifications', '/notifications'],
      ['/api/v1/notifications', 'notifications', '/v1/notifications'],
    ]);
    expect(config.auth.loginRateLimit.max).toBeLessThan(config.rateLimit.max);
    expect(Object.isFrozen(config.routes[0])).toBe(true);
  });

  it('applies the tutorial gateway environment variables as overrides', () => {
    const config = parseConfig(shippedConfigFile(), {
      PORT: '8080',
      JWT_SECRET: 'tutorial-secret-9f2c71d04e8b3a56',
      USER_SERVICE_URL: 'http://users:4001',
      ORDER_SERVICE_URL: 'http://orders:4002',
      NOTIF_SERVICE_URL: 'http://notifications:4003',
      RATE_LIMIT_MAX: '7',
      RATE_LIMIT_WINDOW_MS: '1000',
      PROXY_TIMEOUT_MS: '2500',
      JWT_ISSUER: 'me',
      JWT_AUDIENCE: 'you',
    });
    expect(config).toMatchObject({ port: 8080, auth: { secret: 'tutorial-secret-9f2c71d04e8b3a56', issuer: 'me', audience: 'you' }, rateLimit: { max: 7, windowMs: 1000 }, proxy: { timeoutMs: 2500 } });
    expect(config.services.users!.url).toBe('http://users:4001');
    expect(config.services.notifications!.url).toBe('http://notifications:4003');
  });

  it('takes secrets, issuers and audiences made only of digits as the text they are (they were refused as numbers)', () => {
    const digits = '31415926535897932384626433832795';
    const config = parseConfig(shippedConfigFile(), { JWT_SECRET: digits, GATEWAY_SIGNING_KEY: `9${digits}`, JWT_ISSUER: '2026', JWT_AUDIENCE: '42' });
    expect(config.auth).toMatchObject({ secret: digits, issuer: '2026', audience: '42' });
    expect(config.proxy.signingKey).toBe(`9${digits}`);
  });

  it('lists every variable it reads', () => {
    expect(GATEWAY_ENV_VARIABLES).toEqual(expect.arrayContaining(['PORT', 'JWT_SECRET', 'USER_SERVICE_URL', 'ORDER_SERVICE_URL', 'NOTIF_SERVICE_URL', 'GATEWAY_CONFIG', 'RATE_LIMIT_MAX', 'RATE_LIMIT_WINDOW_MS', 'PROXY_TIMEOUT_MS', 'JWT_ISSUER', 'JWT_AUDIENCE']));
  });

  it.each([
    { desc: 'non-numeric RATE_LIMIT_MAX', env: { RATE_LIMIT_MAX: 'lots' }, message: /^config: RATE_LIMIT_MAX \(rateLimit\.max\): .*"lots"/ },
    // A number, just not a whole one: said so (it read "expected number, received string").
    { desc: 'a fractional RATE_LIMIT_MAX', env: { RATE_LIMIT_MAX: '1.5' }, message: /^config: RATE_LIMIT_MAX \(rateLimit\.max\): Invalid input: expected int, received number \(got 1\.5\)$/ },
    // A list element's problem names the variable the list came from.
    { desc: 'a bad host in ALLOWED_HOSTS', env: { ALLOWED_HOSTS: 'api.example.com,bad host' }, message: /^config: ALLOWED_HOSTS \(allowedHosts\.1\): must be a host name.*"bad host"/ },
    { desc: 'zero RATE_LIMIT_WINDOW_MS', env: { RATE_LIMIT_WINDOW_MS: '0' }, message: /^config: RATE_LIMIT_WINDOW_MS \(rateLimit\.windowMs\): .*0/ },
    { desc: 'port out of range', env: { PORT: '70000' }, message: /^config: PORT \(port\): / },
    { desc: 'service URL that is not http', env: { USER_SERVICE_URL: 'ftp://users' }, message: /^config: USER_SERVICE_URL \(services\.users\.url\): must be an http\(s\) URL/ },
    { desc: 'negative PROXY_TIMEOUT_MS', env: { PROXY_TIMEOUT_MS: '-5' }, message: /^config: PROXY_TIMEOUT_MS \(proxy\.timeoutMs\)/ },
    { desc: 'unknown NODE_ENV', env: { NODE_ENV: 'staging' }, message: /^config: NODE_ENV \(environment\)/ },
    { desc: 'production without JWT_SECRET', env: { NODE_ENV: 'production' }, message: /^config: JWT_SECRET \(auth\.secret\): must be set/ },
    { desc: 'the formerly published development secret, even outside production', env: { JWT_SECRET: PUBLISHED_JWT_SECRETS[0]! }, message: /^config: JWT_SECRET \(auth\.secret\): is a published secret/ },
    { desc: 'the formerly published development secret in production', env: { NODE_ENV: 'production', JWT_SECRET: PUBLISHED_JWT_SECRETS[0]! }, message: /^config: JWT_SECRET \(auth\.secret\): is a published secret/ },
    { desc: 'production with a short secret', env: { NODE_ENV: 'production', JWT_SECRET: 'short' }, message: /^config: JWT_SECRET \(auth\.secret\): must be at least 32/ },
    // Compose runs the gateway in development: `JWT_SECRET=secret` started silently, and a token minted with it was admin.
    { desc: 'a short secret outside production', env: { JWT_SECRET: 'secret' }, message: /^config: JWT_SECRET \(auth\.secret\): must be at least 32 characters/ },
    { desc: 'a secret of one repeated letter outside production', env: { JWT_SECRET: 'a'.repeat(40) }, message: /^config: JWT_SECRET \(auth\.secret\): is too regular to be a secret/ },
    { desc: 'a signing key of a few repeated characters outside production', env: { JWT_SECRET: TEST_JWT_SECRET, GATEWAY_SIGNING_KEY: 'abc'.repeat(12) }, message: /^config: GATEWAY_SIGNING_KEY \(proxy\.signingKey\): is too regular/ },
    { desc: 'production with a secret of 32 spaces', env: { NODE_ENV: 'production', JWT_SECRET: ' '.repeat(32), GATEWAY_SIGNING_KEY: TEST_SIGNING_KEY }, message: /^config: JWT_SECRET \(auth\.secret\): is too regular to be a secret/ },
    { desc: 'production with a secret of one repeated letter', env: { NODE_ENV: 'production', JWT_SECRET: 'a'.repeat(40), GATEWAY_SIGNING_KEY: TEST_SIGNING_KEY }, message: /^config: JWT_SECRET \(auth\.secret\): is too regular to be a secret/ },
    { desc: 'production with a signing key of a few repeated characters', env: { NODE_ENV: 'production', JWT_SECRET: TEST_JWT_SECRET, GATEWAY_SIGNING_KEY: 'abc'.repeat(12) }, message: /^config: GATEWAY_SIGNING_KEY \(proxy\.signingKey\): is too regular to be a secret/ },
    {
      desc: 'production with a JWKS URL over plain HTTP',
      env: { NODE_ENV: 'production', JWT_SECRET: TEST_JWT_SECRET, GATEWAY_SIGNING_KEY: TEST_SIGNING_KEY, JWKS_URL: 'http://idp.example.com/jwks.json', JWKS_ISSUER: 'idp', JWKS_AUDIENCE: 'api' },
      message: /^config: JWKS_URL \(auth\.jwks\.url\): must be https in production/,
    },
    { desc: 'a listening address of spaces', env: { HOST: '   ' }, message: /^config: HOST \(host\): must be an IP address or a host name/ },
    { desc: 'an internal listener address with a port in it', env: { ADMIN_HOST: '127.0.0.1:9000' }, message: /^config: ADMIN_HOST \(admin\.host\): must be an IP address or a host name/ },
    { desc: 'a proxy timeout beyond what a Node timer holds (it would fire at once)', env: { PROXY_TIMEOUT_MS: '2147483648' }, message: /^config: PROXY_TIMEOUT_MS \(proxy\.timeoutMs\): must be at most 2147483647 ms/ },
    { desc: 'a rate-limit window under a second (any rate passes)', env: { RATE_LIMIT_WINDOW_MS: '1' }, message: /^config: RATE_LIMIT_WINDOW_MS \(rateLimit\.windowMs\): must be at least 1000 ms/ },
    // These ended startup with a bare "Invalid URL" (a TypeError, not a ConfigError): no key, no value.
    { desc: 'a service URL that is no URL at all', env: { USER_SERVICE_URL: 'users-service' }, message: /^config: USER_SERVICE_URL \(services\.users\.url\): must be an http\(s\) URL \(got "users-service"\)/ },
    { desc: 'one of several service URLs that is no URL at all', env: { USER_SERVICE_URL: 'http://127.0.0.1:4001,users-2' }, message: /^config: USER_SERVICE_URL \(services\.users\.url\.1\): must be an http\(s\) URL \(got "users-2"\)/ },
    {
      desc: 'production with a JWKS URL that is no URL at all',
      env: { NODE_ENV: 'production', JWT_SECRET: TEST_JWT_SECRET, GATEWAY_SIGNING_KEY: TEST_SIGNING_KEY, JWKS_URL: 'idp/jwks.json', JWKS_ISSUER: 'idp', JWKS_AUDIENCE: 'api' },
      message: /^config: JWKS_URL \(auth\.jwks\.url\): must be an http\(s\) URL \(got "idp\/jwks\.json"\)/,
    },
    { desc: 'a service URL with a path (it would be dropped)', env: { USER_SERVICE_URL: 'http://127.0.0.1:4001/v2' }, message: /^config: USER_SERVICE_URL \(services\.users\.url\): must be an origin/ },
    { desc: 'a service URL with credentials', env: { USER_SERVICE_URL: 'http://svc:s3cret@127.0.0.1:4001' }, message: /^config: USER_SERVICE_URL \(services\.users\.url\): must be an origin.*\(got "http:\/\/svc:\*\*\*@/ },
    { desc: 'a service URL with a query', env: { USER_SERVICE_URL: 'http://127.0.0.1:4001?tenant=a' }, message: /^config: USER_SERVICE_URL \(services\.users\.url\): must be an origin/ },
    // A connection to port 0 is refused, always: every request to the service was a 502.
    { desc: 'a service URL on port 0', env: { USER_SERVICE_URL: 'http://127.0.0.1:0' }, message: /^config: USER_SERVICE_URL \(services\.users\.url\): must name a port other than 0/ },
    { desc: 'a service URL with an empty userinfo', env: { USER_SERVICE_URL: 'http://@127.0.0.1:4001' }, message: /^config: USER_SERVICE_URL \(services\.users\.url\): must be an origin/ },
    { desc: 'one of several service URLs with a fragment', env: { USER_SERVICE_URL: 'http://127.0.0.1:4001,http://127.0.0.1:4011/#x' }, message: /^config: USER_SERVICE_URL \(services\.users\.url\.1\): must be an origin/ },
    // One key, one purpose: every service holds the signing key; as the JWT secret too, any of them could mint tokens.
    { desc: 'a signing key equal to the JWT secret', env: { JWT_SECRET: TEST_JWT_SECRET, GATEWAY_SIGNING_KEY: TEST_JWT_SECRET }, message: /^config: GATEWAY_SIGNING_KEY \(proxy\.signingKey\): must differ from auth\.secret(?!.*\(got )/ },
    // The same key but for a newline `echo` added to one of them: it passed, and every service could mint tokens.
    { desc: 'a signing key equal to the JWT secret but for a trailing newline', env: { JWT_SECRET: `${TEST_JWT_SECRET}\n`, GATEWAY_SIGNING_KEY: TEST_JWT_SECRET }, message: /^config: (JWT_SECRET \(auth\.secret\): must not begin or end with blanks|GATEWAY_SIGNING_KEY \(proxy\.signingKey\): must differ from auth\.secret)/ },
    { desc: 'a signing key equal to the JWT secret but for blanks before it', env: { JWT_SECRET: TEST_JWT_SECRET, GATEWAY_SIGNING_KEY: ` \t${TEST_JWT_SECRET}` }, message: /^config: GATEWAY_SIGNING_KEY \(proxy\.signingKey\): (must not begin or end with blanks|must differ from auth\.secret)/ },
    { desc: 'production with a secret ending in a newline', env: { NODE_ENV: 'production', JWT_SECRET: `${TEST_JWT_SECRET}\n`, GATEWAY_SIGNING_KEY: TEST_SIGNING_KEY }, message: /^config: JWT_SECRET \(auth\.secret\): must not begin or end with blanks or a line break(?!.*\(got )/ },
    { desc: 'production with a signing key starting with a space', env: { NODE_ENV: 'production', JWT_SECRET: TEST_JWT_SECRET, GATEWAY_SIGNING_KEY: ` ${TEST_SIGNING_KEY}` }, message: /^config: GATEWAY_SIGNING_KEY \(proxy\.signingKey\): must not begin or end with blanks or a line break(?!.*\(got )/ },
    // Eight different characters, but one piece said four times: it passed the guessable rule.
    { desc: 'production with a secret of one piece repeated', env: { NODE_ENV: 'production', JWT_SECRET: '01234567'.repeat(4), GATEWAY_SIGNING_KEY: TEST_SIGNING_KEY }, message: /^config: JWT_SECRET \(auth\.secret\): is too regular to be a secret/ },
    { desc: 'production with a signing key of a password said twice', env: { NODE_ENV: 'production', JWT_SECRET: TEST_JWT_SECRET, GATEWAY_SIGNING_KEY: 'Tr0ub4dor&3horse'.repeat(2) }, message: /^config: GATEWAY_SIGNING_KEY \(proxy\.signingKey\): is too regular to be a secret/ },
  ])('refuses $desc with one line naming the key', ({ env, message }) => {
    expect(() => parseConfig(shippedConfigFile(), env)).toThrow(message);
    try {
      parseConfig(shippedConfigFile(), env);
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as Error).message).not.toContain('\n');
    }
  });

  it.each([
    // Named as PORT (port) and RATE_LIMIT_MAX (rateLimit.max): variables that were not set, while the file was wrong.
    { desc: 'a port written as text in the file, naming the key only', patch: (file: any) => (file.port = '3000'), message: /^config: port: Invalid input: expected number, received string \(got "3000"\)$/ },
    { desc: 'a limit of zero in the file, naming the key only', patch: (file: any) => (file.rateLimit.max = 0), message: /^config: rateLimit\.max: Too small: expected number to be >0 \(got 0\)$/ },
    { desc: 'a route naming an unknown service', patch: (file: any) => (file.routes[1].service = 'billing'), message: /^config: routes\.1\.service: names no entry of services/ },
    // Names every object has: `in` found them, and every request on the route was a 500.
    { desc: 'a route naming a service toString', patch: (file: any) => (file.routes[1].service = 'toString'), message: /^config: routes\.1\.service: names no entry of services/ },
    { desc: 'a route naming a service constructor', patch: (file: any) => (file.routes[1].service = 'constructor'), message: /^config: routes\.1\.service: names no entry of services/ },
    { desc: 'a route naming a service __proto__', patch: (file: any) => (file.routes[1].service = '__proto__'), message: /^config: routes\.1\.service: names no entry of services/ },
    // Limits past any bound on memory (every limit bounded): each was accepted up to 2^53 - 1.
    { desc: 'a login body limit over 1 MiB', patch: (file: any) => (file.auth.loginBodyLimitBytes = 1024 * 1024 + 1), message: /^config: auth\.loginBodyLimitBytes: Too big/ },
    { desc: 'a verified-token cache over 1 000 000', patch: (file: any) => (file.auth.verifiedTokenCacheSize = 1_000_001), message: /^config: auth\.verifiedTokenCacheSize: Too big/ },
    { desc: 'a rate-limit store over 10 000 000 clients', patch: (file: any) => (file.rateLimit = { ...file.rateLimit, maxTrackedClients: 10_000_001 }), message: /^config: rateLimit\.maxTrackedClients: Too big/ },
    { desc: 'over 1 000 000 client connections', patch: (file: any) => (file.server = { maxConnections: 1_000_001 }), message: /^config: server\.maxConnections: Too big/ },
    { desc: 'over 65 535 sockets per upstream', patch: (file: any) => (file.proxy = { maxSockets: 65_536 }), message: /^config: proxy\.maxSockets: Too big/ },
    { desc: 'over 1 000 000 waiting requests per instance', patch: (file: any) => (file.proxy = { maxPendingRequests: 1_000_001 }), message: /^config: proxy\.maxPendingRequests: Too big/ },
    { desc: 'a cache over 16 GiB', patch: (file: any) => (file.cache = { maxBytes: 16 * 1024 ** 3 + 1 }), message: /^config: cache\.maxBytes: Too big/ },
    { desc: 'a cache entry larger than the whole cache', patch: (file: any) => (file.cache = { maxBytes: 1024, maxEntryBytes: 1025 }), message: /^config: cache\.maxEntryBytes: must not exceed cache\.maxBytes/ },
    { desc: 'a preflight max age over a day', patch: (file: any) => (file.cors = { origins: ['https://app.example.com'], maxAgeSeconds: 86_401 }), message: /^config: cors\.maxAgeSeconds: Too big/ },
    { desc: 'two routes with the same prefix', patch: (file: any) => (file.routes[3].prefix = '/api/users'), message: /^config: routes\.3\.prefix: is already taken/ },
    // Often an upstream's credential: a stray space refused it, and the refusal quoted it in the log and the 422.
    { desc: 'a header rule value with a trailing space, not quoting it', patch: (file: any) => (file.routes[1].headers = { request: { set: { 'X-Upstream-Key': 'sk_live_51HxSECRETvalue ' } } }), message: /^config: routes\.1\.headers\.request\.set\.X-Upstream-Key: (?!.*sk_live)(?!.*\(got )/ },
    { desc: 'a response header rule value added with a line break, not quoting it', patch: (file: any) => (file.routes[1].headers = { response: { add: { 'X-Token': 'abc\ndef' } } }), message: /^config: routes\.1\.headers\.response\.add\.X-Token: (?!.*abc)(?!.*\(got )/ },
    // Routing takes these for the gateway's own paths (a format suffix): the route was never reached.
    { desc: 'an exact route at /health with a format suffix', patch: (file: any) => Object.assign(file.routes[3], { prefix: '/health.v1', exact: true }), message: /^config: routes\.3\.prefix: is already taken/ },
    { desc: 'an exact route at the login path with a format suffix', patch: (file: any) => Object.assign(file.routes[3], { prefix: '/api/auth/login.json', exact: true }), message: /^config: routes\.3\.prefix: is already taken/ },
    { desc: 'a prefix with dot segments', patch: (file: any) => (file.routes[1].prefix = '/api/../users'), message: /^config: routes\.1\.prefix: must not contain dot segments/ },
    { desc: 'a prefix with a trailing slash', patch: (file: any) => (file.routes[1].prefix = '/api/users/'), message: /^config: routes\.1\.prefix: must be an absolute path/ },
    { desc: 'an unknown key (typo)', patch: (file: any) => (file.rateLimt = {}), message: /^config: \(root\): Unrecognized key/ },
    { desc: 'roles on a public route', patch: (file: any) => (file.routes[0].roles = ['admin']), message: /^config: routes\.0\.roles: need auth "required"/ },
    { desc: 'an unknown auth mode', patch: (file: any) => (file.routes[1].auth = 'maybe'), message: /^config: routes\.1\.auth: / },
    // These three said only "Invalid input": no rule.
    { desc: 'an unknown auth mode, naming the modes there are', patch: (file: any) => (file.routes[1].auth = 'maybe'), message: /^config: routes\.1\.auth: must be "required", "public" or \{ "methods": \["jwt", "apiKey"\] \} \(one or both\) \(got "maybe"\)$/ },
    { desc: 'a service URL that is a number, naming what it must be', patch: (file: any) => (file.services.orders.url = 4002), message: /^config: services\.orders\.url: must be an http\(s\) URL, or a non-empty list of them \(got 4002\)$/ },
    { desc: 'a route cors of true, naming what it must be', patch: (file: any) => (file.routes[1].cors = true), message: /^config: routes\.1\.cors: must be a CORS policy .* or false \(got true\)$/ },
    { desc: 'no users service', patch: (file: any) => delete file.services.users, message: /^config: services\.users: is required/ },
    // The probes answer first: every POST there got 405, and no login was possible.
    { desc: 'a login path that is a probe', patch: (file: any) => (file.auth.loginPath = '/ready'), message: /^config: auth\.loginPath: is a probe path/ },
    { desc: 'a login path that is a probe in another case', patch: (file: any) => (file.auth.loginPath = '/Health'), message: /^config: auth\.loginPath: is a probe path/ },
    // The cluster primary refused a worker's cache invalidations naming it, so the other workers kept stale copies.
    { desc: 'a route name longer than a worker may name to the cluster primary', patch: (file: any) => (file.routes[1].name = `items-${'a'.repeat(MAX_ROUTE_NAME_LENGTH)}`), message: /^config: routes\.1\.name: must be at most 256 characters \(got "items-a+\.\.\.\)/ },
    {
      desc: 'a trusted proxy range of every IPv4 address',
      patch: (file: any) => Object.assign(file, { trustProxy: true, trustedProxies: ['10.0.0.1', '0.0.0.0/0'] }),
      message: /^config: trustedProxies\.1: must not be a \/0 range/,
    },
    { desc: 'a trusted proxy range of every IPv6 address', patch: (file: any) => Object.assign(file, { trustProxy: true, trustedProxies: ['::/0'] }), message: /^config: trustedProxies\.0: must not be a \/0 range/ },
    // net.BlockList matches an IPv4-mapped rule against IPv4 peers: each of these trusted every IPv4 client, as 0.0.0.0/0.
    ...['::ffff:0:0/96', '::ffff:0.0.0.0/100', '::/1', '::/80'].map((range) => ({
      desc: `a trusted proxy range of every IPv4 client in IPv6 form (${range})`,
      patch: (file: any) => Object.assign(file, { trustProxy: true, trustedProxies: ['10.0.0.1', range] }),
      message: /^config: trustedProxies\.1: must not be broader than an IPv4 \/8 .*nor reach every IPv4 client through IPv4-mapped addresses/,
    })),
    { desc: 'a trusted proxy range of half the IPv4 addresses', patch: (file: any) => Object.assign(file, { trustProxy: true, trustedProxies: ['0.0.0.0/1'] }), message: /^config: trustedProxies\.0: must not be broader than an IPv4 \/8/ },
    { desc: 'a trusted proxy range of every public IPv6 address', patch: (file: any) => Object.assign(file, { trustProxy: true, trustedProxies: ['2000::/3'] }), message: /^config: trustedProxies\.0: must not be broader than an IPv4 \/8 \(10\.0\.0\.0\/8\) or an IPv6 \/7/ },
    // Node refused to start such a server, in words of its own.
    { desc: 'a whole-request timeout under the head timeout', patch: (file: any) => (file.server = { headersTimeoutMs: 10_000, requestTimeoutMs: 3000 }), message: /^config: server\.requestTimeoutMs: must be 0 \(off\) or at least server\.headersTimeoutMs/ },
    { desc: 'a route deadline beyond what a Node timer holds', patch: (file: any) => (file.routes[1].deadlineMs = 3e9), message: /^config: routes\.1\.deadlineMs: must be at most 2147483647 ms/ },
    {
      desc: 'a route rule writing Strict-Transport-Security beside tls.hsts (max-age=0 would make browsers forget the policy)',
      patch: (file: any) => {
        file.tls = { certFile: 'cert.pem', keyFile: 'key.pem', hsts: { maxAgeSeconds: 600 } };
        file.routes[1].headers = { response: { set: { 'Strict-Transport-Security': 'max-age=0' } } };
      },
      message: /^config: routes\.1\.headers\.response: may not write Strict-Transport-Security: with tls\.hsts the gateway writes it/,
    },
    // A comma makes a list of X-User-Id (every provider token was refused); a long prefix leaves a 255-character `sub` no room.
    ...[
      { desc: 'a subject prefix with a comma', subjectPrefix: 'idp,', message: /^config: auth\.jwks\.subjectPrefix: must be printable ASCII without spaces or commas/ },
      { desc: 'a subject prefix of 65 characters', subjectPrefix: 'p'.repeat(65), message: /^config: auth\.jwks\.subjectPrefix: / },
    ].map(({ desc, subjectPrefix, message }) => ({
      desc,
      patch: (file: any) => (file.auth = { ...file.auth, jwks: { url: 'https://idp.example.com/jwks.json', issuer: 'idp', audience: 'api', subjectPrefix } }),
      message,
    })),
    { desc: "a route rule removing the gateway's RateLimit header", patch: (file: any) => (file.routes[1].headers = { response: { remove: ['RateLimit'] } }), message: /written by the gateway on every response/ },
    // Servers answer pings more frequent than they allow with GOAWAY "too_many_pings", failing the calls on the connection.
    { desc: 'a gRPC keepalive pinging more often than every 10 s', patch: (file: any) => (file.services.notifications.keepalive = { timeMs: 5000 }), message: /^config: services\.notifications\.keepalive\.timeMs: must be at least 10000 ms/ },
    { desc: 'a gRPC keepalive waiting under 1 s for a ping', patch: (file: any) => (file.services.notifications.keepalive = { timeMs: 10_000, timeoutMs: 10 }), message: /^config: services\.notifications\.keepalive\.timeoutMs: must be at least 1000 ms/ },
    // It would do nothing: the HTTP proxy's connections have no HTTP/2 pings.
    { desc: 'a gRPC keepalive on a service no grpc route calls', patch: (file: any) => (file.services.users.keepalive = { timeMs: 10_000 }), message: /^config: services\.users\.keepalive: applies to gRPC channels only, and no route with grpc calls this service/ },
    { desc: 'a gRPC keepalive with an unknown key', patch: (file: any) => (file.services.notifications.keepalive = { timeMs: 10_000, intervalMs: 1 }), message: /^config: services\.notifications\.keepalive: Unrecognized key/ },
    { desc: "a route rule setting the gateway's X-RateLimit-Remaining", patch: (file: any) => (file.routes[1].headers = { response: { set: { 'X-RateLimit-Remaining': '1' } } }), message: /written by the gateway on every response/ },
  ])('refuses $desc', ({ patch, message }) => {
    const file = shippedConfigFile();
    patch(file);
    expect(() => parseConfig(file)).toThrow(message);
  });

  it('takes trusted proxy ranges up to the private networks (10.0.0.0/8, fc00::/7) and IPv4-mapped ones within a /8', () => {
    const ranges = ['10.0.0.0/8', '172.16.0.0/12', 'fc00::/7', 'fd00::/8', '2001:db8::/32', '::ffff:10.0.0.0/104', '::/95', '64:ff9b::/96', '::ffff:192.0.2.1'];
    expect(parseConfig({ ...shippedConfigFile(), trustProxy: true, trustedProxies: ranges }).trustedProxies).toEqual(ranges);
  });

  it('takes no trusted proxy range under which two IPv4 clients of different /8s, or two IPv6 clients of different /7s, are both trusted', () => {
    // The gateway's own matcher (net.BlockList, src/middleware/trusted-proxies.ts) is the judge of what a range trusts.
    const ipv4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((bytes) => bytes.join('.'));
    const ipv6 = fc.array(fc.nat(0xffff), { minLength: 8, maxLength: 8 }).map((groups) => groups.map((group) => group.toString(16)).join(':'));
    const mapped = ipv4.map((address) => `::ffff:${address}`);
    const range = fc.oneof(
      fc.tuple(ipv4, fc.integer({ min: 0, max: 32 })).map(([address, prefix]) => ({ address, prefix, type: 'ipv4' as const })),
      fc.tuple(fc.oneof(ipv6, mapped, fc.constantFrom('::', '::ffff:0:0', '2000::')), fc.integer({ min: 0, max: 128 })).map(([address, prefix]) => ({ address, prefix, type: 'ipv6' as const })),
    );
    fc.assert(
      fc.property(range, ipv4, ipv4, ipv6, ipv6, ({ address, prefix, type }, a4, b4, a6, b6) => {
        const list = new BlockList();
        list.addSubnet(address, prefix, type);
        const wide = (a4.split('.')[0] !== b4.split('.')[0] && list.check(a4, 'ipv4') && list.check(b4, 'ipv4')) || (parseInt(a6, 16) >> 9 !== parseInt(b6, 16) >> 9 && list.check(a6, 'ipv6') && list.check(b6, 'ipv6'));
        // A sample pair can only show a range is wide; the ranges that contain such a pair must all be refused.
        if (wide) expect(() => parseConfig({ ...shippedConfigFile(), trustProxy: true, trustedProxies: [`${address}/${prefix}`] })).toThrow(/^config: trustedProxies\.0: must not be/);
      }),
      { seed: 66, numRuns: 2000 },
    );
  });

  it('takes a gRPC keepalive with its defaults: a 20 s wait for the ping, none without calls; none when absent', () => {
    const file = shippedConfigFile() as any;
    file.services.notifications.keepalive = { timeMs: 10_000 };
    const config = parseConfig(file);
    expect(config.services.notifications!.keepalive).toEqual({ timeMs: 10_000, timeoutMs: 20_000, withoutCalls: false });
    expect(config.services.users!.keepalive).toBeUndefined();
  });

  // Startup was refused ("RATE_LIMIT_MAX (rateLimit.max): ... received undefined") for a value whose default is documented.
  it.each([
    { desc: 'REDIS_URL alone', env: { REDIS_URL: 'redis://127.0.0.1:6379' }, file: {}, expected: { max: 100, windowMs: 60_000, redisUrl: 'redis://127.0.0.1:6379' } },
    { desc: 'RATE_LIMIT_IPV6_PREFIX alone', env: { RATE_LIMIT_IPV6_PREFIX: '56' }, file: {}, expected: { max: 100, windowMs: 60_000, ipv6PrefixLength: 56 } },
    { desc: 'RATE_LIMIT_MAX alone', env: { RATE_LIMIT_MAX: '7' }, file: {}, expected: { max: 7, windowMs: 60_000 } },
    { desc: 'RATE_LIMIT_WINDOW_MS alone', env: { RATE_LIMIT_WINDOW_MS: '5000' }, file: {}, expected: { max: 100, windowMs: 5000 } },
    { desc: 'a file block naming only redisUrl', env: {}, file: { rateLimit: { redisUrl: 'redis://127.0.0.1:6379' } }, expected: { max: 100, windowMs: 60_000, redisUrl: 'redis://127.0.0.1:6379' } },
  ])('keeps the documented default limit (100 per 60 s) with $desc over a file without one', ({ env, file, expected }) => {
    const { rateLimit: _shipped, ...rest } = shippedConfigFile() as Record<string, unknown>;
    expect(parseConfig({ ...rest, ...file }, env).rateLimit).toMatchObject(expected);
  });

  it('takes a route name of the longest length', () => {
    const file = shippedConfigFile() as any;
    file.routes[1].name = `r${'-'.repeat(MAX_ROUTE_NAME_LENGTH - 1)}`;
    expect(parseConfig(file).routes[1]!.name).toHaveLength(MAX_ROUTE_NAME_LENGTH);
  });

  it('names GATEWAY_CONFIG when the file cannot be read, and the file when it is not JSON', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'gateway-config-'));
    expect(() => loadConfig({ GATEWAY_CONFIG: 'missing.json' }, dir)).toThrow(/^config: GATEWAY_CONFIG: cannot read .*missing\.json \(ENOENT\)/);
    writeFileSync(path.join(dir, 'broken.json'), '{ "port": ');
    expect(() => loadConfig({ GATEWAY_CONFIG: 'broken.json' }, dir)).toThrow(/broken\.json: not valid JSON/);
  });

  // Read leniently, invalid bytes became U+FFFD: a role written `admin\xff\xfe` was accepted as another role.
  it('refuses a file that is not UTF-8, and one a consumers file names, naming each', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'gateway-config-'));
    const shipped = JSON.stringify(shippedConfigFile());
    writeFileSync(path.join(dir, 'latin1.json'), Buffer.concat([Buffer.from(shipped.slice(0, -1)), Buffer.from(', "logLevel": "info\xff"}', 'latin1')]));
    expect(() => loadConfig({ GATEWAY_CONFIG: 'latin1.json', JWT_SECRET: TEST_JWT_SECRET }, dir)).toThrow(/^config: .*latin1\.json: not valid UTF-8$/);
    writeFileSync(path.join(dir, 'consumers.json'), Buffer.from('[{"id": "acme\xe9", "role": "partner", "keys": []}]', 'latin1'));
    writeFileSync(path.join(dir, 'with-consumers.json'), JSON.stringify({ ...shippedConfigFile(), consumersFile: 'consumers.json' }));
    expect(() => loadConfig({ GATEWAY_CONFIG: 'with-consumers.json', JWT_SECRET: TEST_JWT_SECRET }, dir)).toThrow(/^config: consumersFile: .*consumers\.json: not valid UTF-8$/);
  });

  // JSON.parse takes nesting 200,000 deep; the duplicate-key scan after it overflowed the stack: "Maximum call stack
  // size exceeded", logged as a bug, naming no file.
  it('refuses a file nested deeper than any config, naming it', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'gateway-config-'));
    writeFileSync(path.join(dir, 'deep.json'), `{"routes": ${'['.repeat(200_000)}${']'.repeat(200_000)}}`);
    expect(() => loadConfig({ GATEWAY_CONFIG: 'deep.json' }, dir)).toThrow(/^config: .*deep\.json: nested deeper than 32 levels/);
  });

  // V8 quotes ten characters either side of an unexpected token; a config file's are often a secret pasted unquoted.
  // That quote went to the log, the reload's 422 and stderr. Where it is is said instead.
  it.each([
    { desc: 'a secret pasted unquoted', text: '{\n  "port": 3000,\n  "admin": kq9Vx7pLm2QzSecret\n}', secret: 'kq9Vx7pLm2', where: 'line 3 column 12' },
    { desc: 'a key in single quotes', text: "{\n  \"hash\": 'kgw_pa55word'\n}", secret: 'kgw_pa55', where: 'line 2 column 11' },
    { desc: 'a short file quoted whole', text: "{ \"a\": pa55 }", secret: 'pa55', where: 'line 1 column 8' },
    // Quoted from its start, the token twice in the quote: its place is not said rather than said wrong (column 3).
    { desc: 'a short file whose bad token occurs twice', text: '{"port": port, "h": 1}', secret: 'port, "h"', where: 'an unexpected character)' },
  ])('never repeats the text of a file that is not JSON ($desc), and says where the error is', ({ text, secret, where }) => {
    const dir = mkdtempSync(path.join(tmpdir(), 'gateway-config-'));
    writeFileSync(path.join(dir, 'broken.json'), text);
    let message = '';
    try {
      loadConfig({ GATEWAY_CONFIG: 'broken.json' }, dir);
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/broken\.json: not valid JSON \(an unexpected character( at |\))/);
    expect(message).toContain(where);
    expect(message).not.toContain(secret);
    expect(() => JSON.parse(text)).toThrow(secret);
  });

  it('keeps a parser message that quotes nothing, and drops one of another form that quotes text', () => {
    expect(jsonSyntaxError("Expected ',' or '}' after property value in JSON at position 6 (line 1 column 7)", '{"a":1')).toBe("Expected ',' or '}' after property value in JSON at position 6 (line 1 column 7)");
    expect(jsonSyntaxError('Unexpected string "pa55" in JSON', '')).toBe('a syntax error');
  });
});

// `npm start`'s banner said `token` for every protected route, also for one that takes API keys only.
describe('cache entry bound', () => {
  it('defaults to 1 MiB, or to cache.maxBytes when that is less (a small store alone was refused for the default it did not set)', () => {
    const withCache = (cache: Record<string, number>) => parseConfig({ ...shippedConfigFile(), cache }).cache;
    expect(withCache({})).toMatchObject({ maxBytes: 64 * 1024 * 1024, maxEntryBytes: 1024 * 1024 });
    expect(withCache({ maxBytes: 524_288 })).toMatchObject({ maxBytes: 524_288, maxEntryBytes: 524_288 });
    expect(withCache({ maxBytes: 524_288, maxEntryBytes: 1000 })).toMatchObject({ maxEntryBytes: 1000 });
    expect(() => withCache({ maxBytes: 524_288, maxEntryBytes: 524_289 })).toThrow(/^config: cache\.maxEntryBytes: must not exceed cache\.maxBytes/);
  });
});

describe('describeRouteAccess', () => {
  it.each([
    [{ auth: 'public' as const }, false, 'public'],
    [{ auth: 'required' as const }, false, 'token'],
    [{ auth: 'required' as const }, true, 'token or API key'],
    [{ auth: 'required' as const, roles: ['admin'] as [string] }, false, 'token; roles: admin'],
    [{ auth: { methods: ['apiKey'] as ['apiKey'] } }, true, 'API key'],
    [{ auth: { methods: ['jwt'] as ['jwt'] } }, true, 'token'],
    [{ auth: { methods: ['apiKey', 'jwt'] as ['apiKey', 'jwt'] }, roles: ['ops', 'admin'] as [string, string] }, true, 'API key or token; roles: ops, admin'],
  ])('%j (consumers declared: %s) -> %s', (route, consumersDeclared, text) => {
    expect(describeRouteAccess(route, consumersDeclared)).toBe(text);
  });
});
