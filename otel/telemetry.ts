/**
 * The process-wide telemetry handle: started once by `otel/register` (preloaded with `--require`), flushed by
 * each `main.ts` after it closes its server. Light on purpose: `main.ts` and `logger.ts` import it even when
 * telemetry is off, and it loads the SDK (`./sdk`) only when telemetry is on.
 */
import { readTelemetryConfig, type TelemetryConfig } from './telemetry-config';
import type { Telemetry } from './sdk';

/** How long `shutdownTelemetry` waits for the last export, ms; shorter when the collector is known to be down. */
export const SHUTDOWN_TIMEOUT_MS = 5_000;
const SHUTDOWN_TIMEOUT_COLLECTOR_DOWN_MS = 1_000;

let started = false;
let active: Telemetry | undefined;
let stopping: Promise<void> | undefined;
let write = (line: string) => {
  process.stderr.write(`${line}\n`);
};

export interface StartTelemetryOptions {
  /** Default: `readTelemetryConfig()` (the `OTEL_*` variables, the entry script, package.json's version). */
  config?: TelemetryConfig;
  /** Writes one line; default stderr. */
  write?: (line: string) => void;
}

/**
 * Starts the SDK for this process, once; later calls do nothing. Says in one line where telemetry goes. A
 * failure to start is reported and swallowed: the service then runs without telemetry.
 */
export function startTelemetry(options: StartTelemetryOptions = {}): void {
  if (started) return;
  started = true;
  if (options.write !== undefined) write = options.write;
  let config: TelemetryConfig;
  let telemetry: Telemetry | undefined;
  try {
    config = options.config ?? readTelemetryConfig();
    for (const warning of config.warnings) write(`telemetry: ${warning}`);
    if (!config.enabled) {
      write('telemetry: off (OTEL_SDK_DISABLED=true)');
      return;
    }
    // Required here, not imported above, so a process with telemetry off never loads the SDK.
    const { createTelemetry } = require('./sdk') as typeof import('./sdk');
    telemetry = createTelemetry(config, { write });
    telemetry.start();
    active = telemetry;
    write(`telemetry: ${describeDestination(config)}`);
  } catch (error) {
    write(`telemetry: could not start (${error instanceof Error ? error.message : String(error)}); running without it`);
    void telemetry?.shutdown(0);
  }
}

/**
 * Flushes queued spans and log records and stops exporting; call it after the HTTP server has closed, so the
 * last requests' spans are included. Waits at most `SHUTDOWN_TIMEOUT_MS` (1 s when exports are failing anyway),
 * never rejects, and does nothing when telemetry is off or `otel/register` was not loaded. Idempotent.
 */
export function shutdownTelemetry(): Promise<void> {
  const telemetry = active;
  if (telemetry === undefined) return Promise.resolve();
  stopping ??= (async () => {
    const timeoutMs = telemetry.exportFailedRecently() ? SHUTDOWN_TIMEOUT_COLLECTOR_DOWN_MS : SHUTDOWN_TIMEOUT_MS;
    const flushed = await telemetry.shutdown(timeoutMs);
    if (!flushed) write(`telemetry: the last export did not finish within ${timeoutMs} ms; it was dropped`);
  })();
  return stopping;
}

/** True while the bootstrap is running and exporting logs: `createLogger` then ships each line as OTLP too. */
export function isLogExportActive(): boolean {
  return active !== undefined && stopping === undefined && active.config.logs.exporters.length > 0;
}

/** True once the SDK has started in this process. */
export function isTelemetryActive(): boolean {
  return active !== undefined;
}

/** The start-up line: where each signal goes, and what to do when nothing listens there. */
export function describeDestination(config: TelemetryConfig): string {
  const parts: string[] = [];
  const otlp: string[] = [];
  for (const [signal, settings] of [
    ['traces', config.traces],
    ['logs', config.logs],
  ] as const) {
    if (settings.exporters.includes('otlp')) otlp.push(`${signal} to ${settings.url}`);
    if (settings.exporters.includes('console')) parts.push(`prints ${signal} to stdout`);
    if (settings.exporters.length === 0) parts.push(`exports no ${signal}`);
  }
  if (otlp.length > 0) {
    const protocol = config.traces.exporters.includes('otlp') ? config.traces.protocol : config.logs.protocol;
    parts.unshift(`sends ${otlp.join(' and ')} (OTLP ${protocol})`);
  }
  const hint =
    otlp.length > 0
      ? '. Nothing listening there? Start the compose stack, or set OTEL_TRACES_EXPORTER=console, or OTEL_SDK_DISABLED=true.'
      : '.';
  return `${config.serviceName} ${parts.join(', ')}${hint}`;
}
