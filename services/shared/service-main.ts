import type Koa from 'koa';
import { createLogger, type Logger } from '../../otel/logger';
import { SIGNATURE_AUDIENCE } from '../../otel/wire-names';
import { runServer } from '../../otel/lifecycle';
import { continueTraceContextOnlyWhen, isTelemetryActive, shutdownTelemetry, startPropagation, traceContextByHand, type TraceContextByHand } from '../../otel/telemetry';
import type { CallerRules } from '../../src/gateway-signature';
import { createRejectedRequestDuration } from './rejected-request-duration';
import { signedByGateway } from './service-app';
import { loadServiceEnv, type ServiceEnv, type ServiceKey } from './service-config';

/** A service with more to stop than its HTTP server (notification-service's gRPC interface). */
export interface BuiltService {
  app: Koa;
  /** Runs once the HTTP server drained, before telemetry is flushed. */
  onShutdown(): Promise<void>;
}

export interface StartServiceOptions {
  /** Whether the service calls other services within a request (order-service); default false. */
  callsOtherServices?: boolean;
  /** The calls it takes from other services (its app's CallerRules): their trace context is continued as the gateway's. */
  callers?: CallerRules;
}

/** What startService decided about the process, for a service's build. */
export interface ServiceRuntime {
  /**
   * What of its callers' trace context a service that calls others must continue, and pass on to the services it
   * calls, by itself: what no loaded instrumentation does (telemetry off, or some disabled: see startService).
   */
  propagateTraceContextByHand: TraceContextByHand;
}

/** What each service's main.ts does: read its env, build its app, listen, stop gracefully. */
export async function startService<K extends ServiceKey>(
  service: K,
  serviceName: string,
  build: (env: ServiceEnv<K>, logger: Logger, runtime: ServiceRuntime) => Promise<Koa | BuiltService> | Koa | BuiltService,
  options: StartServiceOptions = {},
): Promise<void> {
  let env: ServiceEnv<K>;
  try {
    env = loadServiceEnv(service);
  } catch (error) {
    process.stderr.write(`${serviceName}: ${(error as Error).message}\n`);
    process.exit(1);
  }
  const logger = createLogger({ serviceName, level: env.LOG_LEVEL });
  if (env.GATEWAY_SIGNING_KEY === undefined) {
    logger.warn('GATEWAY_SIGNING_KEY is unset: identity headers are believed from any peer that reaches this service (development only; production refuses to start without it)');
  } else {
    // A request the gateway did not sign is refused (createServiceApp), and its span starts a trace of its own:
    // a peer's forged traceparent must not record a 401 inside someone else's trace.
    continueTraceContextOnlyWhen(signedByGateway(env.GATEWAY_SIGNING_KEY, env.GATEWAY_SIGNING_KEY_ACCEPTED, env.GATEWAY_SIGNATURE_AUDIENCE ?? SIGNATURE_AUDIENCE[service], options.callers));
  }
  // W3C Trace Context: a participant that receives a valid traceparent MUST propagate it. With telemetry on, the
  // http, undici and grpc instrumentations continue a request's trace context and pass it on; with it off
  // (OTEL_SDK_DISABLED=true, or no otel/register preload) none is loaded, and a service calling others sent its
  // callers' traceparent, tracestate and baggage nowhere. Such a service then registers the context manager and
  // the propagators (startPropagation, as the gateway does) and carries them itself; the others pay nothing. So it
  // does for each half a disabled instrumentation leaves undone (OTEL_NODE_DISABLED_INSTRUMENTATIONS=http-server,koa
  // started a new trace at every call order-service made).
  const byHand = traceContextByHand();
  const callsOthers = options.callsOtherServices === true;
  const runtime: ServiceRuntime = {
    propagateTraceContextByHand: { continueIncoming: callsOthers && byHand.continueIncoming, injectHttpCalls: callsOthers && byHand.injectHttpCalls, injectGrpcCalls: callsOthers && byHand.injectGrpcCalls },
  };
  if (callsOthers && !isTelemetryActive()) startPropagation();
  try {
    const built = await build(env, logger, runtime);
    const { app, onShutdown } = 'onShutdown' in built ? built : { app: built, onShutdown: undefined };
    const stop = async () => {
      await onShutdown?.();
      await shutdownTelemetry();
    };
    const { url } = await runServer({ app, name: serviceName, port: env.PORT, host: env.HOST, logger, onShutdown: stop, onRejected: createRejectedRequestDuration(serviceName) });
    logger.info(`${serviceName} listening`, { url });
  } catch (error) {
    // A port in use, a host that does not resolve: one line, as the gateway says it, not a stack trace.
    process.stderr.write(`${serviceName}: failed to start: ${(error as Error).message}\n`);
    process.exit(1);
  }
}
