import http2 from 'node:http2';
import { gzipSync } from 'node:zlib';
import * as grpc from '@grpc/grpc-js';
import { createGatewayApps } from '../../src/gateway';
import { MAX_GRPC_MESSAGE_BYTES } from '../../src/grpc/message-limits';
import { loadProtoRoot } from '../../src/grpc/proto-files';
import { bindGrpcServer, grpcServiceDefinition } from '../../services/shared/grpc-service';
import { listen, memoryLogger, type TestServer } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';

const HOSTILE_PROTO = 'test/grpc/hostile.proto';
const HOSTILE_SERVICE = 'koagateway.test.v1.Hostile';

type Target = { byName?: string };

/**
 * What a gRPC service answers, told apart from what happened to the call: a service's own DEADLINE_EXCEEDED is an
 * answer (not the instance's silence, which passive health ejects it for), and answers grpc-js fails for the gateway
 * (a message that inflates past the gateway's limit, a unary answer with no message) are the service's bad answers,
 * 502, never the client's fault.
 */
describe('gRPC answers of a service, told apart from the call running out', () => {
  let gateway: TestServer;
  let answering: grpc.Server;
  let hanging: grpc.Server;
  let raw: http2.Http2Server;
  const reached: string[] = [];

  beforeAll(async () => {
    // Answers DEADLINE_EXCEEDED at once for `slow` (its own database call ran out of time), echoes anything else.
    answering = new grpc.Server();
    answering.addService(grpcServiceDefinition(HOSTILE_PROTO, HOSTILE_SERVICE), {
      Pick(call: grpc.ServerUnaryCall<Target, unknown>, callback: grpc.sendUnaryData<unknown>) {
        reached.push(`answering:${call.request.byName}`);
        if (call.request.byName === 'slow') callback({ code: grpc.status.DEADLINE_EXCEEDED, details: 'the accounts database did not answer in time' });
        else callback(null, call.request);
      },
    });
    // Never answers `hang`: the gateway's deadline ends those calls.
    hanging = new grpc.Server();
    hanging.addService(grpcServiceDefinition(HOSTILE_PROTO, HOSTILE_SERVICE), {
      Pick(call: grpc.ServerUnaryCall<Target, unknown>, callback: grpc.sendUnaryData<unknown>) {
        reached.push(`hanging:${call.request.byName}`);
        if (call.request.byName !== 'hang') callback(null, call.request);
      },
    });
    const answeringPort = await bindGrpcServer(answering, '127.0.0.1', 0);
    const hangingPort = await bindGrpcServer(hanging, '127.0.0.1', 0);

    // A service speaking gRPC's wire format by hand, for answers grpc-js's server never sends.
    const account = loadProtoRoot(HOSTILE_PROTO).lookupType('koagateway.test.v1.Account');
    const frame = (message: Buffer, compressed: boolean) => {
      const head = Buffer.alloc(5);
      head.writeUInt8(compressed ? 1 : 0, 0);
      head.writeUInt32BE(message.length, 1);
      return Buffer.concat([head, message]);
    };
    const oversized = Buffer.from(account.encode({ accountId: 'a', displayName: 'x'.repeat(MAX_GRPC_MESSAGE_BYTES + 1024) }).finish());
    raw = http2.createServer();
    const target = loadProtoRoot(HOSTILE_PROTO).lookupType('koagateway.test.v1.Target');
    raw.on('stream', (stream) => {
      const chunks: Buffer[] = [];
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      stream.on('end', () => {
        // The request's one message, after its 5-byte frame head: which answer to give.
        const kind = (target.decode(Buffer.concat(chunks).subarray(5)) as Target).byName;
        reached.push(`raw:${kind}`);
        const gzipped = kind === 'gzip-past-limit';
        stream.respond({ ':status': 200, 'content-type': 'application/grpc', ...(gzipped && { 'grpc-encoding': 'gzip' }) }, { waitForTrailers: true });
        stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
        if (gzipped) stream.end(frame(gzipSync(oversized), true));
        else if (kind === 'two-messages') stream.end(Buffer.concat([frame(Buffer.from(account.encode({ accountId: 'first' }).finish()), false), frame(Buffer.from(account.encode({ accountId: 'second' }).finish()), false)]));
        else stream.end();
      });
    });
    await new Promise<void>((resolve) => raw.listen(0, '127.0.0.1', resolve));
    const rawPort = (raw.address() as { port: number }).port;

    const grpcRoute = (name: string, extra: Record<string, unknown> = {}) => ({
      name,
      prefix: `/api/${name}`,
      service: name,
      upstreamPath: '/v1',
      auth: 'public',
      grpc: { proto: HOSTILE_PROTO, service: HOSTILE_SERVICE },
      ...extra,
    });
    const config = testConfig(
      { users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' },
      {
        services: {
          answering: { url: `http://127.0.0.1:${answeringPort}` },
          hanging: { url: `http://127.0.0.1:${hangingPort}` },
          raw: { url: `http://127.0.0.1:${rawPort}` },
        },
        routes: [grpcRoute('answering'), grpcRoute('hanging', { timeoutMs: 300 }), grpcRoute('raw', { timeoutMs: 2000 })],
      },
    );
    gateway = await listen(createGatewayApps(config, { logger: memoryLogger('gateway').logger, metrics: false }).gateway.callback());
  });
  afterAll(async () => {
    await gateway.close();
    answering.forceShutdown();
    hanging.forceShutdown();
    await new Promise((resolve) => raw.close(resolve));
  });

  const pick = async (route: string, name: string) => {
    const response = await fetch(`${gateway.url}/api/${route}/targets/${name}`);
    return { status: response.status, body: (await response.json()) as { code?: string; detail?: string } };
  };

  // Counted as the instance's silence, any three requests the service was slow on ejected its only instance, and
  // every route to it answered 503 for `ejectMs`.
  it("keeps serving after a service answers DEADLINE_EXCEEDED itself, more times than passive health ejects for", async () => {
    for (let i = 0; i < 5; i++) expect(await pick('answering', 'slow')).toMatchObject({ status: 504, body: { code: 'upstream_timeout' } });
    expect(await pick('answering', 'fine')).toMatchObject({ status: 200 });
    expect(reached.filter((entry) => entry === 'answering:slow')).toHaveLength(5);
    expect(reached).toContain('answering:fine');
  });

  it("still ejects an instance whose calls run out the gateway's deadline", async () => {
    for (let i = 0; i < 3; i++) expect(await pick('hanging', 'hang')).toMatchObject({ status: 504, body: { code: 'upstream_timeout' } });
    expect(await pick('hanging', 'fine')).toMatchObject({ status: 503, body: { code: 'upstream_unavailable' } });
    expect(reached).not.toContain('hanging:fine');
  });

  // grpc-js offers gzip and deflate to every service and fails an answer that inflates past the gateway's limit with
  // RESOURCE_EXHAUSTED in the words of a service refusing a request: it was 413, the client told its request was too large.
  it('answers a compressed message that inflates past the gateway limit 502, as an uncompressed one', async () => {
    expect(await pick('raw', 'gzip-past-limit')).toMatchObject({ status: 502, body: { code: 'upstream_bad_response' } });
    expect(reached).toContain('raw:gzip-past-limit');
  });

  // grpc-js makes UNIMPLEMENTED of a unary OK without a message: it was 501, "not implemented" of a method the
  // service has. grpc-go and grpc-java call it INTERNAL.
  // grpc-js's unary call reads one message: a second one and the status behind it were never read, and the call ran
  // to its deadline (504, and the instance counted silent: three ejected it).
  it('answers a unary answer of two messages 502 at once, and keeps the instance', async () => {
    for (let i = 0; i < 4; i++) {
      const answer = await pick('raw', 'two-messages');
      expect(answer).toMatchObject({ status: 502, body: { code: 'upstream_bad_response' } });
      expect(answer.body.detail).toMatch(/answered a unary call with more than one message/);
    }
    // Not ejected: the next call reaches it.
    expect(await pick('raw', 'no-message')).toMatchObject({ status: 502, body: { code: 'upstream_bad_response' } });
    expect(reached.filter((entry) => entry === 'raw:two-messages')).toHaveLength(4);
  });

  it('answers a unary OK without a message 502, not 501', async () => {
    const answer = await pick('raw', 'no-message');
    expect(answer).toMatchObject({ status: 502, body: { code: 'upstream_bad_response' } });
    expect(answer.body.detail).toMatch(/no message/);
  });
});
