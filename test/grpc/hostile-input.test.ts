import http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { activeConfig, createLiveGateway } from '../../src/config-reload';
import { parseConfig } from '../../src/config';
import { createGatewayApps } from '../../src/gateway';
import { SpanKind } from '@opentelemetry/api';
import { ATTR, HEADER } from '../../otel/wire-names';
import { startInMemoryTracing, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { generateApiKey, hashApiKey } from '../../src/consumers';
import { bindGrpcServer, grpcServiceDefinition } from '../../services/shared/grpc-service';
import { loadProtoRoot } from '../../src/grpc/proto-files';
import { listen, memoryLogger, type TestServer } from '../helpers/servers';
import { shippedConfigFile, TEST_JWT_SECRET, testConfig } from '../helpers/test-config';
import { waitFor } from '../helpers/wait';

const HOSTILE_PROTO = 'test/grpc/hostile.proto';
const HOSTILE_SERVICE = 'koagateway.test.v1.Hostile';

type Request = Record<string, unknown>;

const ACME_KEY = generateApiKey();

/**
 * Bug fixes of the REST -> gRPC translation, each pinned by the input that exploited it: JSON keys that reach one
 * field under two names (the later one used to override a path variable), two members of one oneof, and a
 * service answer the JSON mapping cannot write (it used to crash the gateway mid-stream).
 */
describe('gRPC transcoding of hostile input', () => {
  let gateway: TestServer;
  let server: grpc.Server;
  let smallServer: grpc.Server;
  const gatewayLogs = memoryLogger('gateway');
  let tracing: InMemoryTracing;
  const calls: { method: string; request: Request }[] = [];
  const cancelled: string[] = [];

  beforeAll(async () => {
    tracing = startInMemoryTracing();
    server = new grpc.Server();
    const echo = (method: string) => (call: grpc.ServerUnaryCall<Request, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      calls.push({ method, request: call.request });
      callback(null, call.request);
    };
    server.addService(grpcServiceDefinition(HOSTILE_PROTO, HOSTILE_SERVICE), {
      Update: echo('Update'),
      Pick: echo('Pick'),
      Rename: echo('Rename'),
      Wrap(call: grpc.ServerUnaryCall<Request, unknown>, callback: grpc.sendUnaryData<unknown>) {
        const root = loadProtoRoot(HOSTILE_PROTO);
        const packed: Record<number, [string, Uint8Array]> = {
          1: ['type.googleapis.com/koagateway.test.v1.Account', root.lookupType('koagateway.test.v1.Account').encode({ accountId: 'a1', displayName: 'A' }).finish()],
          2: ['type.googleapis.com/google.protobuf.Timestamp', root.lookupType('google.protobuf.Timestamp').encode({ seconds: 1_700_000_000, nanos: 0 }).finish()],
          3: ['type.googleapis.com/elsewhere.v1.Secret', Buffer.from([0x08, 0x01])],
        };
        const [url, value] = packed[Number(call.request.levels)]!;
        callback(null, { item: { type_url: url, value } });
      },
      When(call: grpc.ServerUnaryCall<Request, unknown>, callback: grpc.sendUnaryData<unknown>) {
        calls.push({ method: 'When', request: call.request });
        callback(null, { at: { seconds: String(call.request.seconds), nanos: 0 } });
      },
      Metadata(call: grpc.ServerUnaryCall<Request, unknown>, callback: grpc.sendUnaryData<unknown>) {
        calls.push({ method: 'Metadata', request: call.request });
        const entries = Object.entries(call.metadata.getMap()).flatMap(([key, value]) => (typeof value === 'string' ? [[key, value]] : []));
        callback(null, { entries: Object.fromEntries(entries) });
      },
      Deep(call: grpc.ServerUnaryCall<Request, unknown>, callback: grpc.sendUnaryData<unknown>) {
        calls.push({ method: 'Deep', request: call.request });
        let value: unknown = { stringValue: 'deep' };
        for (let level = 0; level < Number(call.request.levels); level++) value = { listValue: { values: [value] } };
        callback(null, { fields: { a: value } });
      },
      Moments(call: grpc.ServerWritableStream<Request, unknown>) {
        calls.push({ method: 'Moments', request: call.request });
        call.on('cancelled', () => cancelled.push('Moments'));
        const count = Number(call.request.count);
        // No message at all: held open until the gateway cancels.
        if (count === 0) return;
        for (let n = 1; n < count; n++) call.write({ count: n, at: { seconds: 1_700_000_000 + n, nanos: 0 } });
        call.write({ count, at: { seconds: String(call.request.seconds), nanos: 0 } });
        // Left open: only the gateway ends this call (by cancelling it).
      },
    });
    const port = await bindGrpcServer(server, '127.0.0.1', 0);
    // A service that takes messages of at most 64 bytes.
    smallServer = new grpc.Server({ 'grpc.max_receive_message_length': 64 });
    smallServer.addService(grpcServiceDefinition(HOSTILE_PROTO, HOSTILE_SERVICE), { Update: echo('Update') });
    const smallPort = await bindGrpcServer(smallServer, '127.0.0.1', 0);
    const shipped = shippedConfigFile() as { services: Record<string, unknown>; routes: unknown[] };
    const config = testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' }, {
      services: { ...shipped.services, hostile: { url: `http://127.0.0.1:${port}` }, 'hostile-small': { url: `http://127.0.0.1:${smallPort}` } },
      consumers: [{ id: 'acme', role: 'partner', keys: [{ hash: hashApiKey(ACME_KEY) }] }],
      routes: [
        ...shipped.routes,
        { name: 'hostile', prefix: '/api/hostile', service: 'hostile', upstreamPath: '/v1', auth: 'public', grpc: { proto: HOSTILE_PROTO, service: HOSTILE_SERVICE } },
        { name: 'hostile-small', prefix: '/api/small-hostile', service: 'hostile-small', upstreamPath: '/v1', auth: 'public', grpc: { proto: HOSTILE_PROTO, service: HOSTILE_SERVICE } },
        { name: 'hostile-keys', prefix: '/api/keyed-hostile', service: 'hostile', upstreamPath: '/v1', auth: { methods: ['apiKey'] }, grpc: { proto: HOSTILE_PROTO, service: HOSTILE_SERVICE } },
      ],
    });
    gateway = await listen(createGatewayApps(config, { logger: gatewayLogs.logger, tracer: tracing.tracer, metrics: false }).gateway.callback());
  });
  afterAll(async () => {
    await gateway.close();
    server.forceShutdown();
    smallServer.forceShutdown();
    await tracing.shutdown();
  });

  const call = (path: string, init: RequestInit = {}) => fetch(`${gateway.url}${path}`, init);
  const postJson = (path: string, body: string) => call(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body });

  it.each([
    { desc: 'its proto name', body: '{"account_id": "mallory", "displayName": "A"}' },
    { desc: 'both names, the proto name last', body: '{"accountId": "a", "account_id": "mallory", "displayName": "A"}' },
    { desc: 'both names, the lowerCamelCase name last', body: '{"account_id": "mallory", "accountId": "a", "displayName": "A"}' },
  ])('lets the path variable win over the field it binds, named in the body by $desc', async ({ body }) => {
    const response = await postJson('/api/hostile/accounts/alice', body);
    expect(response.status).toBe(200);
    expect(calls.at(-1)!.request).toEqual({ accountId: 'alice', displayName: 'A' });
  });

  it.each([
    { desc: 'the lowerCamelCase name first', body: '{"displayName": "A", "display_name": "B"}' },
    { desc: 'the proto name first', body: '{"display_name": "B", "displayName": "A"}' },
    { desc: 'an inherited property name', body: '{"constructor": "x"}' },
    { desc: 'a __proto__ key', body: '{"__proto__": {"accountId": "mallory"}}' },
    // JSON.parse keeps the last of two equal keys without a word.
    { desc: 'the same name twice', body: '{"displayName": "A", "displayName": "B"}' },
    { desc: 'the same name twice, one spelled with an escape', body: '{"displayName": "A", "display\\u004eame": "B"}' },
  ])('refuses a body naming one field twice or no field ($desc) with 400, reaching no service', async ({ body }) => {
    const before = calls.length;
    const response = await postJson('/api/hostile/accounts/alice', body);
    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({ code: 'invalid_body' });
    expect(calls.length).toBe(before);
  });

  it("answers 413 when the service refuses the request as over its receive limit, not 502 blaming the service's answer", async () => {
    const response = await postJson('/api/small-hostile/accounts/alice', JSON.stringify({ displayName: 'x'.repeat(100) }));
    expect(response.status).toBe(413);
    expect(await response.json()).toMatchObject({ code: 'payload_too_large', detail: 'The request message is larger than the hostile-small service accepts.' });
    expect((await postJson('/api/small-hostile/accounts/alice', '{"displayName": "x"}')).status).toBe(200);
  });

  it('reads and writes each field under its JSON name as protoc spells it (a json_name; line_2 is line2)', async () => {
    const response = await postJson('/api/hostile/renamed/L2', '{"alias": "bob", "note": "n"}');
    expect(response.status).toBe(200);
    expect(calls.at(-1)!.request).toEqual({ nickName: 'bob', line_2: 'L2', note: 'n' });
    expect(await response.json()).toEqual({ alias: 'bob', line2: 'L2', note: 'n' });
  });

  it.each([
    { desc: 'its proto name', body: '{"nick_name": "bob"}' },
    { desc: 'its JSON name', body: '{"alias": "bob"}' },
  ])('takes a field named in the body by $desc', async ({ body }) => {
    expect((await postJson('/api/hostile/renamed/L2', body)).status).toBe(200);
    expect(calls.at(-1)!.request).toMatchObject({ nickName: 'bob' });
  });

  it('lets the path variable win over the field it binds, named in the body by its JSON name', async () => {
    expect((await postJson('/api/hostile/renamed/L2', '{"line2": "mallory"}')).status).toBe(200);
    expect(calls.at(-1)!.request).toMatchObject({ line_2: 'L2' });
  });

  it('takes query parameters by JSON name', async () => {
    const response = await call('/api/hostile/renamed/L2?alias=bob');
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ alias: 'bob', line2: 'L2', note: '' });
  });

  it.each([
    { desc: 'its JSON name', query: 'line2=mallory' },
    { desc: 'its proto name', query: 'line_2=mallory' },
  ])('refuses a query parameter re-binding a path variable by $desc (400), reaching no service', async ({ query }) => {
    const before = calls.length;
    const response = await call(`/api/hostile/renamed/L2?${query}`);
    expect(response.status).toBe(400);
    expect(calls.length).toBe(before);
  });

  it.each([
    { desc: 'a message: its fields beside @type, under their JSON names', levels: 1, item: { '@type': 'type.googleapis.com/koagateway.test.v1.Account', accountId: 'a1', displayName: 'A' } },
    { desc: 'a Timestamp: its own JSON form as value', levels: 2, item: { '@type': 'type.googleapis.com/google.protobuf.Timestamp', value: '2023-11-14T22:13:20Z' } },
  ])('writes an Any holding $desc', async ({ levels, item }) => {
    const response = await call(`/api/hostile/wrapped?levels=${levels}`);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ item });
  });

  it("answers 502, not {} or the raw bytes, for an Any of a type the gateway's protos do not define", async () => {
    const response = await call('/api/hostile/wrapped?levels=3');
    expect(response.status).toBe(502);
    expect(await response.json()).toMatchObject({ code: 'upstream_bad_response', detail: expect.stringMatching(/an Any of a type the gateway does not know/) });
  });

  it("carries the verified API-key consumer as x-consumer-id metadata, replacing a forged one", async () => {
    const response = await call('/api/keyed-hostile/metadata', { headers: { [HEADER.apiKey]: ACME_KEY, [HEADER.consumerId]: 'globex' } });
    expect(response.status).toBe(200);
    const { entries } = (await response.json()) as { entries: Record<string, string> };
    expect(entries[HEADER.consumerId]).toBe('acme');
    expect(entries).not.toHaveProperty(HEADER.apiKey);
  });

  // The same parser as HTTP routes: RFC 9110 11.4 allows any number of spaces (1*SP) after the scheme.
  it('takes an API key sent as Authorization with spaces after the scheme, and passes neither on as metadata', async () => {
    const response = await call('/api/keyed-hostile/metadata', { headers: { authorization: `ApiKey   ${ACME_KEY}` } });
    expect(response.status).toBe(200);
    const { entries } = (await response.json()) as { entries: Record<string, string> };
    expect(entries[HEADER.consumerId]).toBe('acme');
    expect(entries).not.toHaveProperty('authorization');
    expect(JSON.stringify(entries)).not.toContain(ACME_KEY);
  });

  it('never turns reserved or binary client headers into metadata (deadline, encoding, status, -bin)', async () => {
    const response = await call('/api/hostile/metadata', {
      headers: { 'grpc-timeout': '1n', 'grpc-encoding': 'gzip', 'grpc-status': '0', 'x-trace-bin': 'AAAA', 'x-user-id-bin': 'AAAA', 'x-kept': 'yes' },
    });
    expect(response.status).toBe(200);
    const { entries } = (await response.json()) as { entries: Record<string, string> };
    expect(Object.keys(entries).filter((key) => key.startsWith('grpc-') || key.endsWith('-bin'))).toEqual([]);
    expect(entries['x-kept']).toBe('yes');
  });

  it('refuses a query parameter setting a second member of the oneof the path set (400), reaching no service', async () => {
    const before = calls.length;
    const response = await call('/api/hostile/targets/alice?byId=42');
    expect(response.status).toBe(400);
    expect(calls.length).toBe(before);
    expect((await call('/api/hostile/targets/alice')).status).toBe(200);
  });

  it.each([
    { desc: 'twice for a field that takes one value (which did the client mean?)', query: 'seconds=1&seconds=2' },
    { desc: 'twice with the same value', query: 'seconds=1&seconds=1' },
  ])('refuses a query parameter given $desc with 400, reaching no service', async ({ query }) => {
    const before = calls.length;
    const response = await call(`/api/hostile/when?${query}`);
    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({ code: 'invalid_body' });
    expect(calls.length).toBe(before);
  });

  it.each([
    { desc: 'past the last instant a Date can hold', seconds: '100000000000000' },
    { desc: 'after year 9999', seconds: '253402300800' },
    { desc: 'before year 1', seconds: '-62135596801' },
  ])('answers 502 when a unary answer holds a Timestamp $desc', async ({ seconds }) => {
    const response = await call(`/api/hostile/when?seconds=${seconds}`);
    expect(response.status).toBe(502);
    expect(await response.json()).toMatchObject({ code: 'upstream_bad_response', requestId: response.headers.get(HEADER.requestId) });
  });

  it('answers a Struct nested 31 levels deep as it was', async () => {
    const response = await call('/api/hostile/deep?levels=31');
    expect(response.status).toBe(200);
    let expected: unknown = 'deep';
    for (let level = 0; level < 31; level++) expected = [expected];
    expect(await response.json()).toEqual({ a: expected });
  });

  it('answers 502, not 200 with the deep part as null, when a Struct nests deeper than the gateway writes', async () => {
    const response = await call('/api/hostile/deep?levels=40');
    expect(response.status).toBe(502);
    expect(await response.json()).toMatchObject({ code: 'upstream_bad_response', detail: expect.stringMatching(/nested more than 32 levels/) });
  });

  it('ends a stream with an error line, and cancels the call, when a message cannot be written as JSON', async () => {
    const response = await call('/api/hostile/moments?count=3&seconds=100000000000000');
    expect(response.status).toBe(200);
    const lines = (await response.text()).split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines).toHaveLength(3);
    expect(lines[2]).toEqual({ error: expect.objectContaining({ status: 502, code: 'upstream_bad_response' }) });
    await waitFor(() => cancelled.includes('Moments'));
    // The gateway is still serving.
    expect((await call('/api/hostile/when?seconds=0')).status).toBe(200);
  });

  it('cancels a stream when the client goes away before its first message, reporting no failure', async () => {
    cancelled.length = 0;
    const requestId = 'b1b2c3d4e5f60718293a4b5c6d7e8f90';
    const logged = gatewayLogs.lines.length;
    const before = calls.length;
    const controller = new AbortController();
    const pending = call('/api/hostile/moments?count=0', { signal: controller.signal, headers: { [HEADER.requestId]: requestId } }).catch(() => undefined);
    await waitFor(() => calls.length > before);
    controller.abort();
    await pending;
    await waitFor(() => cancelled.includes('Moments'));
    // The SERVER span ends once the chain returned: by then a failure would have been recorded on it and logged.
    const serverSpan = () => tracing.spans().find((span) => span.kind === SpanKind.SERVER && span.attributes[ATTR.requestId] === requestId);
    await waitFor(() => serverSpan() !== undefined);
    expect(serverSpan()!.attributes[ATTR.errorCode]).toBeUndefined();
    expect(gatewayLogs.lines.slice(logged).filter((line) => line.message === 'request failed')).toEqual([]);
  });

  it('answers 502 when the first message of a stream cannot be written as JSON, and cancels the call', async () => {
    cancelled.length = 0;
    const response = await call('/api/hostile/moments?count=1&seconds=100000000000000');
    expect(response.status).toBe(502);
    expect(await response.json()).toMatchObject({ code: 'upstream_bad_response' });
    await waitFor(() => cancelled.includes('Moments'));
  });
});

describe('a service that answers no valid gRPC status', () => {
  let gateway: TestServer;
  let tracing: InMemoryTracing;
  const gatewayLogs = memoryLogger('gateway');
  let answer: (stream: http2.ServerHttp2Stream) => void = () => undefined;
  const service = http2.createServer();
  service.on('session', (session) => session.on('error', () => undefined));
  service.on('stream', (stream) => {
    stream.on('error', () => undefined);
    answer(stream);
  });

  beforeAll(async () => {
    tracing = startInMemoryTracing();
    await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve));
    const shipped = shippedConfigFile() as { services: Record<string, unknown>; routes: unknown[] };
    const config = testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' }, {
      services: { ...shipped.services, hostile: { url: `http://127.0.0.1:${(service.address() as { port: number }).port}`, ejectAfterFailures: 1000 } },
      routes: [...shipped.routes, { name: 'hostile', prefix: '/api/hostile', service: 'hostile', upstreamPath: '/v1', auth: 'public', grpc: { proto: HOSTILE_PROTO, service: HOSTILE_SERVICE } }],
    });
    gateway = await listen(createGatewayApps(config, { logger: gatewayLogs.logger, tracer: tracing.tracer, metrics: false }).gateway.callback());
  });
  afterAll(async () => {
    await gateway.close();
    service.close();
    await tracing.shutdown();
  });

  /** One gRPC message frame: flag byte, length, bytes. */
  const frame = (bytes: Buffer, compressed: boolean) => {
    const head = Buffer.alloc(5);
    head[0] = compressed ? 1 : 0;
    head.writeUInt32BE(bytes.length, 1);
    return Buffer.concat([head, bytes]);
  };

  it.each([
    { desc: 'grpc-status: abc', answer: (stream: http2.ServerHttp2Stream) => stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': 'abc' }, { endStream: true }) },
    { desc: 'grpc-status: 99', answer: (stream: http2.ServerHttp2Stream) => stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '99' }, { endStream: true }) },
    {
      desc: 'a compressed message without grpc-encoding (grpc-js fails the call with no code)',
      answer: (stream: http2.ServerHttp2Stream) => {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
        stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
        stream.end(frame(Buffer.from([0x08, 0x01]), true));
      },
    },
  ])('answers $desc with 502 upstream_bad_response in words, and records UNKNOWN on the CLIENT span', async ({ answer: given }) => {
    answer = given;
    const response = await fetch(`${gateway.url}/api/hostile/when?seconds=1`);
    expect(response.status).toBe(502);
    expect(await response.json()).toMatchObject({ code: 'upstream_bad_response', detail: 'The hostile service answered a malformed gRPC response.' });
    const requestId = response.headers.get(HEADER.requestId)!;
    const serverSpan = () => tracing.spans().find((span) => span.kind === SpanKind.SERVER && span.attributes[ATTR.requestId] === requestId);
    await waitFor(() => serverSpan() !== undefined, 'the SERVER span');
    const traceId = serverSpan()!.spanContext().traceId;
    const clientSpan = tracing.spans().find((span) => span.kind === SpanKind.CLIENT && span.spanContext().traceId === traceId)!;
    expect(clientSpan.attributes['rpc.grpc.status_code']).toBe(grpc.status.UNKNOWN);
    // Logged before the answer was written.
    const failed = gatewayLogs.lines.find((line) => line.message === 'request failed' && line.request_id === requestId);
    expect(failed?.error).toEqual(expect.stringContaining('The hostile service answered a malformed gRPC response. (Error: no gRPC status'));
  });

  /** Answers `count` empty accounts, 2 bytes each on the wire (field 1, length 0). */
  const emptyAccounts = (count: number) => (stream: http2.ServerHttp2Stream) => {
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
    stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
    stream.end(frame(Buffer.from(new Uint8Array(count * 2).map((_, index) => (index % 2 === 0 ? 0x0a : 0))), false));
  };

  it('writes an answer of many unset fields as JSON (each empty account with its two fields)', async () => {
    answer = emptyAccounts(100_000);
    const response = await fetch(`${gateway.url}/api/hostile/crowd`);
    expect(response.status).toBe(200);
    const { accounts } = (await response.json()) as { accounts: unknown[] };
    expect(accounts).toHaveLength(100_000);
    expect(accounts[0]).toEqual({ accountId: '', displayName: '' });
  });

  // 4 MB on the wire would be 70 MB of JSON, built while every other request waited.
  it('answers 502 when an answer would be written as more than 2 Mi JSON fields (2 million empty accounts)', async () => {
    answer = emptyAccounts(2_000_000);
    const response = await fetch(`${gateway.url}/api/hostile/crowd`);
    expect(response.status).toBe(502);
    expect(await response.json()).toMatchObject({ code: 'upstream_bad_response', detail: 'The hostile service answered a message that would be written as more than 2097152 JSON fields.' });
  });
});

describe('gRPC channels across config reloads', () => {
  let server: grpc.Server;
  let gateway: TestServer;
  let port: number;

  beforeAll(async () => {
    server = new grpc.Server();
    server.addService(grpcServiceDefinition(HOSTILE_PROTO, HOSTILE_SERVICE), {
      Pick: (call: grpc.ServerUnaryCall<Request, unknown>, callback: grpc.sendUnaryData<unknown>) => callback(null, call.request),
    });
    port = await bindGrpcServer(server, '127.0.0.1', 0);
  });
  afterAll(async () => {
    await gateway?.close();
    server.forceShutdown();
  });

  /** Channels grpc-js holds in its global channelz table: each one made and not closed stays there. */
  const channels = () =>
    new Promise<number>((resolve, reject) =>
      grpc.getChannelzHandlers().GetTopChannels({ request: { start_channel_id: '0', max_results: '100000' } } as never, (error, value) => (error ? reject(error) : resolve(value!.channel!.length))),
    );

  it('reuses the channel to an unchanged instance, so reloads leak none', async () => {
    const { logger } = memoryLogger('gateway');
    const shipped = shippedConfigFile() as { services: Record<string, unknown>; routes: unknown[] };
    const config = (max: number) =>
      parseConfig(
        {
          ...shipped,
          rateLimit: { max, windowMs: 60_000 },
          services: { ...shipped.services, hostile: { url: `http://127.0.0.1:${port}` } },
          routes: [...shipped.routes, { name: 'hostile', prefix: '/api/hostile', service: 'hostile', upstreamPath: '/v1', auth: 'public', grpc: { proto: HOSTILE_PROTO, service: HOSTILE_SERVICE } }],
        },
        { JWT_SECRET: TEST_JWT_SECRET, USER_SERVICE_URL: 'http://127.0.0.1:9', ORDER_SERVICE_URL: 'http://127.0.0.1:9', NOTIF_SERVICE_URL: 'http://127.0.0.1:9' },
      );
    const live = createLiveGateway(activeConfig(config(1000)), (active, kept) => createGatewayApps(active.config, { logger, metrics: false, kept, configVersion: active.version }), logger);
    gateway = await listen(live.listener);
    expect((await fetch(`${gateway.url}/api/hostile/targets/a`)).status).toBe(200);
    const before = await channels();
    for (let reload = 1; reload <= 5; reload++) {
      expect(live.apply(activeConfig(config(1000 + reload)))).toBeUndefined();
      expect((await fetch(`${gateway.url}/api/hostile/targets/a`)).status).toBe(200);
    }
    expect(await channels()).toBe(before);
  });
});

