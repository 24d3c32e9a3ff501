import * as grpc from '@grpc/grpc-js';
import { bindGrpcServer, grpcError, grpcServiceDefinition } from '../../services/shared/grpc-service';
import type { GatewayConfig } from '../../src/config';
import { shippedConfigFile, testConfig } from '../helpers/test-config';

export const MAPPING_PROTO = 'test/fixtures/transcoding.proto';
export const MAPPING_SERVICE = 'koagateway.test.v1.Mapping';

/**
 * The shipped config with the mapping service at `url` (`service` adds to its entry) and one public gRPC route to
 * it at `/api/mapping` (`route` adds to it); the shipped services point at a port nothing listens on.
 */
export function mappingGatewayConfig(url: string, extra: { service?: Record<string, unknown>; route?: Record<string, unknown>; config?: Record<string, unknown> } = {}): GatewayConfig {
  const shipped = shippedConfigFile() as { services: Record<string, unknown>; routes: unknown[] };
  return testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' }, {
    services: { ...shipped.services, mapping: { url, ...extra.service } },
    routes: [...shipped.routes, { name: 'mapping', prefix: '/api/mapping', service: 'mapping', upstreamPath: '/v1', auth: 'public', grpc: { proto: MAPPING_PROTO, service: MAPPING_SERVICE }, ...extra.route }],
    ...extra.config,
  });
}

export interface MappingServer {
  /** `http://127.0.0.1:port`, as the gateway's `services` names it. */
  url: string;
  /**
   * Every call's method, decoded request (plain object) and metadata, in arrival order, and whether it is still
   * open (neither answered in full nor cancelled: the service still holds it).
   */
  calls: { method: string; request: Record<string, unknown>; metadata: Record<string, string>; open: boolean }[];
  /** Calls the server saw cancelled (the client went away or its deadline passed). */
  cancelled: string[];
  /** Pour's chunks whose write has completed at the service (they left it for the gateway), over all its calls. */
  readonly poured: number;
  close(): Promise<void>;
}

/** A real gRPC server of test/fixtures/transcoding.proto on a loopback port (default a free one), recording what it receives. */
export async function startMappingServer(port = 0): Promise<MappingServer> {
  const server = new grpc.Server();
  const calls: MappingServer['calls'] = [];
  const cancelled: string[] = [];
  let poured = 0;
  /** Records a call, open until its handler closes it or it is cancelled. */
  const record = (method: string, call: grpc.ServerUnaryCall<Record<string, unknown>, unknown> | grpc.ServerWritableStream<Record<string, unknown>, unknown>) => {
    const entry = { method, request: call.request, metadata: stringEntries(call.metadata), open: true };
    calls.push(entry);
    call.on('cancelled', () => {
      entry.open = false;
      cancelled.push(method);
    });
    return () => void (entry.open = false);
  };
  type Unary = grpc.ServerUnaryCall<Record<string, unknown>, unknown>;
  server.addService(grpcServiceDefinition(MAPPING_PROTO, MAPPING_SERVICE), {
    Echo(call: Unary, callback: grpc.sendUnaryData<unknown>) {
      const close = record('Echo', call);
      callback(null, call.request);
      close();
    },
    Fail(call: Unary, callback: grpc.sendUnaryData<unknown>) {
      const close = record('Fail', call);
      callback(grpcError(Number(call.request.code), String(call.request.message)));
      close();
    },
    Slow(call: Unary, callback: grpc.sendUnaryData<unknown>) {
      const close = record('Slow', call);
      const timer = setTimeout(() => {
        callback(null, {});
        close();
      }, Math.min(Number(call.request.delayMs), 10_000));
      call.on('cancelled', () => clearTimeout(timer));
    },
    Metadata(call: Unary, callback: grpc.sendUnaryData<unknown>) {
      const close = record('Metadata', call);
      callback(null, { entries: stringEntries(call.metadata) });
      close();
    },
    Count(call: grpc.ServerWritableStream<Record<string, unknown>, unknown>) {
      const close = record('Count', call);
      const count = Math.min(Number(call.request.count), 10_000);
      const failWith = Number(call.request.failWith);
      const delayMs = Number(call.request.delayMs);
      let n = 0;
      let timer: NodeJS.Timeout | undefined;
      // A long delay must not outlive a cancelled call (nor keep the test process up).
      call.on('cancelled', () => clearTimeout(timer));
      const step = () => {
        if (call.cancelled) return;
        if (n < count) {
          n++;
          call.write({ n, at: { seconds: 1_700_000_000 + n, nanos: 0 } });
          if (delayMs > 0) timer = setTimeout(step, delayMs);
          else setImmediate(step);
        } else if (failWith) {
          call.emit('error', grpcError(failWith, `failed after ${count}`));
          close();
        } else {
          call.end();
          close();
        }
      };
      step();
    },
    Pour(call: grpc.ServerWritableStream<Record<string, unknown>, unknown>) {
      const close = record('Pour', call);
      const count = Math.min(Number(call.request.count), 1000);
      const data = Buffer.alloc(Math.min(Number(call.request.size), 3 * 1024 * 1024), 'p');
      let n = 0;
      const step = () => {
        if (call.cancelled) return;
        if (n === count) {
          call.end();
          close();
          return;
        }
        n++;
        call.write({ n, data }, () => {
          poured++;
          step();
        });
      };
      step();
    },
    Say(call: Unary, callback: grpc.sendUnaryData<unknown>) {
      const close = record('Say', call);
      callback(null, { value: call.request.text });
      close();
    },
    Nothing(call: Unary, callback: grpc.sendUnaryData<unknown>) {
      const close = record('Nothing', call);
      callback(null, { nullValue: 'NULL_VALUE' });
      close();
    },
    Hidden(_call: Unary, callback: grpc.sendUnaryData<unknown>) {
      callback(null, {});
    },
  });
  const bound = await bindGrpcServer(server, '127.0.0.1', port);
  return {
    url: `http://127.0.0.1:${bound}`,
    calls,
    cancelled,
    get poured() {
      return poured;
    },
    close: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
  };
}

function stringEntries(metadata: grpc.Metadata): Record<string, string> {
  return Object.fromEntries(Object.entries(metadata.getMap()).flatMap(([key, value]) => (typeof value === 'string' ? [[key, value]] : [])));
}
