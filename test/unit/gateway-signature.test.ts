import { createHmac, randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { HEADER } from '../../otel/wire-names';
import { callerKeyFromGatewayKey, callerKeysOf, callerSigningKey, createCallerSigner, createGatewaySigner, createServiceKeySigner, isGuessableSecret, SERVICE_KEY_PATTERN, serviceSigningKey, SIGNATURE_MAX_AGE_SECONDS, SIGNED_HEADERS, verifyGatewaySignature, type AddressedRequest, type CallRule, type SignedRequest, type SignedValues } from '../../src/gateway-signature';

const KEY = 'k'.repeat(16) + 'unit-test-signing-key';
const NOW = Date.UTC(2026, 11, 2, 10, 0, 0);

/** A header value as Node hands it over: visible ASCII and spaces, no line breaks. */
const headerValue = fc.string({ unit: fc.constantFrom(...' !#$%&()*+,-./0123456789:;<=>?@ABCXYZabcxyz_~'.split('')), maxLength: 40 });
const identity = fc.tuple(headerValue, headerValue, headerValue, headerValue);

/** The headers a service receives for `values` (an empty value is an absent header), the request id and the signature. */
function received(values: SignedValues, signature: string, requestId = REQUEST.requestId): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = { [HEADER.gatewaySignature]: signature };
  if (requestId !== '') headers[HEADER.requestId] = requestId;
  SIGNED_HEADERS.forEach((name, index) => {
    if (values[index] !== '') headers[name] = values[index]!;
  });
  return headers;
}

/** The request the signatures below are made for, unless a test says otherwise. */
const REQUEST: SignedRequest = { audience: 'notifications', method: 'GET', target: '/notifications', requestId: 'f3a9c2d1e4b5a6978877665544332211' };

const verify = (headers: Record<string, string | string[]>, now = NOW, key = KEY, request: AddressedRequest = REQUEST) => verifyGatewaySignature(key, request, (name) => headers[name], now);

describe('the gateway signature', () => {
  it('verifies for every identity the gateway signs (generated)', () => {
    const sign = createGatewaySigner(KEY, () => NOW);
    fc.assert(
      fc.property(identity, (values) => verify(received(values, sign(REQUEST, values))) === undefined),
      { seed: 20261202, numRuns: 300 },
    );
  });

  it('fails when any one signed header differs from what was signed (generated)', () => {
    const sign = createGatewaySigner(KEY, () => NOW);
    fc.assert(
      fc.property(identity, fc.nat(3), headerValue, (values, index, other) => {
        fc.pre(values[index] !== other);
        const changed = [...values] as [string, string, string, string];
        changed[index] = other;
        return verify(received(changed, sign(REQUEST, values))) === 'mismatch';
      }),
      { seed: 20261202, numRuns: 300 },
    );
  });

  it('does not let values run into each other: moving text between two headers is another signature', () => {
    const sign = createGatewaySigner(KEY, () => NOW);
    const signature = sign(REQUEST, ['1', 'admin', '', '']);
    expect(verify(received(['1a', 'dmin', '', ''], signature))).toBe('mismatch');
    expect(verify(received(['1', '', 'admin', ''], signature))).toBe('mismatch');
  });

  it('fails under another key', () => {
    const values: SignedValues = ['2', 'user', 'bob@example.com', ''];
    const signature = createGatewaySigner(KEY, () => NOW)(REQUEST, values);
    expect(verify(received(values, signature), NOW, `${KEY}-rotated`)).toBe('mismatch');
  });

  it(`holds for ${SIGNATURE_MAX_AGE_SECONDS} s either side of its time, and no longer`, () => {
    const values: SignedValues = ['2', 'user', 'bob@example.com', ''];
    const signature = createGatewaySigner(KEY, () => NOW)(REQUEST, values);
    const time = Number(/^t=(\d+),/.exec(signature)![1]) * 1000;
    const headers = received(values, signature);
    expect(verify(headers, time + SIGNATURE_MAX_AGE_SECONDS * 1000)).toBeUndefined();
    expect(verify(headers, time - SIGNATURE_MAX_AGE_SECONDS * 1000)).toBeUndefined();
    expect(verify(headers, time + SIGNATURE_MAX_AGE_SECONDS * 1000 + 1000)).toBe('expired');
    expect(verify(headers, time - SIGNATURE_MAX_AGE_SECONDS * 1000 - 1000)).toBe('expired');
  });

  it.each([
    ['absent', undefined, 'missing'],
    ['empty', '', 'malformed'],
    ['without a time', `v3=${'A'.repeat(43)}`, 'malformed'],
    ['in the format before the request was signed (v1)', `t=${NOW / 1000},v1=${'A'.repeat(43)}`, 'malformed'],
    ['in the format before the request id was signed (v2)', `t=${NOW / 1000},v2=${'A'.repeat(43)}`, 'malformed'],
    ['a well-formed v3 forgery (the format before the service was signed)', `t=${NOW / 1000},v3=${'A'.repeat(43)}`, 'mismatch'],
    ['a short MAC', `t=${NOW / 1000},v4=${'A'.repeat(42)}`, 'malformed'],
    ['padding after the MAC', `t=${NOW / 1000},v4=${'A'.repeat(43)} `, 'malformed'],
    ['a second version', `t=${NOW / 1000},v4=${'A'.repeat(43)},v3=x`, 'malformed'],
    ['a later version', `t=${NOW / 1000},v5=${'A'.repeat(43)}`, 'malformed'],
    ['sent twice', [`t=${NOW / 1000},v4=${'A'.repeat(43)}`, `t=${NOW / 1000},v4=${'A'.repeat(43)}`], 'malformed'],
    ['a well-formed forgery', `t=${NOW / 1000},v4=${'A'.repeat(43)}`, 'mismatch'],
  ] as const)('refuses a signature header %s', (_desc, header, problem) => {
    const headers: Record<string, string | string[]> = { [HEADER.userId]: '1', [HEADER.userRole]: 'admin' };
    if (header !== undefined) headers[HEADER.gatewaySignature] = header as string | string[];
    expect(verify(headers)).toBe(problem);
  });

  it('refuses a signed header sent twice', () => {
    const values: SignedValues = ['2', 'user', '', ''];
    const headers = received(values, createGatewaySigner(KEY, () => NOW)(REQUEST, values));
    headers[HEADER.userRole] = ['user', 'admin'];
    expect(verify(headers)).toBe('mismatch');
  });

  it.each([
    { desc: 'another method', request: { audience: 'notifications', method: 'POST', target: '/notifications' } },
    { desc: 'another path', request: { audience: 'notifications', method: 'GET', target: '/internal/notifications' } },
    { desc: 'another query', request: { audience: 'notifications', method: 'GET', target: '/notifications?page=2' } },
    { desc: 'the same path with a query it did not have', request: { audience: 'notifications', method: 'GET', target: '/notifications?' } },
    { desc: 'the method in another case', request: { audience: 'notifications', method: 'get', target: '/notifications' } },
    { desc: 'a gRPC method', request: { audience: 'notifications', method: 'POST', target: '/koagateway.notifications.v1.Notifications/CreateNotification' } },
    // A signature the gateway sent one service (a partner's behind a route, one that logs its headers) was good on
    // every other answering the same method and target.
    { desc: 'another service', request: { audience: 'orders', method: 'GET', target: '/notifications' } },
    { desc: 'a service whose name begins with its service’s', request: { audience: 'notifications-v2', method: 'GET', target: '/notifications' } },
  ])('is good for its own request only: refused for $desc', ({ request }) => {
    const values: SignedValues = ['2', 'user', 'bob@example.com', ''];
    const headers = received(values, createGatewaySigner(KEY, () => NOW)(REQUEST, values));
    expect(verify(headers)).toBeUndefined();
    expect(verify(headers, NOW, KEY, request)).toBe('mismatch');
  });

  it('does not let the target run into the identity: moving text between them is another signature', () => {
    const signature = createGatewaySigner(KEY, () => NOW)({ audience: 'users', method: 'GET', target: '/users/1', requestId: REQUEST.requestId }, ['2', 'user', '', '']);
    expect(verify(received(['12', 'user', '', ''], signature), NOW, KEY, { audience: 'users', method: 'GET', target: '/users/' })).toBe('mismatch');
  });

  it('does not let the service run into the request line: moving text between them is another signature', () => {
    const signature = createGatewaySigner(KEY, () => NOW)({ audience: 'users', method: 'GET', target: '/x', requestId: REQUEST.requestId }, ['2', 'user', '', '']);
    expect(verify(received(['2', 'user', '', ''], signature), NOW, KEY, { audience: 'user', method: 'sGET', target: '/x' })).toBe('mismatch');
  });

  // Unsigned, the request id of a request captured on its way to a service could be replaced: the service logged
  // it, answered under it and passed it on to the services it called, pinning its lines on another request.
  it('fails when the request id differs from, is added to or is left out of what was signed (generated)', () => {
    const sign = createGatewaySigner(KEY, () => NOW);
    const requestId = fc.stringMatching(/^[A-Za-z0-9._:-]{0,40}$/);
    fc.assert(
      fc.property(identity, requestId, requestId, (values, signed, sent) => {
        fc.pre(signed !== sent);
        const signature = sign({ ...REQUEST, requestId: signed }, values);
        expect(verify(received(values, signature, signed))).toBeUndefined();
        expect(verify(received(values, signature, sent))).toBe('mismatch');
      }),
      { seed: 20261206, numRuns: 300 },
    );
    const values: SignedValues = ['2', 'user', '', ''];
    expect(verify({ ...received(values, sign(REQUEST, values)), [HEADER.requestId]: [REQUEST.requestId, REQUEST.requestId] })).toBe('mismatch');
  });

  // base64url of 32 bytes leaves two bits of its last character unused, which decoding ignores: four spellings of
  // one MAC verified, and a cache of signatures seen (against replays) would take them for four.
  it('takes the one spelling of its MAC only', () => {
    const values: SignedValues = ['2', 'user', '', ''];
    const signature = createGatewaySigner(KEY, () => NOW)(REQUEST, values);
    expect(verify(received(values, signature))).toBeUndefined();
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const last = alphabet.indexOf(signature.at(-1)!);
    for (let low = 1; low < 4; low++) {
      const respelt = signature.slice(0, -1) + alphabet[last + low];
      expect(verify(received(values, respelt))).toBe('malformed');
    }
  });

  // A rolling update takes the services first: for this release they still take the gateway's v3 signatures.
  it('verifies a v3 signature of the release before, over the request line, request id and identity', () => {
    const values: SignedValues = ['2', 'user', 'bob@example.com', ''];
    const v3 = createHmac('sha256', KEY).update(`koa-gateway-signature-v3\n${NOW / 1000}\n${REQUEST.method}\n${REQUEST.target}\n${REQUEST.requestId}\n${values.join('\n')}`).digest('base64url');
    expect(verify(received(values, `t=${NOW / 1000},v3=${v3}`))).toBeUndefined();
    expect(verify(received(values, `t=${NOW / 1000},v3=${v3}`), NOW, KEY, { audience: REQUEST.audience, method: 'POST', target: REQUEST.target })).toBe('mismatch');
    expect(verify(received(values, `t=${NOW / 1000},v3=${v3}`, 'another-request'))).toBe('mismatch');
    expect(verify(received(['1', 'admin', '', ''], `t=${NOW / 1000},v3=${v3}`))).toBe('mismatch');
    // The MAC of a v3 message under the v4 label is no v4 signature.
    expect(verify(received(values, `t=${NOW / 1000},v4=${v3}`))).toBe('mismatch');
  });

  it('signs each request at its own time', () => {
    let now = NOW;
    const sign = createGatewaySigner(KEY, () => now);
    const values: SignedValues = ['2', 'user', 'bob@example.com', ''];
    const first = sign(REQUEST, values);
    now += 1_000;
    const next = sign(REQUEST, values);
    expect(next).not.toBe(first);
    expect(verify(received(values, next), now)).toBeUndefined();
  });
  // The signer builds its HMAC from two SHA-256 hashes over the key's pads, or takes createHmac for a key whose pads
  // are not ASCII or that is longer than a block (src/gateway-signature.ts keyedMac): either way the very MAC of RFC 2104.
  it.each([
    { desc: 'a 32-character key', key: 'a-32-character-signing-key-00000' },
    { desc: 'base64url of 32 random bytes (43 characters)', key: 'q3ZpR0d7Xr8_fN2kLw-1uYb9sTeHcVaMj4oP6xQzEgI' },
    { desc: 'a key of exactly one block (64 bytes)', key: 'k'.repeat(63) + '~' },
    { desc: 'a key one byte over a block (hashed first)', key: 'k'.repeat(65) },
    { desc: 'a key with characters outside ASCII', key: 'clé-de-signature-passerelle-0123456789' },
    { desc: 'a key with control characters', key: '\u0001\u007f'.repeat(16) },
  ])('makes the same MAC as createHmac with $desc (generated identities)', ({ key }) => {
    const sign = createGatewaySigner(key, () => NOW);
    const unicode = fc.string({ unit: fc.constantFrom('a', 'é', '€', '😀', ' ', '~'), maxLength: 12 });
    fc.assert(
      fc.property(fc.tuple(unicode, headerValue, unicode, headerValue), unicode, (values, path) => {
        const request = { audience: 'users', method: 'GET', target: `/users/${path}`, requestId: REQUEST.requestId };
        const expected = createHmac('sha256', key)
          .update(`koa-gateway-signature-v4\n${NOW / 1000}\n${request.audience}\n${request.method}\n${request.target}\n${request.requestId}\n${values.join('\n')}`)
          .digest('base64url');
        return sign(request, values) === `t=${NOW / 1000},v4=${expected}` && verifyGatewaySignature(key, request, (name) => received(values, sign(request, values))[name], NOW) === undefined;
      }),
      { seed: 20261203, numRuns: 100 },
    );
  });
});

describe('a key per service', () => {
  const serviceName = fc.stringMatching(SERVICE_KEY_PATTERN, { maxLength: 20 });

  // The derivation is a contract with every deployment (Secrets made with `npm run service-key` or the README's
  // openssl line): these values are openssl's, `printf 'koa-gateway-service-key-v1\n<name>' | openssl dgst -sha256 -hmac <key> -binary | base64`, base64url.
  it.each([
    ['users', 'R0Aw6NODdkWAQSw7PWOgUxMrdjxzWbWIJ4owiEzxzTA'],
    ['billing-api', 'cQ0kAWS_eUx4-tazIISeChiTwH8BzZClDCcOdFm9rwI'],
  ])("derives %s's key as openssl does", (service, expected) => {
    expect(serviceSigningKey(KEY, service)).toBe(expected);
  });

  it("signs each service's requests with that service's key alone: not the gateway's, nor another service's (generated)", () => {
    const sign = createServiceKeySigner(KEY, () => NOW);
    fc.assert(
      fc.property(serviceName, serviceName, identity, (service, other, values) => {
        fc.pre(service !== other);
        const request = { ...REQUEST, audience: service };
        const headers = received(values, sign(request, values));
        return (
          verify(headers, NOW, serviceSigningKey(KEY, service), request) === undefined &&
          verify(headers, NOW, serviceSigningKey(KEY, other), request) === 'mismatch' &&
          verify(headers, NOW, KEY, request) === 'mismatch'
        );
      }),
      { seed: 20261207, numRuns: 200 },
    );
  });

  it('gives no two services, nor two gateway keys, the same key, and never the gateway key itself (generated)', () => {
    fc.assert(
      fc.property(serviceName, serviceName, (service, other) => {
        fc.pre(service !== other);
        const key = serviceSigningKey(KEY, service);
        return key !== serviceSigningKey(KEY, other) && key !== serviceSigningKey(`${KEY}x`, service) && key !== KEY && /^[A-Za-z0-9_-]{43}$/.test(key);
      }),
      { seed: 20261207, numRuns: 200 },
    );
  });

  it('signs for several services in turn, each with its own key, as the requests come', () => {
    const sign = createServiceKeySigner(KEY, () => NOW);
    const values: SignedValues = ['2', 'user', 'bob@example.com', ''];
    for (const service of ['users', 'orders', 'users', 'notifications', 'orders']) {
      const request = { ...REQUEST, audience: service };
      expect(verify(received(values, sign(request, values)), NOW, serviceSigningKey(KEY, service), request)).toBeUndefined();
    }
  });
});

describe('isGuessableSecret', () => {
  /** A naive period: the least p whose shift matches the text everywhere (quadratic: for the property only). */
  const naivePeriod = (text: string) => {
    for (let p = 1; p < text.length; p++) if ([...text].every((char, at) => at < p || char === text[at - p])) return p;
    return text.length;
  };

  it('refuses a piece said twice or more, cut anywhere past the second (generated), and agrees with a naive period', () => {
    fc.assert(
      // Printable and no blanks: the check reads the value trimmed.
      fc.property(fc.string({ unit: fc.constantFrom(...'!#$%&*+-./0123456789:=?@ABCXYZ^_abcxyz~'.split('')), minLength: 1, maxLength: 20 }), fc.integer({ min: 2, max: 6 }), fc.nat(), (piece, times, cut) => {
        const repeated = piece.repeat(times);
        const text = repeated.slice(0, Math.max(piece.length * 2, repeated.length - (cut % piece.length)));
        expect(isGuessableSecret(text)).toBe(true);
      }),
      { seed: 4242, numRuns: 2000 },
    );
    fc.assert(
      fc.property(fc.string({ unit: fc.constantFrom(...'abcdefghij'.split('')), minLength: 8, maxLength: 40 }), (text) => {
        const expected = new Set(text).size < 8 || naivePeriod(text) * 2 <= text.length;
        expect(isGuessableSecret(text)).toBe(expected);
      }),
      { seed: 4243, numRuns: 3000 },
    );
  });

  it('accepts random key material, and reads a long value in linear time', () => {
    for (let run = 0; run < 200; run++) expect(isGuessableSecret(randomBytes(32).toString('base64'))).toBe(false);
    expect(isGuessableSecret('a'.repeat(32) + 'bcdefghij')).toBe(false);
    // 200,000 characters of eight different ones, no period: a quadratic period search took minutes.
    expect(isGuessableSecret(`${'a'.repeat(200_000)}bcdefghi`)).toBe(false);
    expect(isGuessableSecret(`${'abcdefgh'.repeat(25_000)}a`)).toBe(true);
  });
});

describe('a key per caller (a service calling another)', () => {
  const serviceName = fc.stringMatching(SERVICE_KEY_PATTERN, { maxLength: 20 });
  const SERVICE_KEY = serviceSigningKey(KEY, 'notifications');
  /** The rule under test: the caller may GET its signed user's path only. */
  const ownPathOnly: CallRule = ({ method, target }, [userId]) => method === 'GET' && userId !== '' && target === `/own/${userId}`;
  const callers = callerKeysOf([SERVICE_KEY], { orders: ownPathOnly });
  const verifyAsService = (headers: Record<string, string | string[]>, request: AddressedRequest) => verifyGatewaySignature(SERVICE_KEY, request, (name) => headers[name], NOW, callers);

  // A contract with deployments as the service keys are: `printf 'koa-gateway-caller-key-v1\n<caller>' | openssl dgst
  // -sha256 -hmac <the service's key> -binary | base64`, base64url.
  it.each([
    ['users', 'orders', 'Ps5ijyautvyClwzizC1YWouTIMeBL21eYD8L1o8NxqU'],
    ['notifications', 'billing-api', '1EAnkhpZXIcj6fxjEt2DM4mK9Eb9sf_gB_BWtLybqDY'],
  ])("derives %s's key for %s as openssl does", (service, caller, expected) => {
    expect(callerSigningKey(serviceSigningKey(KEY, service), caller)).toBe(expected);
    expect(callerKeyFromGatewayKey(KEY, service, caller)).toBe(expected);
  });

  it('names its caller in the header, and is believed for the calls its rule allows only, else outside-scope (generated)', () => {
    const sign = createCallerSigner(callerSigningKey(SERVICE_KEY, 'orders'), 'orders', () => NOW);
    const method = fc.constantFrom('GET', 'POST', 'HEAD', 'DELETE');
    const target = fc.oneof(fc.constant('/notifications'), headerValue.map((text) => `/own/${text}`), headerValue.map((text) => `/${text}`));
    const outcomes = new Set<string>();
    fc.assert(
      // Half of the targets the signed user's own path (null), so that both verdicts are drawn.
      fc.property(method, fc.option(target), identity, (verb, path, values) => {
        const request = { audience: 'notifications', method: verb, target: path ?? `/own/${values[0]}`, requestId: REQUEST.requestId };
        const signature = sign(request, values);
        const expected = ownPathOnly(request, values) ? undefined : 'outside-scope';
        outcomes.add(String(expected));
        return signature.startsWith(`t=${NOW / 1000},by=orders,v4=`) && verifyAsService(received(values, signature), request) === expected;
      }),
      { seed: 20261208, numRuns: 300 },
    );
    expect(outcomes).toEqual(new Set(['undefined', 'outside-scope']));
  });

  it("is not the gateway's signature, nor another caller's, and the service's own key does not make one (generated)", () => {
    const own = createCallerSigner(callerSigningKey(SERVICE_KEY, 'orders'), 'orders', () => NOW);
    fc.assert(
      fc.property(identity, serviceName, (values, other) => {
        fc.pre(other !== 'orders');
        const request = { audience: 'notifications', method: 'GET', target: `/own/${values[0]}`, requestId: REQUEST.requestId };
        const signature = own(request, values);
        const headers = (value: string) => received(values, value);
        return (
          // The caller's name taken out: a gateway signature, which the caller's key does not make.
          verifyAsService(headers(signature.replace('by=orders,', '')), request) === 'mismatch' &&
          // Another name put in: a caller the service takes nothing from, or one with another key.
          verifyAsService(headers(signature.replace('by=orders,', `by=${other},`)), request) === 'mismatch' &&
          // Made with the service's own key (what order-service held before), as the caller: not the caller's key.
          verifyAsService(headers(createCallerSigner(SERVICE_KEY, 'orders', () => NOW)(request, values)), request) === 'mismatch' &&
          // Without caller rules at all, no caller's signature verifies.
          verifyGatewaySignature(SERVICE_KEY, request, (name) => headers(signature)[name], NOW) === 'mismatch'
        );
      }),
      { seed: 20261208, numRuns: 200 },
    );
  });

  it('is v4 only, and its name one spelling (a service name)', () => {
    const values: SignedValues = ['2', 'user', 'bob@example.com', ''];
    const request = { audience: 'notifications', method: 'GET', target: '/own/2', requestId: REQUEST.requestId };
    const signature = createCallerSigner(callerSigningKey(SERVICE_KEY, 'orders'), 'orders', () => NOW)(request, values);
    expect(verifyAsService(received(values, signature), request)).toBeUndefined();
    for (const spelling of [signature.replace(',v4=', ',v3='), signature.replace('by=orders', 'by=Orders'), signature.replace('by=orders', 'by='), signature.replace('by=orders,', 'by=orders,by=orders,'), signature.replace('by=orders,', ''), `by=orders,${signature.replace('by=orders,', '')}`]) {
      expect(verifyAsService(received(values, spelling), request)).toMatch(/^(malformed|mismatch)$/);
    }
    expect(() => createCallerSigner('x'.repeat(43), 'Orders')).toThrow(/service name/);
  });

  it("verifies with a key derived from any key the service believes (a rotation's accepted one too)", () => {
    const next = serviceSigningKey(`${KEY}-next`, 'notifications');
    const both = callerKeysOf([next, SERVICE_KEY], { orders: ownPathOnly });
    const values: SignedValues = ['2', 'user', '', ''];
    const request = { audience: 'notifications', method: 'GET', target: '/own/2', requestId: '' };
    for (const serviceKey of [SERVICE_KEY, next]) {
      const signature = createCallerSigner(callerSigningKey(serviceKey, 'orders'), 'orders', () => NOW)(request, values);
      expect(verifyGatewaySignature([next, SERVICE_KEY], request, (name) => received(values, signature, '')[name], NOW, both)).toBeUndefined();
    }
  });
});
