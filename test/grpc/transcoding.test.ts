import http from 'node:http';
import net from 'node:net';
import { gzipSync } from 'node:zlib';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { activeConfig, createLiveGateway } from '../../src/config-reload';
import { generateApiKey, hashApiKey } from '../../src/consumers';
import { createGatewayApps } from '../../src/gateway';
import { MAX_JSON_BODY_VALUES } from '../../src/grpc/json-mapping';
import { ACCESS_LINE_MESSAGE, ATTR, HEADER } from '../../otel/wire-names';
import { startInMemoryTracing, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { listen, memoryLogger, refusedOrigin, type TestServer } from '../helpers/servers';
import { shippedConfigFile, testConfig } from '../helpers/test-config';
import { signToken } from '../helpers/tokens';
import { mappingGatewayConfig, MAPPING_PROTO, MAPPING_SERVICE, startMappingServer, type MappingServer } from './mapping-server';
import { tricklingUpload } from '../helpers/uploads';
import { waitFor } from '../helpers/wait';

/**
 * REST/JSON -> gRPC through the real gateway, against a real gRPC server of test/fixtures/transcoding.proto
 * that answers with what it decoded and records the metadata it received.
 */
describe('gRPC transcoding', () => {
  let service: MappingServer;
  let gateway: TestServer;
  /** The same gateway, continuing clients' trace context (`trustTraceparent`). */
  let trusting: TestServer;
  let tracing: InMemoryTracing;
  const gatewayLogs = memoryLogger('gateway');
  const grpc = { proto: MAPPING_PROTO, service: MAPPING_SERVICE };

  beforeAll(async () => {
    tracing = startInMemoryTracing();
    service = await startMappingServer();
    const shipped = shippedConfigFile() as { services: Record<string, unknown>; routes: unknown[] };
    const config = testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' }, {
      services: { ...shipped.services, mapping: { url: service.url }, 'mapping-down': { url: await refusedOrigin() } },
      routes: [
        ...shipped.routes,
        { name: 'mapping', prefix: '/api/mapping', service: 'mapping', upstreamPath: '/v1', auth: 'public', timeoutMs: 400, grpc },
        { name: 'mapping-private', prefix: '/api/private-mapping', service: 'mapping', upstreamPath: '/v1', grpc },
        // Its own limit: the paths a trailing slash leaves unmatched are probed here without spending the main route's.
        { name: 'mapping-paths', prefix: '/api/mapping-paths', service: 'mapping', upstreamPath: '/v1', auth: 'public', grpc, rateLimit: { max: 1000, windowMs: 60_000 } },
        { name: 'mapping-down', prefix: '/api/down-mapping', service: 'mapping-down', upstreamPath: '/v1', auth: 'public', grpc },
        // The public path is the upstream one under a prefix, so the route takes `/api/mv` off (X-Forwarded-Prefix).
        // Its own limit, as mapping-paths has: the main route's 100 requests a minute are spent by the tests above.
        { name: 'mapping-prefixed', prefix: '/api/mv/v1', service: 'mapping', upstreamPath: '/v1', auth: 'public', grpc, rateLimit: { max: 1000, windowMs: 60_000 } },
      ],
      // The default limit's window is spent by the paths refused before routing too (encoded slashes, dot segments).
    }, { RATE_LIMIT_MAX: '100000' });
    const apps = createGatewayApps(config, { logger: gatewayLogs.logger, tracer: tracing.tracer, metrics: false });
    gateway = await listen(apps.gateway.callback());
    trusting = await listen(createGatewayApps({ ...config, trustTraceparent: true }, { logger: gatewayLogs.logger, tracer: tracing.tracer, metrics: false }).gateway.callback());
  });
  afterAll(async () => {
    await gateway.close();
    await trusting.close();
    await service.close();
    await tracing.shutdown();
  });

  const call = (path: string, init: RequestInit = {}) => fetch(`${gateway.url}${path}`, init);
  const postJson = (path: string, body: unknown, method = 'POST') => call(path, { method, headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  const lastCall = () => service.calls.at(-1)!;

  describe('maps the request by the proto annotations', () => {
    it('binds a path variable and the whole body, keeping int64 digits beyond 2^53', async () => {
      const response = await postJson('/api/mapping/things/abc', { id: 'overridden-by-path', bigNumber: '9007199254740993', unsignedBig: '18446744073709551615', smallNumber: -7, flag: true, ratio: 0.25, color: 'COLOR_BLUE', tags: ['x', 'y'] });
      expect(response.status).toBe(200);
      expect(response.headers.get('content-type')).toMatch(/^application\/json/);
      expect(await response.json()).toMatchObject({ id: 'abc', bigNumber: '9007199254740993', unsignedBig: '18446744073709551615', smallNumber: -7, flag: true, ratio: 0.25, color: 'COLOR_BLUE', tags: ['x', 'y'] });
      expect(lastCall().request).toMatchObject({ id: 'abc', bigNumber: '9007199254740993', unsignedBig: '18446744073709551615' });
    });

    // Read through a double, the first was refused (not a safe integer), the second sent as 1 and the third sent on
    // as +Inf (its echo then a 502 blaming the service). On the route with its own limit.
    it('sends bare 64-bit numbers as written, and refuses a number the double would change', async () => {
      const response = await postJson('/api/mapping-paths/things/abc', '{"bigNumber": 9223372036854775807, "unsignedBig": 18446744073709551615}');
      expect(response.status).toBe(200);
      expect(lastCall().request).toMatchObject({ bigNumber: '9223372036854775807', unsignedBig: '18446744073709551615' });
      const calls = service.calls.length;
      for (const body of ['{"smallNumber": 1.0000000000000001}', '{"anything": 1e400}']) {
        const refused = await postJson('/api/mapping-paths/things/abc', body);
        expect([refused.status, ((await refused.json()) as { code: string }).code]).toEqual([400, 'invalid_body']);
      }
      expect(service.calls.length).toBe(calls);
    });

    it('binds a nested path variable and the rest from query parameters (nested, repeated, snake_case names)', async () => {
      const query = 'tags=a&tags=b&owner.displayName=Ann&color=COLOR_RED&numbers=1&numbers=-2&flag=true&big_number=-5&createdAt=2026-01-31T12:00:00.5Z&ttl=1.5s&maybeCount=7&maybeFlag=false&colors=COLOR_RED&colors=COLOR_BLUE';
      const response = await call(`/api/mapping/things/t1/owners/o%20x?${query}`);
      expect(response.status).toBe(200);
      expect(await response.json()).toMatchObject({
        id: 't1',
        owner: { id: 'o x', displayName: 'Ann' },
        tags: ['a', 'b'],
        numbers: ['1', '-2'],
        color: 'COLOR_RED',
        colors: ['COLOR_RED', 'COLOR_BLUE'],
        flag: true,
        bigNumber: '-5',
        createdAt: '2026-01-31T12:00:00.500Z',
        ttl: '1.500s',
        maybeCount: 7,
        maybeFlag: false,
      });
    });

    it('takes an enum query parameter by number as by name (the JSON mapping reads both)', async () => {
      const response = await call('/api/mapping/things/t1/owners/o?color=2&colors=1&colors=COLOR_BLUE');
      expect(response.status).toBe(200);
      expect(await response.json()).toMatchObject({ color: 'COLOR_BLUE', colors: ['COLOR_RED', 'COLOR_BLUE'] });
      // Proto3 enums are open: a number the proto does not name is kept, and comes back as that number (the
      // conformance suite's EnumFieldUnknownValue); a name it does not have, or a number past int32, is refused.
      const unknownNumber = await call('/api/mapping/things/t1/owners/o?color=7');
      expect([unknownNumber.status, ((await unknownNumber.json()) as { color: unknown }).color]).toEqual([200, 7]);
      expect((await call('/api/mapping/things/t1/owners/o?color=COLOR_PURPLE')).status).toBe(400);
      expect((await call(`/api/mapping/things/t1/owners/o?color=${2 ** 31}`)).status).toBe(400);
    });

    it('binds the body to the one field the annotation names', async () => {
      const response = await postJson('/api/mapping/things/t2/note', { text: 'hello' }, 'PUT');
      expect(response.status).toBe(200);
      expect(await response.json()).toMatchObject({ id: 't2', note: { text: 'hello' } });
    });

    it('binds a multi-segment variable (`{id=files/**}`)', async () => {
      const response = await call('/api/mapping/files/files/a/b.txt');
      expect(response.status).toBe(200);
      expect(await response.json()).toMatchObject({ id: 'files/a/b.txt' });
    });

    it('writes the well-known types, bytes, maps and unset fields in their JSON forms', async () => {
      const sent = {
        blob: Buffer.from('hello, world').toString('base64'),
        labels: { team: 'edge', tier: 'gold' },
        owners: [{ id: '1', displayName: 'A' }, { id: '2' }],
        createdAt: '2026-02-03T04:05:06+02:00',
        ttl: '-0.000000001s',
        maybeName: 'named',
        extra: { nested: { list: [1, 'two', true, null] }, n: 3.5 },
        anything: ['a', { b: false }],
        updateMask: 'displayName,owner.id',
      };
      const response = await postJson('/api/mapping/things/wkt', sent);
      expect(response.status).toBe(200);
      const body = (await response.json()) as Record<string, unknown>;
      expect(body).toMatchObject({ ...sent, owners: [{ id: '1', displayName: 'A' }, { id: '2', displayName: '' }], createdAt: '2026-02-03T02:05:06Z' });
      // Unset scalars are their defaults; unset messages and wrappers are null.
      expect(body).toMatchObject({ smallNumber: 0, bigNumber: '0', flag: false, color: 'COLOR_UNSPECIFIED', owner: null, maybeCount: null, note: null });
    });

    it('carries a map entry keyed "__proto__" both ways, as any other key', async () => {
      const response = await postJson('/api/mapping/things/proto-key', '{"labels": {"__proto__": "x", "a": "1"}}');
      expect(response.status).toBe(200);
      const sorted = (map: object) => Object.entries(map).sort(([a], [b]) => a.localeCompare(b));
      expect(sorted(lastCall().request.labels as object)).toEqual([['__proto__', 'x'], ['a', '1']]);
      // JSON.parse makes "__proto__" an own key, as the client's parser would.
      expect(sorted(((await response.json()) as { labels: object }).labels)).toEqual([['__proto__', 'x'], ['a', '1']]);
    });

    it('takes a float or double as a JSON number, bare or in a string, up to the largest float', async () => {
      const response = await postJson('/api/mapping/things/numbers', { fraction: '1.5e3', ratio: '-0.25', maybeFraction: 3.4e38 });
      expect(response.status).toBe(200);
      expect(lastCall().request).toMatchObject({ fraction: 1500, ratio: -0.25, maybeFraction: { value: Math.fround(3.4e38) } });
    });

    // A well-known type's JSON form can be a bare value. Handed to Koa as is, a string starting with `<` went out as
    // text/html (markup the service wrote, served from the gateway's origin), any other as text/plain, and a null
    // Value as a 204 without a body.
    it.each([
      { desc: 'a StringValue whose text starts with <', path: '/api/mv/v1/say/%3Cb%3Ehi', json: '"<b>hi"' },
      { desc: 'a StringValue of plain text', path: '/api/mv/v1/say/plain', json: '"plain"' },
      { desc: 'a null Value', path: '/api/mv/v1/nothing', json: 'null' },
    ])('answers $desc as JSON (application/json, 200)', async ({ path, json }) => {
      const response = await call(path);
      expect({ status: response.status, type: response.headers.get('content-type'), body: await response.text() }).toEqual({ status: 200, type: 'application/json; charset=utf-8', body: json });
    });

    it('answers a method with an Empty request from the path alone', async () => {
      const response = await call('/api/mapping/metadata');
      expect(response.status).toBe(200);
      expect(await response.json()).toEqual({ entries: expect.any(Object) });
    });
  });

  describe('refuses what does not fit, before the service sees it', () => {
    /** POSTs `body` (JSON, or raw bytes); expects a problem+json `status` with the request id, no call reaching the service; returns the problem. */
    async function expectRefused(body: unknown, status = 400): Promise<Record<string, unknown>> {
      const before = service.calls.length;
      const response = Buffer.isBuffer(body) ? await call('/api/mapping/things/bad', { method: 'POST', headers: { 'content-type': 'application/json' }, body }) : await postJson('/api/mapping/things/bad', body);
      expect(response.status).toBe(status);
      expect(response.headers.get('content-type')).toBe('application/problem+json');
      const problem = (await response.json()) as Record<string, unknown>;
      expect(problem).toMatchObject({ status, requestId: response.headers.get(HEADER.requestId) });
      expect(service.calls.length).toBe(before);
      return problem;
    }

    it.each([
      { desc: 'malformed JSON', body: '{"id": ', status: 400, code: 'invalid_body' },
      { desc: 'a JSON array for body "*"', body: '[1,2]', status: 400, code: 'invalid_body' },
      { desc: 'a string in an int32 field', body: { smallNumber: 'abc' }, status: 400, code: 'invalid_body' },
      { desc: 'a fraction in an int32 field', body: { smallNumber: 1.5 }, status: 400, code: 'invalid_body' },
      { desc: 'an int64 beyond its range', body: { bigNumber: '9223372036854775808' }, status: 400, code: 'invalid_body' },
      { desc: 'a negative uint64', body: { unsignedBig: '-1' }, status: 400, code: 'invalid_body' },
      { desc: 'an unknown field', body: { nope: 1 }, status: 400, code: 'invalid_body' },
      { desc: 'an unknown enum name', body: { color: 'COLOR_GREEN' }, status: 400, code: 'invalid_body' },
      { desc: 'a timestamp that is not RFC 3339', body: { createdAt: 'yesterday' }, status: 400, code: 'invalid_body' },
      { desc: 'an impossible date', body: { createdAt: '2026-02-30T00:00:00Z' }, status: 400, code: 'invalid_body' },
      { desc: 'a timestamp with an offset past 23:59', body: { createdAt: '2026-01-01T00:00:00+99:99' }, status: 400, code: 'invalid_body' },
      { desc: 'a timestamp with an offset of 60 minutes', body: { createdAt: '2026-01-01T00:00:00-05:60' }, status: 400, code: 'invalid_body' },
      { desc: 'a duration without unit', body: { ttl: '5' }, status: 400, code: 'invalid_body' },
      { desc: 'bytes that are not base64', body: { blob: 'not base64!' }, status: 400, code: 'invalid_body' },
      { desc: 'a string for a repeated field', body: { tags: 'x' }, status: 400, code: 'invalid_body' },
      { desc: 'a number for a string field', body: { maybeName: 5 }, status: 400, code: 'invalid_body' },
      { desc: 'a float beyond its range (it would become Infinity)', body: { fraction: 1e39 }, status: 400, code: 'invalid_body' },
      { desc: 'a float beyond its range, as a string', body: { fraction: '-1e39' }, status: 400, code: 'invalid_body' },
      { desc: 'a FloatValue beyond its range', body: { maybeFraction: 3.5e38 }, status: 400, code: 'invalid_body' },
      { desc: 'a hexadecimal string in a double', body: { ratio: '0x10' }, status: 400, code: 'invalid_body' },
      { desc: 'a binary string in a double', body: { ratio: '0b101' }, status: 400, code: 'invalid_body' },
      { desc: 'an octal string in a float', body: { fraction: '0o7' }, status: 400, code: 'invalid_body' },
      { desc: 'a number with spaces around it, as a string', body: { ratio: ' 1 ' }, status: 400, code: 'invalid_body' },
      { desc: 'a struct nested 40 levels deep', body: { extra: JSON.parse('{"a":'.repeat(40) + '1' + '}'.repeat(40)) as unknown }, status: 400, code: 'invalid_body' },
    ])('answers $desc with $status $code', async ({ body, status, code }) => {
      expect(await expectRefused(body, status)).toMatchObject({ code });
    });

    it.each([
      { desc: 'a string field', body: '{"tags": ["a\\ud800b"]}' },
      { desc: 'a string wrapper', body: '{"maybeName": "\\udc00"}' },
      { desc: 'a map key', body: '{"labels": {"\\ud800": "x"}}' },
      { desc: 'a map value', body: '{"labels": {"k": "x\\udbff"}}' },
      { desc: 'a Struct key', body: '{"extra": {"\\ud800": 1}}' },
      { desc: 'a string deep in a Value', body: '{"anything": {"a": [{"b": "\\udfff"}]}}' },
      { desc: 'a field mask', body: '{"updateMask": "tags,\\ud800"}' },
      { desc: 'a pair written backwards', body: '{"tags": ["\\ude00\\ud83d"]}' },
    ])('refuses a lone UTF-16 surrogate escaped in $desc with 400 invalid_body, reaching no service (it would go out as bytes that are not UTF-8)', async ({ body }) => {
      expect(await expectRefused(body)).toMatchObject({ code: 'invalid_body', detail: expect.stringMatching(/lone UTF-16 surrogate/) });
    });

    it('carries a surrogate pair escaped in JSON as the one character it is', async () => {
      const response = await postJson('/api/mapping/things/ok', '{"tags": ["\\ud83d\\ude00"], "labels": {"\\ud83d\\ude00": "\\ud83d\\ude00"}}');
      expect(response.status).toBe(200);
      expect(lastCall().request).toMatchObject({ tags: ['\u{1f600}'], labels: { '\u{1f600}': '\u{1f600}' } });
    });

    it.each([
      { desc: 'bytes that are never UTF-8 (FF FE)', bytes: [0xff, 0xfe] },
      { desc: 'a sequence cut short (E2 82)', bytes: [0xe2, 0x82] },
      { desc: 'an overlong slash (C0 AF)', bytes: [0xc0, 0xaf] },
      { desc: 'an encoded surrogate (ED A0 80, CESU-8)', bytes: [0xed, 0xa0, 0x80] },
    ])('refuses a JSON body that is not UTF-8 ($desc) with 400 invalid_body, never handing the service U+FFFD', async ({ bytes }) => {
      const body = Buffer.concat([Buffer.from('{"tags": ["a'), Buffer.from(bytes), Buffer.from('b"]}')]);
      expect(await expectRefused(body)).toMatchObject({ code: 'invalid_body', detail: 'The request body is not UTF-8.' });
    });

    it('still refuses a JSON body that starts with a byte order mark (400)', async () => {
      await expectRefused(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"tags": ["a"]}')]));
    });

    // String#trim takes U+FEFF and U+00A0 for white space, RFC 8259 2 does not: such a body was called as no body.
    it.each([
      { desc: 'a byte order mark', bytes: [0xef, 0xbb, 0xbf] },
      { desc: 'a no-break space', bytes: [0xc2, 0xa0] },
    ])('refuses a body of $desc alone (400), never calling as if none was sent', async ({ bytes }) => {
      await expectRefused(Buffer.from(bytes));
    });

    // README's 413 row names proxy.maxBodyBytes for every body: a gRPC route took 1 MiB whatever it said.
    it('bounds a JSON body by proxy.maxBodyBytes when that is under 1 MiB', async () => {
      const config = mappingGatewayConfig(service.url, { config: { proxy: { maxBodyBytes: 4096 } } });
      const small = await listen(createGatewayApps(config, { logger: gatewayLogs.logger, tracer: tracing.tracer, metrics: false }).gateway.callback());
      try {
        const before = service.calls.length;
        const post = (tags: string[]) => fetch(`${small.url}/api/mapping/things/small`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tags }) });
        const over = await post(Array.from({ length: 1000 }, () => 'tag'));
        expect([over.status, ((await over.json()) as { code: string }).code]).toEqual([413, 'payload_too_large']);
        expect(service.calls.length).toBe(before);
        expect((await post(['fits'])).status).toBe(200);
      } finally {
        await small.close();
      }
    });

    // Read with `for await`, the body never flowed and always read as paused, which the rate check takes for the
    // gateway holding it back: a body dripped at 5 bytes a second was read to its end (200 after 6 s), where login's
    // gets 408 after the grace period.
    it('answers a body dripped slower than server.minBodyBytesPerSecond 408, calling nothing, and takes one at the rate', async () => {
      const config = mappingGatewayConfig(service.url, { config: { server: { minBodyBytesPerSecond: 100, bodyGracePeriodMs: 600 } } });
      const own = await listen(createGatewayApps(config, { logger: gatewayLogs.logger, metrics: false }).gateway.callback());
      try {
        const before = service.calls.length;
        const body = JSON.stringify({ tags: ['slow', 'x'.repeat(400)] });
        const headers = { 'content-type': 'application/json', 'content-length': String(body.length) };
        const dripped = tricklingUpload(own.url, '/api/mapping/things/dripped', headers, body, 1, 200);
        const answer = await dripped.reply;
        expect([answer.status, (JSON.parse(answer.text) as { code: string }).code]).toEqual([408, 'request_timeout']);
        expect(dripped.sent()).toBeLessThan(body.length);
        expect(service.calls.length).toBe(before);
        // The control: the same body at 2,000 bytes a second is read and called.
        const steady = tricklingUpload(own.url, '/api/mapping/things/steady', headers, body, 200, 100);
        expect((await steady.reply).status).toBe(200);
        expect(service.calls.length).toBe(before + 1);
      } finally {
        await own.close();
      }
    });

    // 500,000 zeros in 1 MB held the event loop 0.7-0.8 s (parsed with a reviver, then built into a message), every
    // other request behind it; a body of that many values is refused before it is parsed.
    it(`answers 413 to a body of more than ${MAX_JSON_BODY_VALUES} JSON values, calling nothing`, async () => {
      // A gateway of its own: the suite's shares one rate-limit window among its tests.
      const own = await listen(createGatewayApps(mappingGatewayConfig(service.url), { logger: gatewayLogs.logger, metrics: false }).gateway.callback());
      try {
        const before = service.calls.length;
        const post = (count: number) => fetch(`${own.url}/api/mapping/things/many`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: `{"tags": [${Array(count).fill('""').join(',')}]}` });
        const over = await post(200_000);
        expect(over.status).toBe(413);
        expect(await over.json()).toMatchObject({ code: 'payload_too_large', detail: `The request body holds more than ${MAX_JSON_BODY_VALUES} JSON values.`, requestId: expect.any(String) });
        expect(service.calls.length).toBe(before);
        // The object and the array are values too.
        expect((await post(MAX_JSON_BODY_VALUES - 2)).status).toBe(200);
      } finally {
        await own.close();
      }
    });

    // The rest of a body over the limit is never read: kept alive, the connection held a request behind it unanswered.
    it('closes the connection after a chunked body over the limit (413), whose rest it does not read', async () => {
      const { hostname, port } = new URL(gateway.url);
      const reply = await new Promise<string>((resolve) => {
        const socket = net.connect(Number(port), hostname, () => {
          const chunk = Buffer.alloc(1024 * 1024 + 1, 0x20);
          socket.write(`POST /api/mapping/things/big HTTP/1.1\r\nHost: ${hostname}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${chunk.length.toString(16)}\r\n`);
          socket.write(chunk);
          socket.write(`\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: ${hostname}\r\n\r\n`);
        });
        let text = '';
        socket.setTimeout(4000, () => socket.destroy());
        socket.on('data', (data: Buffer) => (text += data.toString('latin1')));
        socket.on('error', () => undefined);
        socket.on('close', () => resolve(text));
      });
      expect(reply).toMatch(/^HTTP\/1\.1 413 /);
      expect(reply.toLowerCase()).toContain('\r\nconnection: close\r\n');
    });

    it('answers 413, not 429 "resource exhausted", for a body under the limit whose message would be over the 4 MiB gRPC sends (refused for its values before it is built)', async () => {
      // Each 0 of a ListValue is an 11-byte Value: 800 KB of JSON, about 4.4 MB of message.
      const body = `{"anything": [${Array.from({ length: 400_000 }, () => '0').join(',')}]}`;
      expect(body.length).toBeLessThan(1024 * 1024);
      expect(await expectRefused(body, 413)).toMatchObject({ code: 'payload_too_large', detail: expect.stringMatching(/more than 100000 JSON values/) });
    });

    it('answers a gzip-coded JSON body with 415 and Accept-Encoding: identity, not 400 "not UTF-8"', async () => {
      const before = service.calls.length;
      const body = gzipSync('{"tags": ["a"]}');
      const response = await call('/api/mapping/things/x', { method: 'POST', headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' }, body });
      expect(response.status).toBe(415);
      expect(response.headers.get('accept-encoding')).toBe('identity');
      expect(await response.json()).toMatchObject({ code: 'unsupported_media_type' });
      expect(service.calls.length).toBe(before);
    });

    it('answers a body that is not JSON with 415', async () => {
      const response = await call('/api/mapping/things/x', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'id=1' });
      expect(response.status).toBe(415);
    });

    // Read as UTF-8 whatever it said, Latin-1's é (one byte) and UTF-8's (two) were two readings of one body.
    it.each(['iso-8859-1', 'utf-16', 'windows-1252'])('answers a JSON body declared in charset=%s with 415, calling nothing', async (charset) => {
      const before = service.calls.length;
      const response = await call('/api/mapping/things/x', { method: 'POST', headers: { 'content-type': `application/json; charset=${charset}` }, body: Buffer.from('{"tags": ["\xe9"]}', 'latin1') });
      expect(response.status).toBe(415);
      expect(await response.json()).toMatchObject({ code: 'unsupported_media_type' });
      expect(service.calls.length).toBe(before);
      // UTF-8 in any spelling is read.
      const utf8 = await call('/api/mapping/things/x', { method: 'POST', headers: { 'content-type': 'application/json; charset=UTF-8' }, body: '{"tags": ["é"]}' });
      expect(utf8.status).not.toBe(415);
    });

    it.each([
      { desc: 'an unknown query parameter', query: 'nope=1' },
      { desc: 'a query parameter naming a message', query: 'owner=x' },
      { desc: 'a query parameter re-binding a path variable', query: 'id=other' },
      { desc: 'a bool that is not true/false', query: 'flag=yes' },
      { desc: 'a query parameter for the field the body binds', query: 'note.text=x', path: '/api/mapping/things/t/note', method: 'PUT' },
    ])('answers $desc with 400', async ({ query, path = '/api/mapping/things/t/owners/o', method = 'GET' }) => {
      const before = service.calls.length;
      const response = method === 'GET' ? await call(`${path}?${query}`) : await postJson(`${path}?${query}`, { text: 'x' }, method);
      expect(response.status).toBe(400);
      expect(service.calls.length).toBe(before);
    });

    it.each([
      { desc: 'an encoded slash', segment: 'a%2Fb' },
      { desc: 'an encoded backslash', segment: 'a%5Cb' },
      { desc: 'a dot-dot segment', segment: '..' },
      { desc: 'an encoded dot-dot segment', segment: '%2e%2e' },
      { desc: 'an encoded NUL', segment: 'a%00b' },
      { desc: 'an encoded newline', segment: 'a%0Ab' },
      { desc: 'malformed percent-encoding', segment: 'a%zzb' },
      { desc: 'a value over 1024 characters', segment: 'x'.repeat(1025) },
    ])('refuses a path variable with $desc (400), reaching no service', async ({ segment }) => {
      const before = service.calls.length;
      // Raw, as an attacker sends it: fetch would resolve `..` before sending.
      const status = await rawPost(gateway.url, `/api/mapping/things/${segment}`, '{}');
      expect(status).toBe(400);
      expect(service.calls.length).toBe(before);
    });

    it.each([
      { desc: "a trailing slash after `{id}`'s value", method: 'POST', path: '/api/mapping-paths/things/abc/' },
      { desc: 'an empty `{id}` (a trailing slash where the value goes)', method: 'POST', path: '/api/mapping-paths/things/' },
      { desc: 'a trailing slash after the last of two variables', method: 'GET', path: '/api/mapping-paths/things/t/owners/o/' },
      { desc: 'a trailing slash after the segments `**` takes', method: 'GET', path: '/api/mapping-paths/files/files/a/' },
      { desc: 'a trailing slash where `**` takes no segment', method: 'GET', path: '/api/mapping-paths/files/files/' },
    ])('answers 404 route_not_found for $desc, reaching no service (a wildcard never takes an empty segment)', async ({ method, path }) => {
      const before = service.calls.length;
      const response = await call(path, method === 'POST' ? { method, headers: { 'content-type': 'application/json' }, body: '{}' } : { method });
      expect(response.status).toBe(404);
      expect(await response.json()).toMatchObject({ code: 'route_not_found' });
      expect(service.calls.length).toBe(before);
    });

    it('still binds `**` to every segment it takes, and to none', async () => {
      expect(await (await call('/api/mapping-paths/files/files/a/b')).json()).toMatchObject({ id: 'files/a/b' });
      expect(await (await call('/api/mapping-paths/files/files')).json()).toMatchObject({ id: 'files' });
    });

    it('answers 404 for a path no annotation maps and 405 with Allow for another method', async () => {
      expect((await call('/api/mapping/unknown')).status).toBe(404);
      const wrongMethod = await call('/api/mapping/things/x', { method: 'DELETE' });
      expect(wrongMethod.status).toBe(405);
      expect(wrongMethod.headers.get('allow')).toBe('POST');
      // HEAD is served wherever GET is, so Allow names it (RFC 9110 10.2.1), as the route table's 405 does.
      const getOnly = await call('/api/mapping/files/files/a', { method: 'POST' });
      expect(getOnly.status).toBe(405);
      expect(getOnly.headers.get('allow')).toBe('GET, HEAD');
      expect((await call('/api/mapping/files/files/a', { method: 'HEAD' })).status).toBe(200);
    });
  });

  describe('maps gRPC statuses to HTTP', () => {
    it.each([
      { grpc: 'CANCELLED', number: 1, status: 502, code: 'upstream_bad_response' },
      { grpc: 'UNKNOWN', number: 2, status: 502, code: 'upstream_bad_response' },
      { grpc: 'INVALID_ARGUMENT', number: 3, status: 400, code: 'grpc_invalid_argument' },
      { grpc: 'DEADLINE_EXCEEDED', number: 4, status: 504, code: 'upstream_timeout' },
      { grpc: 'NOT_FOUND', number: 5, status: 404, code: 'grpc_not_found' },
      { grpc: 'ALREADY_EXISTS', number: 6, status: 409, code: 'grpc_already_exists' },
      { grpc: 'PERMISSION_DENIED', number: 7, status: 403, code: 'grpc_permission_denied' },
      { grpc: 'RESOURCE_EXHAUSTED', number: 8, status: 429, code: 'grpc_resource_exhausted' },
      { grpc: 'FAILED_PRECONDITION', number: 9, status: 400, code: 'grpc_failed_precondition' },
      { grpc: 'ABORTED', number: 10, status: 409, code: 'grpc_aborted' },
      { grpc: 'OUT_OF_RANGE', number: 11, status: 400, code: 'grpc_out_of_range' },
      { grpc: 'UNIMPLEMENTED', number: 12, status: 501, code: 'upstream_unimplemented' },
      { grpc: 'INTERNAL', number: 13, status: 502, code: 'upstream_bad_response' },
      { grpc: 'UNAVAILABLE', number: 14, status: 503, code: 'upstream_unavailable' },
      { grpc: 'DATA_LOSS', number: 15, status: 502, code: 'upstream_bad_response' },
      { grpc: 'UNAUTHENTICATED', number: 16, status: 401, code: 'grpc_unauthenticated' },
    ])('answers $grpc with $status $code', async ({ number, status, code }) => {
      const message = `service says ${code} (secret-internal-detail)`;
      const response = await postJson('/api/mapping/fail', { code: number, message });
      expect(response.status).toBe(status);
      expect(response.headers.get('content-type')).toBe('application/problem+json');
      const body = (await response.json()) as { detail: string; code: string; requestId: string };
      expect(body).toMatchObject({ status, code, requestId: response.headers.get(HEADER.requestId) });
      // The service's words reach the client only where they are about the client's request (4xx).
      if (status < 500) expect(body.detail).toBe(message);
      else expect(body.detail).not.toContain('secret-internal-detail');
      // grpc-js says UNAVAILABLE for a connection refused too: no "answered UNAVAILABLE" for an answer there may not have been.
      if (code === 'upstream_unavailable') expect(body.detail).toMatch(/^The \S+ service is unavailable\.$/);
      // Every 503 and 429 says when to come back; a RESOURCE_EXHAUSTED's 429 had no Retry-After.
      if (status === 503 || status === 429) expect(response.headers.get('retry-after')).toBe('1');
      // A 401 carries a challenge (RFC 9110 11.6.1), as the gateway's own 401s do.
      expect(response.headers.get('www-authenticate')).toBe(status === 401 ? 'Bearer realm="koa-gateway"' : null);
    });

    // Over HTTP the service's own challenge names what it serves (Bearer); here the gateway writes it, and offered a
    // consumer its API key again, the very credential the service had just refused.
    it('challenges a consumer the service answered UNAUTHENTICATED for the other credentials, a user for every one the route takes', async () => {
      const key = generateApiKey();
      const config = mappingGatewayConfig(service.url, { route: { auth: 'required' }, config: { consumers: [{ id: 'acme', role: 'partner', keys: [{ hash: hashApiKey(key) }] }] } });
      const withConsumers = await listen(createGatewayApps(config, { logger: gatewayLogs.logger, tracer: tracing.tracer, metrics: false }).gateway.callback());
      try {
        const refused = (headers: Record<string, string>) =>
          fetch(`${withConsumers.url}/api/mapping/fail`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ code: 16, message: 'users only' }) });
        const consumer = await refused({ 'x-api-key': key });
        expect([consumer.status, ((await consumer.json()) as { code: string }).code]).toEqual([401, 'grpc_unauthenticated']);
        expect(consumer.headers.get('www-authenticate')).toBe('Bearer realm="koa-gateway"');
        const user = await refused({ authorization: `Bearer ${await signToken()}` });
        expect(user.status).toBe(401);
        expect(user.headers.get('www-authenticate')).toBe('Bearer realm="koa-gateway", ApiKey realm="koa-gateway"');
      } finally {
        await withConsumers.close();
      }
    });

    it('bounds a long service message in the detail', async () => {
      const response = await postJson('/api/mapping/fail', { code: 5, message: `m${'x'.repeat(5000)}` });
      expect(response.status).toBe(404);
      expect(((await response.json()) as { detail: string }).detail.length).toBeLessThanOrEqual(256);
    });

    it("answers 504 when the service outlives the route's timeout (the gRPC deadline), and the service sees the call end", async () => {
      const response = await call('/api/mapping/slow?delayMs=3000');
      expect(response.status).toBe(504);
      expect(await response.json()).toMatchObject({ code: 'upstream_timeout' });
      await waitFor(() => service.cancelled.includes('Slow'));
    });

    it('cancels a unary call when the client goes away, reporting no upstream failure', async () => {
      const requestId = 'a1b2c3d4e5f60718293a4b5c6d7e8f90';
      const controller = new AbortController();
      const pending = call('/api/mapping/slow?delayMs=3000', { signal: controller.signal, headers: { [HEADER.requestId]: requestId } }).catch(() => undefined);
      await waitFor(() => service.calls.some((each) => each.metadata[HEADER.requestId] === requestId));
      controller.abort();
      await pending;
      // The SERVER span ends once the chain returned: by then a failure would have been recorded on it.
      const serverSpan = () => tracing.spans().find((span) => span.kind === SpanKind.SERVER && span.attributes[ATTR.requestId] === requestId);
      await waitFor(() => serverSpan() !== undefined);
      expect(serverSpan()!.attributes[ATTR.errorCode]).toBeUndefined();
      expect(gatewayLogs.lines.filter((line) => line.message === 'request failed' && line.request_id === requestId)).toEqual([]);
    });

    it('answers 503 with Retry-After when the service is down', async () => {
      const response = await postJson('/api/down-mapping/things/x', {});
      expect(response.status).toBe(503);
      expect(response.headers.get('retry-after')).toBe('1');
      expect(await response.json()).toMatchObject({ code: 'upstream_unavailable', requestId: response.headers.get(HEADER.requestId) });
    });
  });

  describe('metadata', () => {
    const forged = { 'x-user-id': '999', 'x-user-role': 'admin', 'x-user-email': 'mallory@example.com', 'x-gateway-timestamp': 'forged', 'x-request-id': 'client-chosen-id-1' };

    it.each([
      { count: 90, status: 200 },
      { count: 120, status: 431 },
    ])('answers a request with $count headers $status (a Node gRPC server resets a stream of over 128 fields: it was 429 "retry later")', async ({ count, status }) => {
      const before = service.calls.length;
      const headers = Object.fromEntries(Array.from({ length: count }, (_, index) => [`x-h${index}`, 'v']));
      const response = await call('/api/mapping/metadata', { headers });
      expect(response.status).toBe(status);
      if (status === 431) {
        expect(await response.json()).toMatchObject({ code: 'headers_too_large' });
        expect(service.calls.length).toBe(before);
      }
    });

    it('strips identity metadata a client forges on a public route, and carries the request id', async () => {
      const response = await call('/api/mapping/metadata', { headers: { ...forged, 'x-custom': 'kept' } });
      expect(response.status).toBe(200);
      const { entries } = (await response.json()) as { entries: Record<string, string> };
      expect(entries).not.toHaveProperty('x-user-id');
      expect(entries).not.toHaveProperty('x-user-role');
      expect(entries).not.toHaveProperty('x-user-email');
      expect(entries['x-gateway-timestamp']).not.toBe('forged');
      expect(entries['x-request-id']).toBe(response.headers.get(HEADER.requestId));
      expect(entries['x-custom']).toBe('kept');
      expect(entries).not.toHaveProperty('authorization');
    });

    it('tells the service the path prefix the route took off (X-Forwarded-Prefix), as over HTTP', async () => {
      const prefixed = await call('/api/mv/v1/metadata', { headers: { 'x-forwarded-prefix': '/forged' } });
      expect(prefixed.status).toBe(200);
      expect(((await prefixed.json()) as { entries: Record<string, string> }).entries['x-forwarded-prefix']).toBe('/api/mv');
      // `/api/mapping-paths` -> `/v1` takes no prefix off: nothing to tell, and the client's value is not passed on.
      const unprefixed = await call('/api/mapping-paths/metadata', { headers: { 'x-forwarded-prefix': '/forged' } });
      expect(((await unprefixed.json()) as { entries: Record<string, string> }).entries).not.toHaveProperty('x-forwarded-prefix');
    });

    it("injects the verified caller's identity, replacing forged values, and never forwards the credential", async () => {
      const token = await signToken({ subject: '7', claims: { email: 'seven@example.com', role: 'user' } });
      const response = await call('/api/private-mapping/metadata', { headers: { ...forged, authorization: `Bearer ${token}` } });
      expect(response.status).toBe(200);
      const { entries } = (await response.json()) as { entries: Record<string, string> };
      expect(entries).toMatchObject({ 'x-user-id': '7', 'x-user-role': 'user', 'x-user-email': 'seven@example.com' });
      expect(entries).not.toHaveProperty('authorization');
    });

    it('refuses the authenticated route without a token, before the service', async () => {
      const before = service.calls.length;
      expect((await call('/api/private-mapping/metadata')).status).toBe(401);
      expect(service.calls.length).toBe(before);
    });

    // grpc-js refuses a metadata value with a tab, and the propagator's whole baggage (request.id included) was lost.
    it("carries a trusted client's baggage after the request id when a property has blanks around its =", async () => {
      const response = await fetch(`${trusting.url}/api/mapping/metadata`, { headers: { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', baggage: 'k=v;p\t=\t1' } });
      expect(response.status).toBe(200);
      const { entries } = (await response.json()) as { entries: Record<string, string> };
      expect(entries.baggage).toBe(`request.id=${response.headers.get(HEADER.requestId)},k=v;p=1`);
    });

    it("sends the gateway's CLIENT span as traceparent, in the request's trace", async () => {
      tracing.reset();
      const response = await call('/api/mapping/metadata');
      const { entries } = (await response.json()) as { entries: Record<string, string> };
      const [, traceId, parentId] = /^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$/.exec(entries.traceparent ?? '') ?? [];
      await waitFor(() => tracing.spans().some((span) => span.kind === SpanKind.SERVER));
      const client = tracing.spans().find((span) => span.kind === SpanKind.CLIENT)!;
      const server = tracing.spans().find((span) => span.kind === SpanKind.SERVER)!;
      expect(client.name).toBe(`grpc.${MAPPING_SERVICE}/Metadata`);
      expect(client.attributes).toMatchObject({ 'rpc.system': 'grpc', 'rpc.service': MAPPING_SERVICE, 'rpc.method': 'Metadata', 'rpc.grpc.status_code': 0 });
      expect(client.spanContext().traceId).toBe(server.spanContext().traceId);
      expect(traceId).toBe(client.spanContext().traceId);
      expect(parentId).toBe(client.spanContext().spanId);
    });
  });

  describe('server streaming (newline-delimited JSON)', () => {
    const lines = (text: string) => text.split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>);

    it('answers one JSON message per line', async () => {
      const response = await call('/api/mapping/count/3');
      expect(response.status).toBe(200);
      expect(response.headers.get('content-type')).toBe('application/x-ndjson');
      expect(lines(await response.text())).toEqual([1, 2, 3].map((n) => ({ n, at: new Date((1_700_000_000 + n) * 1000).toISOString().replace('.000', '') })));
    });

    it('answers an empty stream with 200 and no lines', async () => {
      const response = await call('/api/mapping/count/0');
      expect(response.status).toBe(200);
      expect(await response.text()).toBe('');
    });

    it('ends a stream that fails midway with an error line', async () => {
      const response = await call('/api/mapping/count/2?failWith=5');
      expect(response.status).toBe(200);
      const received = lines(await response.text());
      expect(received).toHaveLength(3);
      expect(received[2]).toEqual({ error: expect.objectContaining({ status: 404, code: 'grpc_not_found', detail: 'failed after 2', requestId: response.headers.get(HEADER.requestId) }) });
    });

    it.each([
      { desc: 'INTERNAL (the service failed: logged as a failure)', failWith: 13, code: 'upstream_bad_response', logged: true },
      { desc: "NOT_FOUND (the service's word on the request)", failWith: 5, code: 'grpc_not_found', logged: false },
    ])('records a stream that fails with $desc after its first message as failed in the access line and SERVER span, not as a clean 200', async ({ failWith, code, logged }) => {
      const response = await call(`/api/mapping/count/1?failWith=${failWith}`);
      expect(response.status).toBe(200);
      expect(lines(await response.text()).at(-1)).toEqual({ error: expect.objectContaining({ code }) });
      const requestId = response.headers.get(HEADER.requestId)!;
      const accessLine = () => gatewayLogs.lines.find((line) => line.message === ACCESS_LINE_MESSAGE && line.request_id === requestId);
      await waitFor(() => accessLine() !== undefined, 'the access line');
      // The metric takes its error_type from the same state, when the response closes.
      expect(accessLine()).toMatchObject({ status: 200, error_code: code, level: 'error' });
      const serverSpan = () => tracing.spans().find((span) => span.kind === SpanKind.SERVER && span.attributes[ATTR.requestId] === requestId);
      await waitFor(() => serverSpan() !== undefined, 'the SERVER span');
      expect(serverSpan()!.attributes[ATTR.errorCode]).toBe(code);
      expect(serverSpan()!.status).toEqual({ code: SpanStatusCode.ERROR, message: code });
      // Written before the stream's end, so before the access line.
      expect(gatewayLogs.lines.some((line) => line.message === 'request failed' && line.request_id === requestId && line.code === code)).toBe(logged);
    });

    it('answers a stream that fails before its first message with a problem response', async () => {
      const response = await call('/api/mapping/count/0?failWith=7');
      expect(response.status).toBe(403);
      expect(response.headers.get('content-type')).toBe('application/problem+json');
    });

    it('cancels the call when the client goes away mid-stream', async () => {
      const controller = new AbortController();
      const response = await call('/api/mapping/count/10000?delayMs=20', { signal: controller.signal });
      const reader = response.body!.getReader();
      await reader.read();
      controller.abort();
      await waitFor(() => service.cancelled.includes('Count'));
    });

    it('carries more messages than fit in one buffer, in order', async () => {
      const response = await call('/api/mapping/count/2000');
      const received = lines(await response.text());
      expect(received).toHaveLength(2000);
      expect(received.map((line) => line.n)).toEqual(Array.from({ length: 2000 }, (_, index) => index + 1));
    });
  });
});

describe('gRPC calls open at once, per instance', () => {
  it('answers 503 upstream_busy with Retry-After past maxSockets + maxPendingRequests open calls, and takes calls again once one ended', async () => {
    const service = await startMappingServer();
    const config = mappingGatewayConfig(service.url, { config: { proxy: { maxSockets: 1, maxPendingRequests: 1 } } });
    const gateway = await listen(createGatewayApps(config, { logger: memoryLogger('gateway').logger, metrics: false }).gateway.callback());
    const readers: { controller: AbortController }[] = [];
    try {
      // Two streams held open by clients that read one line and then nothing: the instance's two calls.
      for (let i = 0; i < 2; i++) {
        const controller = new AbortController();
        const response = await fetch(`${gateway.url}/api/mapping/count/10000?delayMs=20`, { signal: controller.signal });
        await response.body!.getReader().read();
        readers.push({ controller });
      }
      const refused = await fetch(`${gateway.url}/api/mapping/count/1`);
      expect(refused.status).toBe(503);
      expect(refused.headers.get('retry-after')).toBe('1');
      expect(await refused.json()).toMatchObject({ code: 'upstream_busy' });
      readers[0]!.controller.abort();
      await waitFor(async () => (await fetch(`${gateway.url}/api/mapping/count/1`)).status === 200, 'a call to be taken again');
    } finally {
      for (const { controller } of readers) controller.abort();
      await gateway.close();
      await service.close();
    }
  });
});

// The calls of the build before a config reload stay open after it. Counted per build, each reload started the count at
// 0: with a limit of 2, two reloads let 6 calls be open at once at one instance; counted per channel, a reload that
// changed the service's keepalive (new channels) did the same.
describe('gRPC calls open at once, across config reloads', () => {
  it('counts the calls an earlier build left open: upstream_busy after a reload, as before it, whatever the reload changed', async () => {
    const service = await startMappingServer();
    const { logger } = memoryLogger('gateway');
    const config = (rateLimitMax: number, keepalive?: { timeMs: number }) =>
      mappingGatewayConfig(service.url, { service: keepalive ? { keepalive } : {}, route: { timeoutMs: 10_000, deadlineMs: 10_000 }, config: { proxy: { maxSockets: 1, maxPendingRequests: 1 }, rateLimit: { max: rateLimitMax, windowMs: 60_000 } } });
    const live = createLiveGateway(activeConfig(config(1000)), (active, kept) => createGatewayApps(active.config, { logger, metrics: false, kept, configVersion: active.version }), logger);
    const gateway = await listen(live.listener);
    const controllers: AbortController[] = [];
    const openAtService = () => service.calls.filter((each) => each.method === 'Slow' && each.open).length;
    /** A slow call the client leaves open: the service holds it until the test ends. */
    const holdCall = () => {
      const controller = new AbortController();
      controllers.push(controller);
      void fetch(`${gateway.url}/api/mapping/slow?delayMs=10000`, { signal: controller.signal }).catch(() => undefined);
    };
    try {
      holdCall();
      holdCall();
      await waitFor(() => openAtService() === 2, 'the first build to hold its two calls at the service');
      expect((await fetch(`${gateway.url}/api/mapping/metadata`)).status).toBe(503);
      // The second reload changes the service's keepalive: new channels, the first build's calls open on the old ones.
      for (let reload = 1; reload <= 2; reload++) {
        expect(live.apply(activeConfig(config(1000 + reload, reload === 2 ? { timeMs: 30_000 } : undefined)))).toBeUndefined();
        const refused = await fetch(`${gateway.url}/api/mapping/metadata`);
        expect([refused.status, ((await refused.json()) as { code: string }).code]).toEqual([503, 'upstream_busy']);
      }
      expect(openAtService()).toBe(2);
      // Once a call of the first build ends, the reloaded build takes one again.
      controllers[0]!.abort();
      await waitFor(async () => (await fetch(`${gateway.url}/api/mapping/metadata`)).status === 200, 'a call to be taken again');
    } finally {
      for (const controller of controllers) controller.abort();
      await gateway.close();
      await service.close();
    }
  });
});

// The limit is each instance's: round robin named a full instance for every other request, and the gateway answered
// it 503 upstream_busy while the second instance had room.
describe('gRPC calls open at once, with two instances', () => {
  it('passes a full instance over for one with room, and answers upstream_busy only when every instance is full', async () => {
    const first = await startMappingServer();
    const second = await startMappingServer();
    const config = mappingGatewayConfig(first.url, { service: { url: [first.url, second.url] }, config: { proxy: { maxSockets: 1, maxPendingRequests: 1 } } });
    const gateway = await listen(createGatewayApps(config, { logger: memoryLogger('gateway').logger, metrics: false }).gateway.callback());
    const controllers: AbortController[] = [];
    const holdStream = async () => {
      const controller = new AbortController();
      controllers.push(controller);
      const response = await fetch(`${gateway.url}/api/mapping/count/10000?delayMs=20`, { signal: controller.signal });
      expect(response.status).toBe(200);
      await response.body!.getReader().read();
    };
    const openAt = (server: MappingServer) => server.calls.filter((each) => each.open).length;
    try {
      // Three held streams: one instance has its two calls, the other one.
      for (let i = 0; i < 3; i++) await holdStream();
      expect([openAt(first), openAt(second)].sort()).toEqual([1, 2]);
      // Round robin names the full instance for every other one of these: each is served by the one with room.
      for (let i = 0; i < 4; i++) expect((await fetch(`${gateway.url}/api/mapping/metadata`)).status).toBe(200);
      await holdStream();
      const refused = await fetch(`${gateway.url}/api/mapping/metadata`);
      expect(refused.status).toBe(503);
      expect(await refused.json()).toMatchObject({ code: 'upstream_busy' });
    } finally {
      for (const controller of controllers) controller.abort();
      await gateway.close();
      await first.close();
      await second.close();
    }
  });
});

// A call cancelled because its client left says nothing of the instance. Counted a success, it cleared the failure
// count of the calls that met their deadline: an instance that never answered stayed in rotation as long as some of
// its callers gave up first.
describe('a gRPC call its client abandoned', () => {
  it('neither clears nor adds to the failures that take a silent instance out', async () => {
    const service = await startMappingServer();
    const config = mappingGatewayConfig(service.url, { service: { ejectAfterFailures: 2 }, route: { timeoutMs: 300, deadlineMs: 300 } });
    const gateway = await listen(createGatewayApps(config, { logger: memoryLogger('gateway').logger, metrics: false }).gateway.callback());
    try {
      expect((await fetch(`${gateway.url}/api/mapping/slow?delayMs=5000`)).status).toBe(504);
      await waitFor(() => service.cancelled.includes('Slow'), 'the service to see the first call end');
      const controller = new AbortController();
      const abandoned = fetch(`${gateway.url}/api/mapping/slow?delayMs=5000`, { signal: controller.signal }).catch(() => undefined);
      await waitFor(() => service.calls.filter((each) => each.method === 'Slow' && each.open).length === 1, 'the second call to reach the service');
      controller.abort();
      await abandoned;
      await waitFor(() => service.cancelled.filter((method) => method === 'Slow').length === 2, 'the abandoned call to be cancelled');
      expect((await fetch(`${gateway.url}/api/mapping/slow?delayMs=5000`)).status).toBe(504);
      // Two failures in a row: the instance is out.
      const next = await fetch(`${gateway.url}/api/mapping/metadata`);
      expect(next.status).toBe(503);
      expect(await next.json()).toMatchObject({ code: 'upstream_unavailable' });
    } finally {
      await gateway.close();
      await service.close();
    }
  });
});

// A stream that flowed until its deadline answered: it ran longer than `deadlineMs` (or its client read too slowly and
// the call was paused for it). Counted against the instance, one such stream (ejectAfterFailures 1 here) took the
// service out: the call after it was answered 503 upstream_unavailable.
describe('a gRPC stream that meets its deadline after its first message', () => {
  it('ends with an error line and leaves the instance in rotation, where a silent unary call takes it out', async () => {
    const service = await startMappingServer();
    const config = mappingGatewayConfig(service.url, { service: { ejectAfterFailures: 1 }, route: { timeoutMs: 1000, deadlineMs: 1000 } });
    const gateway = await listen(createGatewayApps(config, { logger: memoryLogger('gateway').logger, metrics: false }).gateway.callback());
    try {
      const flowing = await fetch(`${gateway.url}/api/mapping/count/10000?delayMs=20`);
      expect(flowing.status).toBe(200);
      const received = (await flowing.text()).split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>);
      expect(received.length).toBeGreaterThan(1);
      expect(received.at(-1)).toEqual({ error: expect.objectContaining({ status: 504, code: 'upstream_timeout' }) });
      expect((await fetch(`${gateway.url}/api/mapping/count/1`)).status).toBe(200);

      // The service's silence is still its failure: a unary call with no answer by its deadline ejects it (and shows
      // the one failure this config allows is enough to).
      const silent = await fetch(`${gateway.url}/api/mapping/slow?delayMs=3000`);
      expect(silent.status).toBe(504);
      expect(await (await fetch(`${gateway.url}/api/mapping/count/1`)).json()).toMatchObject({ code: 'upstream_unavailable' });
    } finally {
      await gateway.close();
      await service.close();
    }
  });
});

// A stream's messages wait in the gateway while its client is not reading. grpc-js's object-mode stream read ahead
// until 16 messages waited (up to 4 MiB each, the gateway's message limit) before it stopped asking the service:
// 64 MiB per slow client, where the HTTP proxy holds 256 KiB.
describe('a gRPC stream whose client stops reading', () => {
  it('stops asking the service for messages within a few of the ones the client has not read, and carries them all once it reads again', async () => {
    const service = await startMappingServer();
    const config = mappingGatewayConfig(service.url, { route: { timeoutMs: 60_000, deadlineMs: 60_000 } });
    const gateway = await listen(createGatewayApps(config, { logger: memoryLogger('gateway').logger, metrics: false }).gateway.callback());
    const count = 30;
    try {
      const response = await fetch(`${gateway.url}/api/mapping/pour/${count}?size=${3 * 1024 * 1024}`);
      expect(response.status).toBe(200);
      const reader = response.body!.getReader();
      const decoder = new TextDecoder();
      let text = '';
      while (!text.includes('\n')) text += decoder.decode((await reader.read()).value, { stream: true });
      // The client reads no more. The service stops once every buffer on the way is full: its count stays put for
      // half a second. Between the client and the service: the client's and the gateway's socket buffers (a few
      // lines of 4 MiB on loopback), the line the gateway is writing, and what its gRPC call holds.
      let last = -1;
      let still = 0;
      await waitFor(() => {
        still = service.poured === last ? still + 1 : 0;
        last = service.poured;
        return still >= 25;
      }, 'the service to be paused', 20_000);
      expect(service.poured).toBeLessThan(count);
      expect(service.poured).toBeLessThanOrEqual(10);
      for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) text += decoder.decode(chunk.value, { stream: true });
      const received = text.split('\n').filter(Boolean).map((line) => JSON.parse(line) as { n: number; data: string });
      expect(received.map((line) => line.n)).toEqual(Array.from({ length: count }, (_, index) => index + 1));
      expect(received.every((line) => Buffer.from(line.data, 'base64').length === 3 * 1024 * 1024)).toBe(true);
    } finally {
      await gateway.close();
      await service.close();
    }
  });
});

// A stream the service finished while the gateway held its last message for a slow client: grpc-js had read the OK
// status, but 'end' waits for the stream to be read, and once the client left nobody read it. Neither 'end' nor
// 'error' came, and the call stayed counted open at the instance for good: every later call was 503 upstream_busy.
describe('a gRPC stream its service finished, whose client left without reading it', () => {
  it('counts the call closed once its client has gone', async () => {
    const service = await startMappingServer();
    const config = mappingGatewayConfig(service.url, { route: { timeoutMs: 60_000, deadlineMs: 60_000 }, config: { proxy: { maxSockets: 1, maxPendingRequests: 0 } } });
    const gateway = await listen(createGatewayApps(config, { logger: memoryLogger('gateway').logger, metrics: false }).gateway.callback());
    try {
      const controller = new AbortController();
      // Fewer messages than the way to a client that stops reading holds (the slow-reader test above): the service
      // finishes, the second one waiting in the gateway's call, paused for the client.
      const response = await fetch(`${gateway.url}/api/mapping/pour/2?size=${3 * 1024 * 1024}`, { signal: controller.signal });
      await response.body!.getReader().read();
      await waitFor(() => service.calls.some((each) => each.method === 'Pour' && !each.open), 'the service to end its call');
      controller.abort();
      await waitFor(async () => (await fetch(`${gateway.url}/api/mapping/count/1`)).status === 200, 'the instance to take a call again');
    } finally {
      await gateway.close();
      await service.close();
    }
  });
});

// Readiness probes a service's HTTP `GET /health`, which a gRPC-only service does not answer: it is in no probe
// round, and the internal /ready called it `down` beside an overall status that never counted it, with the
// instances of its HTTP pool, which carries nothing (an ejected gRPC instance read `healthy`).
describe('the internal /ready of a gRPC-only service', () => {
  it('says not_probed, with the instances gRPC translation calls and their passive health', async () => {
    const service = await startMappingServer();
    const config = mappingGatewayConfig(service.url, { service: { ejectAfterFailures: 1 }, route: { timeoutMs: 1000 } });
    const apps = createGatewayApps(config, { logger: memoryLogger('gateway').logger, metrics: false });
    const gateway = await listen(apps.gateway.callback());
    const admin = await listen(apps.admin.callback());
    type Details = { services: Record<string, { status: string; instances: { origin: string; state: string; probe: unknown }[] }> };
    const details = async () => (await (await fetch(`${admin.url}/ready`)).json()) as Details;
    try {
      expect((await details()).services.mapping).toEqual({ status: 'not_probed', instances: [expect.objectContaining({ origin: service.url, state: 'healthy', probe: null })] });
      // The services it does probe still say what the probe found (nothing listens on port 9).
      expect((await details()).services.users!.status).toBe('down');
      expect((await fetch(`${gateway.url}/api/mapping/slow?delayMs=3000`)).status).toBe(504);
      expect((await details()).services.mapping!.instances).toEqual([expect.objectContaining({ origin: service.url, state: 'ejected', consecutiveFailures: 1 })]);
    } finally {
      await gateway.close();
      await admin.close();
      await service.close();
    }
  });
});

function rawPost(origin: string, path: string, body: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const request = http.request(`${origin}/`, { method: 'POST', path, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (response) => {
      response.resume();
      resolve(response.statusCode!);
    });
    request.on('error', reject);
    request.end(body);
  });
}

