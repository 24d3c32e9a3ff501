import http from 'node:http';
import { SpanKind } from '@opentelemetry/api';
import { HEADER } from '../../otel/wire-names';
import { startInMemoryTracing, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { login, startStack, type TestStack } from '../helpers/stack';
import { requestOnNewConnection, startGatewayProcess, type GatewayProcess } from '../helpers/gateway-process';
import { listen, type TestServer } from '../helpers/servers';
import { TEST_JWT_SECRET } from '../helpers/test-config';
import { MAPPING_PROTO, MAPPING_SERVICE, startMappingServer, type MappingServer } from '../grpc/mapping-server';

/**
 * W3C Trace Context Level 2 at the edge (issue 11), through the real gateway: what the users service receives
 * and what the client gets back in `traceresponse`. The parsing rules themselves are pinned in
 * test/unit/trace-context.test.ts.
 */
const TRACE = '0af7651916cd43dd8448eb211c80319c';
const PARENT = 'b7ad6b7169203331';
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/** A GET with header lines sent exactly as given: a name given twice goes out as two lines. */
function get(url: string, lines: ReadonlyArray<readonly [string, string]>): Promise<http.IncomingMessage> {
  const request = http.request(url);
  const byName = new Map<string, string[]>();
  for (const [name, value] of lines) byName.set(name, [...(byName.get(name) ?? []), value]);
  for (const [name, values] of byName) request.setHeader(name, values.length === 1 ? values[0]! : values);
  return new Promise((resolve, reject) => {
    request.on('response', (response) => {
      response.resume();
      response.on('end', () => resolve(response));
    });
    request.on('error', reject);
    request.end();
  });
}

function fields(traceparent: string | string[] | undefined) {
  const match = TRACEPARENT.exec(typeof traceparent === 'string' ? traceparent : '');
  if (!match) throw new Error(`not a version 00 traceparent: ${String(traceparent)}`);
  return { traceId: match[1]!, parentId: match[2]!, flags: match[3]! };
}

describe('W3C Trace Context Level 2 at the edge', () => {
  let tracing: InMemoryTracing;
  let trusting: TestStack;
  let edge: TestStack;
  let trustingToken: string;
  let edgeToken: string;

  beforeAll(async () => {
    tracing = startInMemoryTracing();
    trusting = await startStack({ tracer: tracing.tracer, overrides: { trustTraceparent: true } });
    edge = await startStack({ tracer: tracing.tracer });
    [trustingToken, edgeToken] = await Promise.all([login(trusting.gateway.url), login(edge.gateway.url)]);
  });
  afterAll(async () => {
    await trusting.close();
    await edge.close();
    await tracing.shutdown();
  });

  /** One request through `stack`; what the users service received, and the client's traceresponse. */
  async function through(stack: TestStack, token: string, lines: ReadonlyArray<readonly [string, string]>) {
    const response = await get(`${stack.gateway.url}/api/users/1`, [['authorization', `Bearer ${token}`], ...lines]);
    expect(response.statusCode).toBe(200);
    const seen = stack.users.requests.at(-1)!.headers;
    return { traceparent: fields(seen.traceparent), tracestate: seen.tracestate, traceresponse: fields(response.headers.traceresponse), requestId: response.headers[HEADER.requestId] };
  }

  describe('with trustTraceparent on', () => {
    it.each([
      { desc: 'sampled and random', sent: '03', expected: '03' },
      { desc: 'random, not sampled', sent: '02', expected: '02' },
      { desc: 'sampled, not random', sent: '01', expected: '01' },
      { desc: 'with flags it does not know, sent on as zero', sent: 'ff', expected: '03' },
    ])('continues a trace that is $desc and keeps its random flag', async ({ sent, expected }) => {
      const { traceparent, traceresponse } = await through(trusting, trustingToken, [['traceparent', `00-${TRACE}-${PARENT}-${sent}`]]);
      expect(traceparent.traceId).toBe(TRACE);
      expect(traceparent.parentId).not.toBe(PARENT);
      expect(traceparent.flags).toBe(expected);
      expect(traceresponse).toEqual({ traceId: TRACE, parentId: expect.not.stringMatching(PARENT), flags: expected });
    });

    it('continues a later version by its first four fields and answers in version 00', async () => {
      const { traceparent, traceresponse } = await through(trusting, trustingToken, [['traceparent', `cc-${TRACE}-${PARENT}-03-what-the-future-will-be-like`]]);
      expect(traceparent).toMatchObject({ traceId: TRACE, flags: '03' });
      expect(traceresponse).toMatchObject({ traceId: TRACE, flags: '03' });
    });

    it.each([
      { desc: 'the list as sent, blanks removed', lines: [['tracestate', 'rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE']], expected: 'rojo=00f067aa0ba902b7,congo=t61rcWkgMzE' },
      { desc: 'several header lines as one list, in order', lines: [['tracestate', 'foo=1,bar=2'], ['tracestate', 'baz=3']], expected: 'foo=1,bar=2,baz=3' },
      { desc: 'keys with @ (multi-tenant and the full key grammar)', lines: [['tracestate', 'fw529a3039@dt=1,foo@=2,foo@bar@baz=3']], expected: 'fw529a3039@dt=1,foo@=2,foo@bar@baz=3' },
      { desc: 'a 256-character key', lines: [['tracestate', `foo=1,${'z'.repeat(256)}=1`]], expected: `foo=1,${'z'.repeat(256)}=1` },
      { desc: '32 members', lines: [['tracestate', Array.from({ length: 32 }, (_, i) => `k${i}=${i}`).join(',')]], expected: Array.from({ length: 32 }, (_, i) => `k${i}=${i}`).join(',') },
      { desc: 'one of a repeated key, the left-most', lines: [['tracestate', 'foo=1'], ['tracestate', 'foo=2']], expected: 'foo=1' },
      { desc: 'nothing for an empty header', lines: [['tracestate', '']], expected: undefined },
      { desc: 'nothing for a 257-character key', lines: [['tracestate', `foo=1,${'z'.repeat(257)}=1`]], expected: undefined },
      { desc: 'nothing for 33 members', lines: [['tracestate', Array.from({ length: 33 }, (_, i) => `k${i}=${i}`).join(',')]], expected: undefined },
      { desc: 'nothing for a value with =', lines: [['tracestate', 'foo=bar=baz']], expected: undefined },
      { desc: 'nothing for an empty value beside a valid member', lines: [['tracestate', 'foo=,bar=3']], expected: undefined },
      { desc: 'nothing for an upper-case key', lines: [['tracestate', 'FOO=1,bar=2']], expected: undefined },
    ] as const)('forwards $desc in tracestate, on the same trace', async ({ lines, expected }) => {
      const { traceparent, tracestate } = await through(trusting, trustingToken, [['traceparent', `00-${TRACE}-${PARENT}-03`], ...lines]);
      expect(traceparent).toMatchObject({ traceId: TRACE, flags: '03' });
      expect(tracestate).toBe(expected);
    });

    it.each([
      { desc: 'version ff', traceparent: `ff-${TRACE}-${PARENT}-03` },
      { desc: 'version 00 with a fifth field', traceparent: `00-${TRACE}-${PARENT}-03-extra` },
      { desc: 'an upper-case trace id', traceparent: `00-${TRACE.toUpperCase()}-${PARENT}-03` },
      { desc: 'an all-zero parent id', traceparent: `00-${TRACE}-${'0'.repeat(16)}-03` },
    ])('starts a new random trace for $desc and drops the tracestate that came with it', async ({ traceparent: sent }) => {
      const { traceparent, tracestate, traceresponse, requestId } = await through(trusting, trustingToken, [['traceparent', sent], ['tracestate', 'foo=1']]);
      expect(traceparent.traceId).not.toBe(TRACE);
      expect(traceparent.flags).toBe('03');
      expect(tracestate).toBeUndefined();
      expect(traceresponse).toMatchObject({ traceId: traceparent.traceId, flags: '03' });
      expect(requestId).toBe(traceparent.traceId);
    });

    it.each([
      { desc: 'twice, as two header lines', lines: [['traceparent', `cc-${TRACE}-${PARENT}-03-future`], ['traceparent', `cc-${TRACE}-${PARENT}-03-future`]] },
      { desc: 'as a list in one header line', lines: [['traceparent', `cc-${TRACE}-${PARENT}-03-future, cc-${TRACE}-${PARENT}-03-future`]] },
    ] as const)('starts a new trace and drops the tracestate when a later-version traceparent comes $desc', async ({ lines }) => {
      const { traceparent, tracestate, traceresponse } = await through(trusting, trustingToken, [...lines, ['tracestate', 'foo=1']]);
      expect(traceparent.traceId).not.toBe(TRACE);
      expect(tracestate).toBeUndefined();
      expect(traceresponse.traceId).toBe(traceparent.traceId);
    });

    // W3C Baggage "Limits": 64 members and 8192 bytes, the gateway's own included, MUST all go on. Values of
    // baggage-octets (`:`) used to be re-encoded three bytes for one, and the last third was dropped.
    it('forwards 63 baggage members and its own request id, 64 in under 8192 bytes, every one whole', async () => {
      const members = Array.from({ length: 63 }, (_, i) => `k${String(i).padStart(2, '0')}=${'a:'.repeat(50)}`);
      const response = await get(`${trusting.gateway.url}/api/users/1`, [
        ['authorization', `Bearer ${trustingToken}`],
        ['traceparent', `00-${TRACE}-${PARENT}-03`],
        ['baggage', members.join(',')],
      ]);
      expect(response.statusCode).toBe(200);
      expect(trusting.users.requests.at(-1)!.headers.baggage).toBe([`request.id=${String(response.headers[HEADER.requestId])}`, ...members].join(','));
    });

    // The same Limits hold for one long member: the gateway left out any over 4096 characters, so a trusted client's
    // 5 KB member never reached the service though the whole baggage was well under 8192 bytes.
    it('forwards one baggage member of 8000 bytes whole, after its own request id', async () => {
      const member = `big=${'v'.repeat(7996)}`;
      const response = await get(`${trusting.gateway.url}/api/users/1`, [
        ['authorization', `Bearer ${trustingToken}`],
        ['traceparent', `00-${TRACE}-${PARENT}-03`],
        ['baggage', member],
      ]);
      expect(response.statusCode).toBe(200);
      expect(trusting.users.requests.at(-1)!.headers.baggage).toBe(`request.id=${String(response.headers[HEADER.requestId])},${member}`);
    });

    // Counted as they go on: members sent as `k = v`, or with `%41` for `A`, used to be counted as received, and the
    // last ones of 63 that go on in 8148 bytes (8192 with the request id) were left out.
    it.each([
      { desc: 'blanks around their equal signs', written: (member: string) => member.replace('=', ' = ') },
      { desc: 'letters needlessly percent-encoded', written: (member: string) => member.replace('AAAA', '%41%41%41%41') },
    ])('forwards 63 baggage members that go on within 8192 bytes with its own request id, whatever $desc they came with', async ({ written }) => {
      const members = Array.from({ length: 63 }, (_, i) => `k${String(i).padStart(2, '0')}=${'v'.repeat(120)}AAAA`);
      const response = await get(`${trusting.gateway.url}/api/users/1`, [
        ['authorization', `Bearer ${trustingToken}`],
        ['traceparent', `00-${TRACE}-${PARENT}-03`],
        ['baggage', members.map(written).join(',')],
      ]);
      expect(response.statusCode).toBe(200);
      const forwarded = String(trusting.users.requests.at(-1)!.headers.baggage);
      expect(forwarded).toBe([`request.id=${String(response.headers[HEADER.requestId])}`, ...members].join(','));
      expect(forwarded.length).toBeLessThanOrEqual(8192);
    });

    it.each([
      { desc: 'a key as sent, though a URI would escape it', sent: 'user#id=1', forwarded: 'user#id=1' },
      { desc: 'a key that looks percent-encoded, as sent (keys are tokens, never decoded)', sent: 'a%41=2', forwarded: 'a%41=2' },
      { desc: 'a key that would decode to request.id, as a key of its own', sent: 'request%2Eid=forged', forwarded: 'request%2Eid=forged' },
      { desc: 'a value of baggage-octets unencoded', sent: 'url=https://example.com/a?b=c', forwarded: 'url=https://example.com/a?b=c' },
      { desc: 'a value whose escapes are not UTF-8, as U+FFFD', sent: 'bad=%FF', forwarded: 'bad=%EF%BF%BD' },
      { desc: 'an empty value', sent: 'e=', forwarded: 'e=' },
      { desc: 'properties', sent: 'k=v;p=1;q', forwarded: 'k=v;p=1;q' },
    ])('forwards in baggage $desc, after its own request id', async ({ sent, forwarded }) => {
      const response = await get(`${trusting.gateway.url}/api/users/1`, [
        ['authorization', `Bearer ${trustingToken}`],
        ['traceparent', `00-${TRACE}-${PARENT}-03`],
        ['baggage', `request.id=forged,${sent}`],
      ]);
      expect(response.statusCode).toBe(200);
      expect(trusting.users.requests.at(-1)!.headers.baggage).toBe(`request.id=${String(response.headers[HEADER.requestId])},${forwarded}`);
    });

    it('answers traceresponse with the server span, and sends the service the client span under it', async () => {
      tracing.reset();
      const { traceparent, traceresponse } = await through(trusting, trustingToken, [['traceparent', `00-${TRACE}-${PARENT}-03`]]);
      const server = tracing.spans().find((span) => span.kind === SpanKind.SERVER && span.spanContext().spanId === traceresponse.parentId);
      const client = tracing.spans().find((span) => span.kind === SpanKind.CLIENT && span.spanContext().spanId === traceparent.parentId);
      expect(server?.parentSpanContext?.spanId).toBe(PARENT);
      expect(client?.parentSpanContext?.spanId).toBe(traceresponse.parentId);
    });
  });

  describe('with trustTraceparent off (the default)', () => {
    it('starts a new random trace and forwards none of the client trace headers', async () => {
      const { traceparent, tracestate, traceresponse } = await through(edge, edgeToken, [
        ['traceparent', `00-${TRACE}-${PARENT}-01`],
        ['tracestate', 'foo=1'],
      ]);
      expect(traceparent.traceId).not.toBe(TRACE);
      expect(traceparent.flags).toBe('03');
      expect(tracestate).toBeUndefined();
      expect(traceresponse).toMatchObject({ traceId: traceparent.traceId, flags: '03' });
    });

    // A choice (README "Tracing"): the client learns the new trace from traceresponse; no link names the one it wrote.
    it('keeps no span link to the trace the client named', async () => {
      tracing.reset();
      const { traceresponse } = await through(edge, edgeToken, [['traceparent', `00-${TRACE}-${PARENT}-01`]]);
      let server: ReturnType<InMemoryTracing['spans']>[number] | undefined;
      for (let i = 0; i < 100 && server === undefined; i++) {
        server = tracing.spans().find((span) => span.kind === SpanKind.SERVER && span.spanContext().spanId === traceresponse.parentId);
        if (server === undefined) await new Promise((resolve) => setTimeout(resolve, 10));
      }
      expect(server).toBeDefined();
      expect(server!.parentSpanContext).toBeUndefined();
      expect(server!.links).toEqual([]);
    });

    it('does not claim a random trace id when the id came from the client request id', async () => {
      const { traceparent, traceresponse } = await through(edge, edgeToken, [[HEADER.requestId, '6f1c2b3a-9d8e-4f70-a1b2-c3d4e5f60718']]);
      expect(traceparent).toMatchObject({ traceId: '6f1c2b3a9d8e4f70a1b2c3d4e5f60718', flags: '01' });
      expect(traceresponse).toMatchObject({ traceId: '6f1c2b3a9d8e4f70a1b2c3d4e5f60718', flags: '01' });
    });
  });
});

// Level 2: traceresponse's child-id is "the ID of the operation of the callee". With no tracer provider (traces
// not exported, or no SDK) the API's no-op tracer wraps the trusted parent, and the gateway used to answer with
// the caller's own parent-id and sampled flag, as if the caller were its own callee (audit 19, finding 5).
describe('a trusted traceparent when the gateway records no spans', () => {
  let tracing: InMemoryTracing;
  let stack: TestStack;
  let token: string;
  beforeAll(async () => {
    // The context manager and propagators the bootstrap registers with OTEL_TRACES_EXPORTER=none; the gateway
    // gets the global tracer, which no provider backs.
    tracing = startInMemoryTracing();
    stack = await startStack({ overrides: { trustTraceparent: true } });
    token = await login(stack.gateway.url);
  });
  afterAll(async () => {
    await stack.close();
    await tracing.shutdown();
  });

  it('gets no traceresponse naming the caller, and still reaches the service', async () => {
    const response = await get(`${stack.gateway.url}/api/users/1`, [['authorization', `Bearer ${token}`], ['traceparent', `00-${TRACE}-${PARENT}-01`]]);
    expect(response.statusCode).toBe(200);
    expect(response.headers.traceresponse).toBeUndefined();
    expect(fields(stack.users.requests.at(-1)!.headers.traceparent)).toMatchObject({ traceId: TRACE, parentId: PARENT });
  });
});

// W3C Trace Context: a participant that receives a valid traceparent MUST propagate it. With telemetry off there
// was no propagator and no context manager, so a trusting gateway deleted the client's trace headers and sent
// nothing in their place, to HTTP services and gRPC services alike (the services got X-Request-Id alone).
describe('a trusted traceparent with telemetry off (the built gateway, as a process)', () => {
  const TRUSTED_TRACEPARENT = `00-${TRACE}-${PARENT}-03`;
  // A list the gateway would cut if it continued the trace itself (over 512 characters, a repeated key, a blank after
  // a comma): passed on with the traceparent unchanged, it must come as it was sent.
  const CLIENT_TRACESTATE = `congo=t61rcWkgMzE, rojo=00f067aa0ba902b7,congo=again,a=${'v'.repeat(198)},b=${'v'.repeat(198)},c=${'v'.repeat(198)}`;
  const CLIENT_TRACE_HEADERS = { traceparent: TRUSTED_TRACEPARENT, tracestate: CLIENT_TRACESTATE, baggage: 'tenant=acme' };
  let service: TestServer & { requests: { headers: http.IncomingHttpHeaders }[] };
  let mapping: MappingServer;

  beforeAll(async () => {
    const requests: { headers: http.IncomingHttpHeaders }[] = [];
    service = Object.assign(
      await listen((req, res) => {
        requests.push({ headers: { ...req.headers } });
        req.resume();
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      }),
      { requests },
    );
    mapping = await startMappingServer();
  });
  afterAll(async () => {
    await service.close();
    await mapping.close();
  });

  async function withGateway(options: { trust: boolean; telemetry: boolean; env: Record<string, string> }, check: (gateway: GatewayProcess) => Promise<void>) {
    const gateway = await startGatewayProcess({
      config: {
        port: 0,
        trustTraceparent: options.trust,
        services: { rec: { url: service.url }, mapping: { url: mapping.url }, users: { url: service.url }, orders: { url: service.url }, notifications: { url: service.url } },
        routes: [
          { name: 'pub', prefix: '/pub', service: 'rec', upstreamPath: '/p', auth: 'public' },
          { name: 'mapping', prefix: '/api/mapping', service: 'mapping', upstreamPath: '/v1', auth: 'public', grpc: { proto: MAPPING_PROTO, service: MAPPING_SERVICE } },
        ],
      },
      telemetry: options.telemetry,
      env: { JWT_SECRET: TEST_JWT_SECRET, ...options.env },
    });
    try {
      await check(gateway);
    } finally {
      gateway.child.kill('SIGKILL');
      await gateway.exited();
    }
  }

  /** What the HTTP service and the gRPC service received for one request each with the client's trace headers. */
  let sent = 0;
  async function sentOn(gateway: GatewayProcess) {
    const proxiedId = `proxied-${++sent}`;
    const proxied = await requestOnNewConnection(`${gateway.url}/pub/x`, { headers: { ...CLIENT_TRACE_HEADERS, [HEADER.requestId]: proxiedId } });
    expect(proxied.status).toBe(200);
    const http1 = service.requests.find((request) => request.headers[HEADER.requestId] === proxiedId)!.headers;
    const transcodedId = `transcoded-${sent}`;
    const transcoded = await requestOnNewConnection(`${gateway.url}/api/mapping/metadata`, { headers: { ...CLIENT_TRACE_HEADERS, [HEADER.requestId]: transcodedId } });
    expect(transcoded.status).toBe(200);
    const grpc = mapping.calls.find((call) => call.metadata[HEADER.requestId] === transcodedId)!.metadata;
    return [
      { to: 'http', traceparent: http1.traceparent, tracestate: http1.tracestate, baggage: String(http1.baggage ?? '') },
      { to: 'grpc', traceparent: grpc.traceparent, tracestate: grpc.tracestate, baggage: grpc.baggage ?? '' },
    ];
  }

  it.each([
    { desc: 'OTEL_SDK_DISABLED=true', telemetry: true, env: { OTEL_SDK_DISABLED: 'true' } },
    { desc: 'no otel/register preload', telemetry: false, env: { OTEL_SDK_DISABLED: 'false' } },
  ])('passes the client’s traceparent, tracestate and baggage on unchanged to HTTP and gRPC services ($desc)', async ({ telemetry, env }) => {
    await withGateway({ trust: true, telemetry, env }, async (gateway) => {
      for (const sent of await sentOn(gateway)) {
        expect({ to: sent.to, traceparent: sent.traceparent, tracestate: sent.tracestate }).toEqual({ to: sent.to, traceparent: TRUSTED_TRACEPARENT, tracestate: CLIENT_TRACE_HEADERS.tracestate });
        expect(sent.baggage.split(',')).toContain('tenant=acme');
      }
    });
  }, 60_000);

  it('still forwards none of the client’s trace headers with trustTraceparent off', async () => {
    await withGateway({ trust: false, telemetry: false, env: {} }, async (gateway) => {
      for (const sent of await sentOn(gateway)) {
        expect(sent.traceparent ?? '').not.toContain(TRACE);
        expect(sent.tracestate).toBeUndefined();
        expect(sent.baggage).not.toContain('tenant=acme');
      }
    });
  }, 60_000);
});
