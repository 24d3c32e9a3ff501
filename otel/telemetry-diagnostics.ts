/**
 * What the telemetry bootstrap says about itself on stderr. With no collector listening (the plain `npm start`
 * case) every batch export fails; without a limit that is a stack of JSON every few seconds per process.
 * Here each kind of problem is reported once per interval, with a count of what was held back.
 */
import { format } from 'node:util';
import type { DiagLogger } from '@opentelemetry/api';

export interface TelemetryDiagnosticsOptions {
  /** Where export failures go, named in the message (e.g. `http://localhost:4318/v1/traces`). */
  destination: string;
  /** Writes one line; default stderr. */
  write?: (line: string) => void;
  /** Shortest time between two reports of the same kind, ms. Default 60 000. */
  intervalMs?: number;
  /** Clock, ms. Default `Date.now`. */
  now?: () => number;
}

export interface TelemetryDiagnostics {
  /** For `diag.setLogger(logger, DiagLogLevel.WARN)`: errors and warnings, each message rate-limited. */
  readonly logger: DiagLogger;
  /** For `setGlobalErrorHandler`: the SDK's batch processors report failed exports here. */
  reportExportError(error: unknown): void;
  /** True when an export failed within the last interval: a flush at shutdown is then not worth waiting for. */
  exportFailedRecently(): boolean;
}

const PREFIX = 'telemetry:';

/** A loss the SDK (and dropped-log-records.ts) counts into its message: "Dropped 37 spans because maxQueueSize reached". */
const DROPPED = /\bDropped (\d+)/;

export function createTelemetryDiagnostics(options: TelemetryDiagnosticsOptions): TelemetryDiagnostics {
  const write = options.write ?? ((line: string) => process.stderr.write(`${line}\n`));
  const intervalMs = options.intervalMs ?? 60_000;
  const now = options.now ?? Date.now;
  const lastReported = new Map<string, number>();
  const suppressed = new Map<string, number>();
  /** What the held-back reports of a kind that counts a loss ("Dropped N ...") dropped together. */
  const heldDropped = new Map<string, number>();
  let lastExportFailure: number | undefined;

  /** `dropped`: the count a "Dropped N ..." message gives, added to the next report of its kind when held back. */
  const report = (kind: string, message: string, dropped?: number) => {
    const at = now();
    const last = lastReported.get(kind);
    if (last !== undefined && at - last < intervalMs) {
      suppressed.set(kind, (suppressed.get(kind) ?? 0) + 1);
      if (dropped !== undefined) heldDropped.set(kind, (heldDropped.get(kind) ?? 0) + dropped);
      return;
    }
    const held = suppressed.get(kind) ?? 0;
    const droppedSince = heldDropped.get(kind) ?? 0;
    suppressed.delete(kind);
    heldDropped.delete(kind);
    lastReported.set(kind, at);
    const seconds = Math.round(intervalMs / 1000);
    // The total since the last report: each held-back message counted only its own second (the processors reset their
    // count as they warn), and a report gave its own, so 4,094 read as the loss of a minute that dropped 97,000.
    const summed = held > 0 && dropped !== undefined;
    const text = summed ? message.replace(DROPPED, `Dropped ${dropped + droppedSince}`) : message;
    const since = summed ? `since the last report, ${held} more reports held back and counted in` : `${held} more since the last report`;
    write(`${PREFIX} ${text}${held > 0 ? ` (${since}; next report in ${seconds} s at the earliest)` : ''}`);
  };
  const fromDiag = (level: string) => (message: string, ...args: unknown[]) => {
    const text = format(message, ...args);
    // One kind per message whatever its numbers: the SDK writes counts into the text ("Dropped 37 spans because
    // maxQueueSize reached"), and each count would otherwise be a kind of its own, reported every time.
    const dropped = DROPPED.exec(text);
    report(`${level}:${message.replace(/\d+/g, 'N')}`, `${level}: ${text}`, dropped ? Number(dropped[1]) : undefined);
  };
  const ignore = () => {};

  return {
    logger: { error: fromDiag('error'), warn: fromDiag('warn'), info: ignore, debug: ignore, verbose: ignore },
    reportExportError(error) {
      lastExportFailure = now();
      report(
        'export',
        `cannot export to ${options.destination} (${describeError(error)}); spans and logs are dropped until it ` +
          `answers. Repeated failures are reported at most every ${Math.round(intervalMs / 1000)} s.`,
      );
    },
    exportFailedRecently: () => lastExportFailure !== undefined && now() - lastExportFailure < intervalMs,
  };
}

/** `connect ECONNREFUSED 127.0.0.1:4318` rather than the SDK's JSON dump of the error's prototype chain. */
export function describeError(error: unknown): string {
  if (error instanceof AggregateError && error.errors.length > 0) return describeError(error.errors[0]);
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    const message = error.message || error.name;
    return code !== undefined && !message.includes(String(code)) ? `${String(code)} ${message}` : message;
  }
  return String(error);
}
