import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { loadConfig, parseConfig } from '../../src/config';
import { API_KEY_PREFIX, createConsumerRegistry, generateApiKey, hashApiKey } from '../../src/consumers';
import { compileRoutes } from '../../src/routes';
import { createUpstreamPools } from '../../src/upstream-pool';
import { shippedConfigFile } from '../helpers/test-config';

const KEY = generateApiKey();
const REVOKED = generateApiKey();
const declared = [
  { id: 'acme', role: 'partner', keys: [{ hash: hashApiKey(KEY), revoked: false }, { hash: hashApiKey(REVOKED), revoked: true }] },
];

describe('API key hashing and lookup', () => {
  it('hashes as sha256: and the hex digest of the key’s UTF-8 bytes (the FIPS 180-2 "abc" vector)', () => {
    expect(hashApiKey('abc')).toBe('sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });

  it('generates 256-bit keys with the recognisable prefix, never the same twice', () => {
    const keys = Array.from({ length: 100 }, generateApiKey);
    expect(new Set(keys).size).toBe(100);
    for (const key of keys) expect(key).toMatch(new RegExp(`^${API_KEY_PREFIX}[A-Za-z0-9_-]{43}$`));
  });

  it('finds the consumer of a declared key, and tells revoked, unknown and malformed keys apart for operators', () => {
    const registry = createConsumerRegistry(declared);
    expect(registry.verify(KEY)).toEqual({ ok: true, consumer: { id: 'acme', role: 'partner' } });
    expect(registry.verify(REVOKED)).toEqual({ ok: false, reason: 'revoked' });
    expect(registry.verify(generateApiKey())).toEqual({ ok: false, reason: 'unknown' });
    expect(registry.verify('')).toEqual({ ok: false, reason: 'malformed' });
    expect(registry.verify(`${KEY}\n`)).toEqual({ ok: false, reason: 'malformed' });
    expect(registry.verify('x'.repeat(257))).toEqual({ ok: false, reason: 'malformed' });
  });

  it('never accepts any other string, whatever its shape (generated inputs)', () => {
    const registry = createConsumerRegistry(declared);
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 300 }), fc.string({ unit: 'binary', maxLength: 64 }), fc.stringMatching(/^[A-Za-z0-9._~+/=-]{16,64}$/)), (candidate) => {
        fc.pre(candidate !== KEY);
        expect(registry.verify(candidate).ok).toBe(false);
      }),
      { seed: 14, numRuns: 2000 },
    );
  });
});

describe('consumers in the config', () => {
  const withConsumers = (consumers: unknown, routes?: unknown) => ({ ...shippedConfigFile(), consumers, ...(routes ? { routes } : {}) });
  const route = (extra: Record<string, unknown>) => [{ name: 'partner', prefix: '/api/partner', service: 'users', upstreamPath: '/health', ...extra }];

  it.each([
    { desc: 'a hash that is not sha256 hex', consumers: [{ id: 'a', role: 'r', keys: [{ hash: 'plain-text-key' }] }], message: 'consumers.0.keys.0.hash: must be "sha256:"' },
    { desc: 'an upper-case hash', consumers: [{ id: 'a', role: 'r', keys: [{ hash: hashApiKey(KEY).toUpperCase() }] }], message: 'consumers.0.keys.0.hash' },
    { desc: 'a consumer without keys', consumers: [{ id: 'a', role: 'r', keys: [] }], message: 'consumers.0.keys' },
    { desc: 'an id that could not be a header value', consumers: [{ id: 'a\r\nX-User-Id: 1', role: 'r', keys: [{ hash: hashApiKey(KEY) }] }], message: 'consumers.0.id' },
    { desc: 'two consumers with one id', consumers: [...declared, { ...declared[0], keys: [{ hash: hashApiKey(generateApiKey()) }] }], message: 'consumers.1.id: is used by another consumer' },
    { desc: 'one key declared for two consumers', consumers: [...declared, { id: 'other', role: 'r', keys: [{ hash: hashApiKey(KEY) }] }], message: 'consumers.1.keys.0.hash: is declared twice' },
    { desc: 'a key in clear beside its hash', consumers: [{ id: 'a', role: 'r', keys: [{ hash: hashApiKey(KEY), key: KEY }] }], message: 'consumers.0.keys.0' },
  ])('refuses $desc at startup, naming the key', ({ consumers, message }) => {
    expect(() => parseConfig(withConsumers(consumers))).toThrow(message);
  });

  // `npm run apikey` prints the key above its hash: pasted in the hash's place, the refusal echoed it whole (49
  // characters fit the 60 a refused value shows), on stderr, in a reload's log line and in its 422 answer.
  it('never echoes a refused hash: it is often the key itself, pasted in its place', () => {
    for (const hash of [KEY, `sha256:${KEY}`, KEY.slice(0, 20)]) {
      const refusal = (() => {
        try {
          parseConfig(withConsumers([{ id: 'a', role: 'r', keys: [{ hash }] }]));
        } catch (error) {
          return (error as Error).message;
        }
        return 'accepted';
      })();
      expect(refusal).toMatch(/^config: consumers\.0\.keys\.0\.hash: must be "sha256:"/);
      expect(refusal).not.toContain('(got ');
      expect(refusal).not.toContain(KEY.slice(4, 16));
    }
  });

  // Reported at consumers.0.keys.0 or consumers.0.keys, the key pasted as an entry or as the list was shown whole.
  it.each([
    { desc: 'as a list entry', keys: [KEY] },
    { desc: 'as the list', keys: KEY },
  ])('never echoes a key pasted $desc', ({ keys }) => {
    const refusal = (() => {
      try {
        parseConfig(withConsumers([{ id: 'a', role: 'r', keys }]));
      } catch (error) {
        return (error as Error).message;
      }
      return 'accepted';
    })();
    expect(refusal).toMatch(/^config: consumers\.0\.keys/);
    expect(refusal).not.toContain(KEY.slice(4, 16));
  });

  it.each([
    { desc: 'a route accepting apiKey with no consumers declared', file: () => ({ ...shippedConfigFile(), routes: route({ auth: { methods: ['apiKey'] } }) }), message: 'routes.0.auth.methods: accept apiKey but no consumers are declared' },
    { desc: 'an unknown auth method', file: () => withConsumers(declared, route({ auth: { methods: ['basic'] } })), message: 'routes.0.auth' },
    { desc: 'a caller-keyed limit on a public route', file: () => withConsumers(declared, route({ auth: 'public', rateLimit: { max: 1, windowMs: 1000, by: 'user' } })), message: 'routes.0.rateLimit.by: needs an authenticated route' },
    { desc: 'roles on a public route', file: () => withConsumers(declared, route({ auth: 'public', roles: ['admin'] })), message: 'routes.0.roles' },
  ])('refuses $desc', ({ file, message }) => {
    expect(() => parseConfig(file())).toThrow(message);
  });

  it('compiles auth: "required" to every method the gateway has, and { methods } to exactly those', () => {
    const compile = (file: Record<string, unknown>) => {
      const config = parseConfig(file);
      return Object.fromEntries(compileRoutes(config, createUpstreamPools(config.services)).routes.map((compiled) => [compiled.name, { auth: compiled.auth, methods: [...compiled.authMethods] }]));
    };
    const routes = [...route({}), ...route({ name: 'keys', prefix: '/api/keys', auth: { methods: ['apiKey'] } }), ...route({ name: 'open', prefix: '/api/open', auth: 'public' })];
    expect(compile(withConsumers(declared, routes))).toEqual({
      partner: { auth: 'required', methods: ['jwt', 'apiKey'] },
      keys: { auth: 'required', methods: ['apiKey'] },
      open: { auth: 'public', methods: [] },
    });
    // Without consumers, "required" means a bearer token, as before.
    expect(compile({ ...shippedConfigFile(), routes: route({}) })).toEqual({ partner: { auth: 'required', methods: ['jwt'] } });
  });

  describe('consumersFile', () => {
    const directory = () => mkdtempSync(path.join(tmpdir(), 'consumers-'));

    it('reads the consumers from a file named relative to the config file', () => {
      const dir = directory();
      writeFileSync(path.join(dir, 'consumers.json'), JSON.stringify(declared));
      writeFileSync(path.join(dir, 'gateway.json'), JSON.stringify({ ...shippedConfigFile(), consumersFile: 'consumers.json' }));
      const config = loadConfig({ GATEWAY_CONFIG: path.join(dir, 'gateway.json') }, '/');
      expect(config.consumers.map((consumer) => consumer.id)).toEqual(['acme']);
      expect(createConsumerRegistry(config.consumers).verify(KEY).ok).toBe(true);
    });

    it.each([
      { desc: 'a missing file', setup: (dir: string) => writeFileSync(path.join(dir, 'gateway.json'), JSON.stringify({ ...shippedConfigFile(), consumersFile: 'nope.json' })), message: /consumersFile: cannot read .*nope\.json as JSON \(ENOENT\)/ },
      { desc: 'a file that is not JSON', setup: (dir: string) => { writeFileSync(path.join(dir, 'c.json'), '{'); writeFileSync(path.join(dir, 'gateway.json'), JSON.stringify({ ...shippedConfigFile(), consumersFile: 'c.json' })); }, message: /consumersFile: cannot read/ },
      // A raw key pasted where its hash goes: the parser's quote of it reached the log.
      { desc: 'a file that is not JSON, without its text', setup: (dir: string) => { writeFileSync(path.join(dir, 'c.json'), '[{ "id": "a", "keys": [{ "hash": kgw_s3cretKeyValue }] }]'); writeFileSync(path.join(dir, 'gateway.json'), JSON.stringify({ ...shippedConfigFile(), consumersFile: 'c.json' })); }, message: /^config: consumersFile: cannot read .*c\.json as JSON \(an unexpected character at line 1 column 34\)$/ },
      { desc: 'a file with a bad entry', setup: (dir: string) => { writeFileSync(path.join(dir, 'c.json'), JSON.stringify([{ id: 'a', role: 'r', keys: [{ hash: 'x' }] }])); writeFileSync(path.join(dir, 'gateway.json'), JSON.stringify({ ...shippedConfigFile(), consumersFile: 'c.json' })); }, message: /consumers\.0\.keys\.0\.hash/ },
      { desc: 'consumers inline as well', setup: (dir: string) => { writeFileSync(path.join(dir, 'c.json'), '[]'); writeFileSync(path.join(dir, 'gateway.json'), JSON.stringify({ ...shippedConfigFile(), consumers: [], consumersFile: 'c.json' })); }, message: /cannot be combined with consumers/ },
    ])('stops startup on $desc', ({ setup, message }) => {
      const dir = directory();
      setup(dir);
      expect(() => loadConfig({ GATEWAY_CONFIG: path.join(dir, 'gateway.json') }, '/')).toThrow(message);
    });
  });
});
