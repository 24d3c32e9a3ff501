/**
 * The telemetry bootstrap every process preloads, before any module it instruments:
 *   node --require ./dist/otel/register.js dist/services/users/main.js
 * Configured by the standard OTEL_* variables (see telemetry-config.ts); service.name comes from
 * OTEL_SERVICE_NAME or else from the entry script's path.
 *
 * Exit: each main.ts handles SIGTERM/SIGINT itself (close the server, then `await shutdownTelemetry()`). For a
 * process that does not, the fallback below flushes and then re-raises the signal, so the process still ends
 * the way it would have without telemetry. It never calls process.exit.
 */
import { isTelemetryActive, shutdownTelemetry, startTelemetry } from './telemetry';

startTelemetry();

if (isTelemetryActive()) {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, function flushTelemetryBeforeExit() {
      // Listeners added by the app run after this one; they own the shutdown and call shutdownTelemetry().
      if (process.listenerCount(signal) > 0) return;
      void shutdownTelemetry().finally(() => process.kill(process.pid, signal));
    });
  }
  // A process that simply runs out of work (a script, not a server) still delivers its last batch.
  process.once('beforeExit', () => void shutdownTelemetry());
}
