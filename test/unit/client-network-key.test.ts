import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { createAccountKey } from '../../src/middleware/login';
import { clientNetworkKey } from '../../src/middleware/rate-limit';

describe('clientNetworkKey', () => {
  it.each([
    { desc: 'an IPv4 address is its own key', address: '192.0.2.7', prefix: 64, key: '192.0.2.7' },
    { desc: 'an IPv4-mapped IPv6 address is keyed as the IPv4 address', address: '::ffff:192.0.2.7', prefix: 64, key: '192.0.2.7' },
    { desc: 'an IPv4-mapped address in hex groups is keyed as the IPv4 address', address: '::ffff:c000:0207', prefix: 64, key: '192.0.2.7' },
    { desc: 'an IPv4-mapped address fully written out is keyed as the IPv4 address', address: '0:0:0:0:0:FFFF:192.0.2.7', prefix: 128, key: '192.0.2.7' },
    { desc: 'an IPv4 address with a port is keyed without it', address: '192.0.2.7:4711', prefix: 64, key: '192.0.2.7' },
    { desc: 'IPv6 /64 keeps the first four groups', address: '2001:db8:1:2:3:4:5:6', prefix: 64, key: '2001:db8:1:2:0:0:0:0/64' },
    { desc: 'IPv6 /48 keeps the first three groups', address: '2001:db8:1:2:3:4:5:6', prefix: 48, key: '2001:db8:1:0:0:0:0:0/48' },
    { desc: 'IPv6 /56 masks inside the fourth group', address: '2001:db8:1:abff:3:4:5:6', prefix: 56, key: '2001:db8:1:ab00:0:0:0:0/56' },
    { desc: 'IPv6 /128 keeps the whole address', address: '2001:db8:1:2:3:4:5:6', prefix: 128, key: '2001:db8:1:2:3:4:5:6/128' },
    { desc: 'a compressed address is expanded', address: '2001:db8::1', prefix: 128, key: '2001:db8:0:0:0:0:0:1/128' },
    { desc: 'leading zeros and upper case are one spelling', address: '2001:0DB8:0000:0000::0001', prefix: 128, key: '2001:db8:0:0:0:0:0:1/128' },
    { desc: 'a zone id is dropped', address: 'fe80::1%eth0', prefix: 128, key: 'fe80:0:0:0:0:0:0:1/128' },
    { desc: 'brackets and a port are dropped', address: '[2001:db8::1]:443', prefix: 128, key: '2001:db8:0:0:0:0:0:1/128' },
    { desc: 'the unspecified address', address: '::', prefix: 64, key: '0:0:0:0:0:0:0:0/64' },
    { desc: 'an IPv4-compatible (not mapped) address stays IPv6', address: '::192.0.2.7', prefix: 128, key: '0:0:0:0:0:0:c000:207/128' },
    { desc: 'a value that is no address is keyed as sent, marked', address: 'unknown', prefix: 64, key: 'unparsed:unknown' },
    { desc: 'a long forged value is cut to 64 characters', address: 'x'.repeat(10_000), prefix: 64, key: `unparsed:${'x'.repeat(64)}` },
  ])('$desc (/$prefix)', ({ address, prefix, key }) => {
    expect(clientNetworkKey(address, prefix)).toBe(key);
  });

  it.each([
    { desc: 'compressed vs expanded', a: '2001:db8::1', b: '2001:0db8:0:0:0:0:0:1' },
    { desc: 'lower vs upper case', a: '2001:db8::abcd', b: '2001:DB8::ABCD' },
    { desc: 'different compression points', a: '2001:db8:0:0:1::1', b: '2001:db8::1:0:0:1' },
    { desc: 'mapped IPv4 dotted vs hex', a: '::ffff:10.0.0.1', b: '::ffff:a00:1' },
    { desc: 'mapped IPv4 vs plain IPv4', a: '::ffff:10.0.0.1', b: '10.0.0.1' },
  ])('gives one key for two spellings of one address: $desc', ({ a, b }) => {
    for (const prefix of [48, 64, 128]) expect(clientNetworkKey(a, prefix)).toBe(clientNetworkKey(b, prefix));
  });

  it.each([
    { desc: '/64 joins hosts of one /64', prefix: 64, a: '2001:db8:1:2::1', b: '2001:db8:1:2:ffff:ffff:ffff:ffff', same: true },
    { desc: '/64 parts neighbouring /64s', prefix: 64, a: '2001:db8:1:2::1', b: '2001:db8:1:3::1', same: false },
    { desc: '/48 joins neighbouring /64s of one /48', prefix: 48, a: '2001:db8:1:2::1', b: '2001:db8:1:3::1', same: true },
    { desc: '/48 parts neighbouring /48s', prefix: 48, a: '2001:db8:1::1', b: '2001:db8:2::1', same: false },
    { desc: '/128 parts two hosts of one /64', prefix: 128, a: '2001:db8:1:2::1', b: '2001:db8:1:2::2', same: false },
  ])('$desc', ({ prefix, a, b, same }) => {
    expect(clientNetworkKey(a, prefix) === clientNetworkKey(b, prefix)).toBe(same);
  });

  describe('properties', () => {
    const groups = fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 8, maxLength: 8 });
    const prefix = fc.integer({ min: 1, max: 128 });
    /** The address with every group written in full (`0db8`), upper case. */
    const expanded = (g: number[]) => g.map((group) => group.toString(16).padStart(4, '0').toUpperCase()).join(':');
    /** Node's canonical spelling (RFC 5952: compressed, lower case), from the WHATWG URL serializer. */
    const canonical = (address: string) => new URL(`http://[${address}]/`).hostname.slice(1, -1);
    const isMapped = (g: number[]) => g.slice(0, 5).every((group) => group === 0) && g[5] === 0xffff;

    it('gives every spelling fast-check can write of one address the key of its canonical spelling', () => {
      fc.assert(fc.property(fc.ipV6(), prefix, (address, bits) => clientNetworkKey(address, bits) === clientNetworkKey(canonical(address), bits)));
    });

    it('gives the fully expanded and the compressed spelling one key', () => {
      fc.assert(fc.property(groups, prefix, (g, bits) => clientNetworkKey(expanded(g), bits) === clientNetworkKey(canonical(expanded(g)), bits)));
    });

    const bitsOf = (g: number[]) => g.map((group) => group.toString(2).padStart(16, '0')).join('');
    const groupsOf = (bits: string) => Array.from({ length: 8 }, (_, index) => parseInt(bits.slice(16 * index, 16 * index + 16), 2));

    it('joins two addresses exactly when their first prefix bits agree', () => {
      fc.assert(
        fc.property(groups, groups, prefix, (a, b, bits) => {
          fc.pre(!isMapped(a) && !isMapped(b));
          const sameNetwork = bitsOf(a).slice(0, bits) === bitsOf(b).slice(0, bits);
          return (clientNetworkKey(expanded(a), bits) === clientNetworkKey(expanded(b), bits)) === sameNetwork;
        }),
      );
    });

    it('keeps the key of an address whatever its host bits (the bits after the prefix) are', () => {
      fc.assert(
        fc.property(groups, groups, prefix, (a, b, bits) => {
          const neighbour = groupsOf(bitsOf(a).slice(0, bits) + bitsOf(b).slice(bits));
          fc.pre(!isMapped(a) && !isMapped(neighbour));
          return clientNetworkKey(expanded(a), bits) === clientNetworkKey(canonical(expanded(neighbour)), bits);
        }),
      );
    });

    it('keys every IPv4 address and its mapped IPv6 form alike', () => {
      fc.assert(fc.property(fc.ipV4(), (address) => clientNetworkKey(`::ffff:${address}`, 64) === address && clientNetworkKey(address, 64) === address));
    });
  });
});

describe('createAccountKey', () => {
  const accountKey = createAccountKey('a-secret-of-this-gateway');

  it.each([
    { desc: 'upper case', spelling: 'ALICE@EXAMPLE.COM' },
    { desc: 'mixed case', spelling: 'Alice@Example.com' },
    { desc: 'surrounding spaces', spelling: '  alice@example.com ' },
    { desc: 'tabs and newlines', spelling: '\talice@example.com\n' },
  ])('gives $desc the key of the plain spelling', ({ spelling }) => {
    expect(accountKey(spelling)).toBe(accountKey('alice@example.com'));
  });

  it('is a keyed SHA-256 hex digest: never the email, nor its plain hash, and another secret gives another key', () => {
    const key = accountKey('alice@example.com');
    expect(key).toMatch(/^[0-9a-f]{64}$/);
    expect(key).not.toContain('alice');
    expect(key).not.toBe(createHash('sha256').update('alice@example.com').digest('hex'));
    expect(accountKey('bob@example.com')).not.toBe(key);
    expect(createAccountKey('another-secret')('alice@example.com')).not.toBe(key);
    expect(createAccountKey('a-secret-of-this-gateway')('alice@example.com')).toBe(key);
  });
});
