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
  /** Writes each report held back since the last of its kind, with what it counted (at shutdown: none would come later). */
  flush(): void;
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
  /** The last held-back report of each kind, for `flush`. */
  const heldMessage = new Map<string, string>();
  let lastExportFailure: number | undefined;

  /** `dropped`: the count a "Dropped N ..." message gives, added to the next report of its kind when held back. */
  const report = (kind: string, message: string, dropped?: number) => {
    const at = now();
    const last = lastReported.get(kind);
    if (last !== undefined && at - last < intervalMs) {
      suppressed.set(kind, (suppressed.get(kind) ?? 0) + 1);
      if (dropped !== undefined) heldDropped.set(kind, (heldDropped.get(kind) ?? 0) + dropped);
      heldMessage.set(kind, message);
      return;
    }
    const held = suppressed.get(kind) ?? 0;
    const droppedSince = heldDropped.get(kind) ?? 0;
    suppressed.delete(kind);
    heldDropped.delete(kind);
    heldMessage.delete(kind);
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
    // sdk-trace's own count of dropped spans, said only when a later span is queued: dropped-records.ts counts every
    // one and says it, so this one would count them twice.
    if (SDK_SPAN_DROP.test(message)) return;
    const text = printable(format(message, ...args));
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
    flush() {
      for (const [kind, count] of suppressed) {
        const dropped = heldDropped.get(kind);
        const message = heldMessage.get(kind)!;
        const text = dropped === undefined ? message : message.replace(DROPPED, `Dropped ${dropped}`);
        write(`${PREFIX} ${text} (${count} ${count === 1 ? 'report' : 'reports'} held back since the last one${dropped === undefined ? '' : ', counted in'}; said at shutdown)`);
      }
      suppressed.clear();
      heldDropped.clear();
      heldMessage.clear();
    },
  };
}

/** sdk-trace's warning of the spans it dropped (BatchSpanProcessorBase), as it writes it. */
const SDK_SPAN_DROP = /^Dropped \d+ spans because maxQueueSize reached$/;

/** Longest text of a report taken from outside (an error's message, a diagnostic), characters. */
const MAX_TEXT = 300;

/**
 * `text` with its control characters (C0, DEL, C1) written as `\x..` and cut to MAX_TEXT: an error's message can be
 * a collector's words (its HTTP status text, which Node takes with escape sequences in it), and stderr is a terminal.
 */
export function printable(text: string): string {
  // eslint-disable-next-line no-control-regex
  const escaped = text.replace(/[\u0000-\u001f\u007f-\u009f]/g, (char) => `\\x${char.charCodeAt(0).toString(16).padStart(2, '0')}`);
  if (escaped.length <= MAX_TEXT) return escaped;
  // Not between the two halves of a surrogate pair (an emoji): a lone half is written as U+FFFD.
  const cut = /[\ud800-\udbff]/.test(escaped[MAX_TEXT - 1]!) ? MAX_TEXT - 1 : MAX_TEXT;
  return `${escaped.slice(0, cut)}...`;
}

/**
 * `logger` without sdk-trace's own count of dropped spans (dropped-records.ts counts and says every one): the SDK's
 * console logger, when OTEL_LOG_LEVEL hands it the diagnostics, said the drops twice.
 */
export function withoutSdkSpanDrops(logger: DiagLogger): DiagLogger {
  return {
    error: (message, ...args) => logger.error(message, ...args),
    warn: (message, ...args) => (SDK_SPAN_DROP.test(message) ? undefined : logger.warn(message, ...args)),
    info: (message, ...args) => logger.info(message, ...args),
    debug: (message, ...args) => logger.debug(message, ...args),
    verbose: (message, ...args) => logger.verbose(message, ...args),
  };
}

/**
 * `connect ECONNREFUSED 127.0.0.1:4318` rather than the SDK's JSON dump of the error's prototype chain (and its
 * collector's whole answer), printable and cut to a line.
 */
export function describeError(error: unknown): string {
  if (error instanceof AggregateError && error.errors.length > 0) return describeError(error.errors[0]);
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    const message = error.message || error.name;
    return printable(code !== undefined && !message.includes(String(code)) ? `${String(code)} ${message}` : message);
  }
  return printable(String(error));
}
