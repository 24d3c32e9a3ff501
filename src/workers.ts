import cluster, { type Worker } from 'node:cluster';
import os from 'node:os';
import { atMostEvery, type Logger } from '../otel/logger';
import { DEFAULT_DRAIN_TIMEOUT_MS, SETTLE_MS } from '../otel/lifecycle';
import { exportPromClientRegistry, metricExportEnabled, shutdownTelemetry, SHUTDOWN_TIMEOUT_MS } from '../otel/telemetry';
import { BACKGROUND_FETCH_DRAIN_MS } from './cache-background-fetch';
import { METRIC_LABEL_OTLP, METRIC_OTLP } from '../otel/wire-names';
import type { ReloadAnswer, WorkerConfigStatus } from './admin';
import { clientTimeouts, MAX_ROUTE_NAME_LENGTH, MAX_TIMER_MS, ROUTE_NAME, type GatewayConfig } from './config';
import { checkReload, type ActiveConfig } from './config-reload';
import { createPrimaryMetrics, isPromClientMessage, listenClusterMetrics } from './metrics';
import { readCertificatePems, readRotatedCertificates, type CertificatePems } from './tls';
import { startupWarnings } from './startup-warnings';
import { createLeaseLedger, type LeaseAsk, type Leased, type Recall, type Recalled, type Spent } from './rate-limit-leases';
import { createInvalidationRelay, MAX_QUEUED_INVALIDATIONS, type CacheInvalidated, type CacheInvalidation, type StaleResource } from './cache-invalidations';

/**
 * Every core: with `workers` > 1 the process that starts becomes a cluster primary that forks the workers,
 * which share the public port (the primary accepts and hands connections round robin). The primary serves no
 * request; it holds what must be one for all workers: the config (read and validated once, sent to each), the
 * rate-limit windows (leased out to the workers in blocks, so limits stay exact without Redis and without a round
 * trip per request: src/rate-limit-leases.ts), the response-cache invalidations (without Redis each worker caches in
 * its own memory: relayed in batches and confirmed, src/cache-invalidations.ts), the reload, and the workers' lives (a crashed one is replaced with
 * back-off; SIGTERM drains them all). A worker's side is src/worker-link.ts. Why processes and not worker
 * threads: docs/architecture.md.
 */

/** Processes `workers` asks for: `auto` is one per core this process may use. */
export function workerCount(workers: number | 'auto'): number {
  return workers === 'auto' ? os.availableParallelism() : workers;
}

/** Messages between the primary and a worker; `gateway` names the kind (Node's own cluster messages use `cmd`). */
export type ToPrimary =
  | { gateway: 'hello' }
  | { gateway: 'listening'; url: string }
  | { gateway: 'applied'; ok: boolean; version: string; loadedAt: string; reason?: string }
  | LeaseAsk
  | Recalled
  | { gateway: 'reload'; id: number }
  | { gateway: 'status'; id: number }
  | { gateway: 'pong'; id: number }
  /** It stopped taking connections and finishes those it has (a SIGTERM of its own): no longer serving. */
  | { gateway: 'draining' }
  /** Without Redis: a batch of resources whose copies the other workers must drop, or their confirmation (src/cache-invalidations.ts). */
  | CacheInvalidation
  | CacheInvalidated;

export type ToWorker =
  /** `certificates`: with `tls`, the pair the primary holds (a worker never reads the files itself). */
  | { gateway: 'apply'; active: ActiveConfig; certificates?: CertificatePems }
  | Leased
  | Recall
  | Spent
  | { gateway: 'reloaded'; id: number; answer: ReloadAnswer }
  | { gateway: 'workers'; id: number; workers: WorkerConfigStatus[]; pendingRestart: string[] }
  /** SIGHUP: `certificates` read again by the primary; none when it could not (the ones in use stay). */
  | { gateway: 'hangup'; certificates?: CertificatePems }
  | { gateway: 'shutdown' }
  /** The primary's watchdog: a worker whose event loop turns answers `pong` with the same id. */
  | { gateway: 'ping'; id: number }
  | CacheInvalidation
  | CacheInvalidated;

/** A cached resource: src/response-cache.ts cacheKey, SHA-256 in base64url. */
const CACHE_RESOURCE = /^[\w-]{43}$/;

/**
 * Longest `policy` a lease ask may name. A policy is `<store name>|<max>|<windowMs>` (src/middleware/rate-limit.ts),
 * the longest store name a route's, `route:` and its name, max a safe integer (16 digits) and windowMs at most
 * MAX_TIMER_MS (10 digits): the route name and 34 characters. The ledger keeps every policy asked for, and sends it
 * back in answers and to every worker ('spent'): unbounded, a worker had it hold and pass on megabytes.
 */
export const MAX_LEASE_POLICY_LENGTH = MAX_ROUTE_NAME_LENGTH + 64;
/**
 * Longest `client` a lease ask may name. The longest key a limit counts by is a token's user (callerKey in
 * src/middleware/rate-limit.ts): `user:`, an identity provider's subjectPrefix (at most 64) and its sub (at most 255,
 * IDENTITY_CLAIM_LIMITS), 324 characters; client networks (at most 73: `unparsed:` and 64), consumers and account keys
 * are shorter. With room to spare: a real key refused here would leave its requests to the store-down policy.
 */
export const MAX_LEASE_CLIENT_LENGTH = 512;

/**
 * A worker's message as the primary may act on it, or undefined. A worker is another process: a malformed
 * message (a bug, a compromised worker) read as if well formed would throw in the primary's 'message' handler,
 * an uncaught exception that ends the primary and with it every worker. Unknown kinds are ignored too.
 */
export function toPrimaryMessage(raw: unknown): ToPrimary | undefined {
  if (typeof raw !== 'object' || raw === null) return undefined;
  const message = raw as Record<string, unknown>;
  const isId = (value: unknown) => Number.isSafeInteger(value);
  switch (message.gateway) {
    case 'hello':
      return { gateway: 'hello' };
    case 'draining':
      return { gateway: 'draining' };
    case 'listening':
      return typeof message.url === 'string' ? { gateway: 'listening', url: message.url } : undefined;
    case 'applied':
      return typeof message.ok === 'boolean' && typeof message.version === 'string' && typeof message.loadedAt === 'string'
        ? { gateway: 'applied', ok: message.ok, version: message.version, loadedAt: message.loadedAt, ...(typeof message.reason === 'string' ? { reason: message.reason.slice(0, 500) } : {}) }
        : undefined;
    case 'lease': {
      const { id, policy, client, max, windowMs } = message;
      if (!isId(id) || typeof policy !== 'string' || policy.length > MAX_LEASE_POLICY_LENGTH || typeof client !== 'string' || client.length > MAX_LEASE_CLIENT_LENGTH) return undefined;
      if (!Number.isSafeInteger(max) || (max as number) < 1) return undefined;
      // At most what a config's rateLimit.windowMs may be: a window that never ends keeps its policy in the ledger for good.
      if (!Number.isSafeInteger(windowMs) || (windowMs as number) < 1 || (windowMs as number) > MAX_TIMER_MS) return undefined;
      return { gateway: 'lease', id: id as number, policy, client, max: max as number, windowMs: windowMs as number };
    }
    case 'recalled': {
      const { id, returned } = message;
      // The ledger takes back no more than the worker held; a count that is no count at all is dropped here.
      if (!isId(id) || !Number.isSafeInteger(returned) || (returned as number) < 0) return undefined;
      return { gateway: 'recalled', id: id as number, returned: returned as number };
    }
    case 'reload':
    case 'status':
    case 'pong':
    case 'invalidated':
      return isId(message.id) ? { gateway: message.gateway, id: message.id as number } : undefined;
    case 'invalidate': {
      const { id, resources } = message;
      if (!isId(id)) return undefined;
      if (resources === 'all') return { gateway: 'invalidate', id: id as number, resources };
      if (!Array.isArray(resources) || resources.length === 0 || resources.length > MAX_QUEUED_INVALIDATIONS) return undefined;
      const stale: StaleResource[] = [];
      for (const entry of resources as unknown[]) {
        const { route, resource } = (typeof entry === 'object' && entry !== null ? entry : {}) as Record<string, unknown>;
        // A route name as config.ts allows it, bounded there: a worker must not have the primary pass megabytes on to every other one.
        if (typeof route !== 'string' || route.length > MAX_ROUTE_NAME_LENGTH || !ROUTE_NAME.test(route)) return undefined;
        if (typeof resource !== 'string' || !CACHE_RESOURCE.test(resource)) return undefined;
        stale.push({ route, resource });
      }
      return { gateway: 'invalidate', id: id as number, resources: stale };
    }
    default:
      return undefined;
  }
}

/**
 * The primary's listener for one worker's messages: each well-formed one to `act`, anything else but prom-client's
 * (src/metrics.ts answers those) to `ignored`. The checks are what keep a worker from ending the primary; what they
 * miss, a message that makes acting on it throw (a bug of the primary's), goes to `ignored` too, with the error: thrown
 * here, it was an uncaught exception that ended the primary and every worker (docs/architecture.md promises otherwise).
 */
export function workerMessageListener(act: (message: ToPrimary) => void, ignored: (raw: unknown, error?: unknown) => void): (raw: unknown) => void {
  return (raw) => {
    try {
      const message = toPrimaryMessage(raw);
      if (message) act(message);
      else if (!isPromClientMessage(raw)) ignored(raw);
    } catch (error) {
      ignored(raw, error);
    }
  };
}

/**
 * A serving worker that has not answered the primary's ping for this long is stuck (an endless loop, a hung
 * native call, SIGSTOP): it still gets its share of new connections, which hang, and every cluster scrape of
 * /metrics waits for it (then sums its last answer). It is killed and replaced like a worker that crashed.
 */
const WORKER_UNRESPONSIVE_MS = 10_000;
const WATCHDOG_INTERVAL_MS = 1000;

/** A worker that lived this long before it exited is replaced at once; quicker deaths double the wait. */
const STABLE_AFTER_MS = 10_000;
const FIRST_RESTART_DELAY_MS = 100;
const MAX_RESTART_DELAY_MS = 10_000;
/**
 * How often the primary logs that it ignored malformed messages, ms. Each is a bug (or a compromised worker), and
 * one refused cache invalidation leaves the other workers' copies stale; a worker repeating it must not flood the log.
 */
const MALFORMED_LOG_INTERVAL_MS = 10_000;
/**
 * The longest a gateway process's shutdown takes, ms, step by step: the drain of requests in flight, two settles
 * (otel/lifecycle.ts), the background fetches (src/main.ts), the telemetry flush (otel/telemetry.ts). 20 s; what the
 * primary, compose's stop_grace_period and the pods' terminationGracePeriodSeconds must leave room for.
 */
export const GATEWAY_SHUTDOWN_STEPS_MS = DEFAULT_DRAIN_TIMEOUT_MS + 2 * SETTLE_MS + BACKGROUND_FETCH_DRAIN_MS + SHUTDOWN_TIMEOUT_MS;

/**
 * Longest the workers may take to drain after SIGTERM, ms: their own steps and 2 s over. With the primary's own
 * flush (5 s) the cluster stops within the 30 s compose and Kubernetes give it. At 20 s (steps then of 22 s) the
 * primary's SIGKILL fell in a worker's flush.
 */
export const SHUTDOWN_BOUND_MS = GATEWAY_SHUTDOWN_STEPS_MS + 2_000;
/** Longest a reload waits for every worker to report the new version. */
const APPLY_TIMEOUT_MS = 10_000;

/** The wait before replacing a worker that died after `consecutiveQuickExits` quick deaths in a row (1, 2, ...). */
export function restartDelayMs(consecutiveQuickExits: number): number {
  return Math.min(MAX_RESTART_DELAY_MS, FIRST_RESTART_DELAY_MS * 2 ** Math.max(0, consecutiveQuickExits - 1));
}

export interface PrimaryOptions {
  initial: ActiveConfig;
  count: number;
  logger: Logger;
  /** Reads and validates the config file and environment again (throws ConfigError). */
  load: () => GatewayConfig;
  /** The file's keys the environment overrides (envShadowedKeys); default none. */
  shadowedByEnv?: () => string[];
}

/** What a worker last reported of the configs sent to it: the one it runs, and the last one it could not build. */
export interface ApplyReport {
  version: string | null;
  loadedAt?: string;
  /** Which config it could not build and why (it kept its previous one). */
  applyFailed?: { version: string; loadedAt: string; reason: string };
}

/**
 * Where a reload to `target` stands across the live workers' reports: every one runs it, one could not build it, or
 * still waiting. Only a failure to build `target` itself counts: a worker that answers an earlier reload after that
 * one timed out (its event loop was busy) reports a config no one waits for any more, and must not fail this one.
 * No live worker (all crashed, waiting to be replaced) is still waiting: no one has built it, and counted applied it
 * became the config every replacement started with, one they could not build crash-looping every worker.
 */
export function applyOutcome(
  reports: readonly ApplyReport[],
  target: { version: string; loadedAt: string },
): { applied: true } | { applied: false; failed: number; reason: string } | undefined {
  const failed = reports.findIndex((report) => report.applyFailed?.version === target.version && report.applyFailed.loadedAt === target.loadedAt);
  if (failed !== -1) return { applied: false, failed, reason: reports[failed]!.applyFailed!.reason };
  if (reports.length > 0 && reports.every((report) => report.version === target.version && report.loadedAt === target.loadedAt)) return { applied: true };
  return undefined;
}

interface Slot extends ApplyReport {
  worker?: Worker;
  startedAt: number;
  quickExits: number;
  /** When it last showed its event loop turns (listening, or a pong), ms since the epoch. */
  aliveAt?: number;
  /** When a worker still not listening is taken for stuck (`server.workerStartTimeoutMs` after its fork), ms since the epoch. */
  startDeadline?: number;
  timer?: NodeJS.Timeout;
}

/** Runs the cluster primary until SIGTERM/SIGINT; then exits 0 once every worker drained. */
export function runPrimary(options: PrimaryOptions): void {
  const { logger, count } = options;
  /** The config every worker runs, or starts with: a reload's becomes it once all of them built it. */
  let active = options.initial;
  /**
   * A reload's config while the workers build it. A worker saying hello meanwhile starts with `active` and is sent
   * this one after, as a reload it may refuse: started with it, one it could not build ended the worker.
   */
  let reloading: ActiveConfig | undefined;
  let stopping = false;
  let announced = false;
  // Reloads wait for it: a worker that says hello is handed the config being reloaded, not yet confirmed by any, and
  // one a worker cannot build then ended a starting worker, which stopped the cluster (exit 1). Once every worker
  // serves, such a config is refused and rolled back as on any reload.
  let markStarted!: () => void;
  const started = new Promise<void>((resolve) => (markStarted = resolve));
  const slots: Slot[] = Array.from({ length: count }, () => ({ startedAt: 0, quickExits: 0, version: null }));
  const leases = createLeaseLedger({
    maxTrackedClients: active.config.rateLimit.maxTrackedClients,
    workers: count,
    send: (id, message) => {
      const worker = cluster.workers?.[id];
      if (worker) send(worker, message);
    },
    broadcast: (message) => {
      for (const worker of Object.values(cluster.workers ?? {})) if (worker) send(worker, message);
    },
  });
  const listening = new Set<number>();
  /** Listening workers that drain (told to stop, or stopping on their own) until they exit: they still answer scrapes, but serve no more. */
  const draining = new Set<number>();
  // Scraped with the workers' sum on METRICS_PORT, and pushed over OTLP as each worker pushes its own registry.
  // Made only for the scrape, a cluster that exported over OTLP alone reported no worker restart and no reload.
  const primaryMetrics =
    active.config.metrics.port === undefined && !metricExportEnabled() ? undefined : createPrimaryMetrics(count, () => listening.size - draining.size);
  if (primaryMetrics) exportPromClientRegistry(primaryMetrics.registry, { startTimeMs: primaryMetrics.startedAtMs, names: METRIC_OTLP, attributes: METRIC_LABEL_OTLP });
  /** Workers that said hello: their message handler is in place, so they confirm what is relayed to them. */
  const linked = new Set<number>();
  const invalidations = createInvalidationRelay({
    send: (id, message) => {
      const worker = cluster.workers?.[id];
      if (worker) send(worker, message);
    },
  });
  let url = '';
  let reloads: Promise<unknown> = Promise.resolve();
  const applyWaiters = new Set<() => void>();
  let closeScrape = (): Promise<void> => Promise.resolve();
  // With `tls`, read here once for every worker (a bad pair stops startup, as in a single process).
  const tls = active.config.tls;
  let certificates = tls && readCertificatePems(tls);

  const statuses = (): WorkerConfigStatus[] =>
    slots.flatMap((slot) => (slot.worker ? [{ id: slot.worker.id, pid: slot.worker.process.pid ?? 0, version: slot.version, ...(slot.loadedAt ? { loadedAt: slot.loadedAt } : {}) }] : []));
  const send = (worker: Worker, message: ToWorker) => {
    if (worker.isConnected()) worker.send(message);
  };
  /** Reports of messages the primary did not act on, each kind at most every MALFORMED_LOG_INTERVAL_MS, counting the rest. */
  const reportIgnored = (say: (fields: Record<string, unknown>) => void) => {
    const mayLog = atMostEvery(MALFORMED_LOG_INTERVAL_MS);
    let sinceLog = 0;
    return (worker: Worker, raw: unknown, extra: Record<string, unknown> = {}) => {
      sinceLog++;
      if (!mayLog()) return;
      const kind = (raw as { gateway?: unknown } | null)?.gateway;
      say({ worker: worker.id, kind: typeof kind === 'string' ? kind.slice(0, 32) : typeof kind, ignored: sinceLog, ...extra });
      sinceLog = 0;
    };
  };
  const ignoredMalformed = reportIgnored((fields) => logger.warn('ignored a malformed message from a worker', fields));
  // A bug of the primary's: reported on its own, not lost among a worker's malformed messages.
  const failedActing = reportIgnored((fields) => logger.error('could not act on a message from a worker; ignored it', fields));

  function fork(index: number): void {
    const slot = slots[index]!;
    slot.timer = undefined;
    const worker = cluster.fork();
    const startedAt = Date.now();
    Object.assign(slot, { worker, startedAt, startDeadline: startedAt + active.config.server.workerStartTimeoutMs, version: null, loadedAt: undefined, applyFailed: undefined, aliveAt: undefined });
    worker.on(
      'message',
      workerMessageListener(
        (message) => onMessage(slot, worker, message),
        (raw, error) => (error === undefined ? ignoredMalformed(worker, raw) : failedActing(worker, raw, { error: error instanceof Error ? error.message : typeof error })),
      ),
    );
    // A message to a worker that is just exiting fails here; its exit is handled below. Unheard, it would end the primary.
    worker.on('error', (error: Error) => logger.warn('could not message worker', { worker: worker.id, error: error.message }));
    worker.once('exit', (code, signal) => {
      listening.delete(worker.id);
      draining.delete(worker.id);
      linked.delete(worker.id);
      leases.workerGone(worker.id);
      invalidations.workerGone(worker.id);
      if (slot.worker === worker) slot.worker = undefined;
      for (const wake of applyWaiters) wake();
      if (stopping) return;
      // Killed by a stop signal before its modules held them (Node's own start-up): the Ctrl-C to the process group, or
      // the orchestrator, reached it before this process handled its own copy. A stop asked for, not a failed start:
      // taken as one, the cluster exited 1 (seen once in CI, under load, on the SIGINT-while-loading test).
      if (!announced && (signal === 'SIGINT' || signal === 'SIGTERM')) return stop(signal);
      if (!announced) {
        // Not a crash to ride out: the gateway never started (a taken port, an unreadable file). Like a single
        // process, it stops with an error rather than retrying forever.
        logger.error('worker exited before the gateway started; stopping', { worker: worker.id, code, signal });
        return stop('startup-failed', 1);
      }
      primaryMetrics?.workerRestarts.inc();
      slot.quickExits = Date.now() - slot.startedAt < STABLE_AFTER_MS ? slot.quickExits + 1 : 1;
      const delayMs = restartDelayMs(slot.quickExits);
      logger.warn('worker exited; replacing it', { worker: worker.id, pid: worker.process.pid, code, signal, delayMs });
      slot.timer = setTimeout(() => fork(index), delayMs);
    });
  }

  function onMessage(slot: Slot, worker: Worker, message: ToPrimary): void {
    switch (message.gateway) {
      case 'hello':
        linked.add(worker.id);
        // Stopping: a worker forked just before may have missed the shutdown message while it started.
        if (stopping) return send(worker, { gateway: 'shutdown' });
        send(worker, { gateway: 'apply', active, certificates });
        if (reloading) send(worker, { gateway: 'apply', active: reloading });
        return;
      case 'applied':
        if (message.ok) Object.assign(slot, { version: message.version, loadedAt: message.loadedAt, applyFailed: undefined });
        else slot.applyFailed = { version: message.version, loadedAt: message.loadedAt, reason: message.reason ?? 'it could not build it (no reason given)' };
        for (const wake of applyWaiters) wake();
        return;
      case 'listening':
        slot.aliveAt = Date.now();
        listening.add(worker.id);
        url ||= message.url;
        if (!announced && listening.size === count) {
          announced = true;
          markStarted();
          logger.info('gateway listening', { url, workers: count, version: active.version, rateLimitStore: active.config.rateLimit.redisUrl ? 'redis' : 'primary' });
        } else if (announced) {
          logger.info('worker replaced and serving', { worker: worker.id, pid: worker.process.pid });
        }
        return;
      case 'lease':
        return leases.ask(worker.id, message);
      case 'recalled':
        return leases.recalled(worker.id, message.id, message.returned);
      case 'status':
        return send(worker, { gateway: 'workers', id: message.id, workers: statuses(), pendingRestart: active.pendingRestart });
      case 'pong':
        slot.aliveAt = Date.now();
        return;
      case 'draining':
        if (listening.has(worker.id)) draining.add(worker.id);
        return;
      case 'reload':
        void reloadAll().then((answer) => send(worker, { gateway: 'reloaded', id: message.id, answer }));
        return;
      case 'invalidate':
        // Only workers without Redis send it; the sender drops its own copies itself.
        return invalidations.relay(worker.id, message, [...linked].filter((id) => id !== worker.id));
      case 'invalidated':
        return invalidations.confirmed(worker.id, message.id);
    }
  }

  /**
   * Resolves once every live worker runs `applied` (undefined), or with why not: one could not build it, or time ran
   * out. Known by its version and load time: a reload that changed only the secrets keeps the version (sameSecrets).
   */
  function allApplied(applied: ActiveConfig): Promise<string | undefined> {
    const { version } = applied;
    return new Promise((resolve) => {
      const live = () => slots.filter((slot) => slot.worker);
      const check = () => {
        const workers = live();
        const outcome = applyOutcome(workers, applied);
        if (outcome?.applied === false) return finish(`worker ${workers[outcome.failed]!.worker!.id} could not build version ${version}: ${outcome.reason}`);
        if (outcome?.applied) return finish(undefined);
      };
      const timer = setTimeout(
        () => finish(live().length === 0 ? `no worker was running to apply version ${version} within ${APPLY_TIMEOUT_MS} ms (all exited, being replaced)` : `not every worker could apply version ${version} within ${APPLY_TIMEOUT_MS} ms`),
        APPLY_TIMEOUT_MS,
      );
      const finish = (why: string | undefined) => {
        clearTimeout(timer);
        applyWaiters.delete(check);
        resolve(why);
      };
      applyWaiters.add(check);
      check();
    });
  }

  /** One reload at a time: read and validate once, send to every worker, answer when all run it. */
  function reloadAll(): Promise<ReloadAnswer> {
    const next = reloads.then(async (): Promise<ReloadAnswer> => {
      await started;
      const answer = await reloadOnce();
      primaryMetrics?.reloads.reloaded(answer.ok);
      return answer;
    });
    reloads = next.catch(() => undefined);
    return next;
  }

  /** Reads and validates the config once, sends it to every worker, and answers once all run it (or why not). */
  async function reloadOnce(): Promise<ReloadAnswer> {
    const check = checkReload(active, options.load, logger, options.shadowedByEnv);
    if (!check.ok) return { ok: false, reason: check.reason };
    const previous = active;
    if (check.changed) {
      // To the workers that said hello only: a message to one still starting is lost, or is the first config it has,
      // which it cannot refuse (and without the TLS pair); its hello gets it after the running one.
      const linkedWorkers = () => slots.flatMap((slot) => (slot.worker && linked.has(slot.worker.id) ? [slot.worker] : []));
      reloading = check.next;
      for (const worker of linkedWorkers()) send(worker, { gateway: 'apply', active: reloading });
      const notApplied = await allApplied(reloading);
      reloading = undefined;
      if (notApplied !== undefined) {
        for (const worker of linkedWorkers()) send(worker, { gateway: 'apply', active: previous });
        // Said restored once every worker says so (it builds from the version's own proto sources, not the disk).
        const notRestored = await allApplied(previous);
        const reason = notRestored === undefined ? `${notApplied}; version ${previous.version} restored` : `${notApplied}; restoring version ${previous.version} failed too: ${notRestored}`;
        logger.error('config reload failed in the workers', { reason });
        return { ok: false, reason };
      }
    }
    active = check.next;
    if (check.changed) {
      logger.info('config reloaded', { version: active.version, previousVersion: previous.version, workers: statuses() });
      // What start-up warns of, a reload may bring about (trustProxy on without trustedProxies, allowedHosts dropped).
      startupWarnings(active.config, logger);
    }
    return { ok: true, status: check.changed ? 'reloaded' : 'unchanged', version: active.version, loadedAt: active.loadedAt, pendingRestart: active.pendingRestart, shadowedByEnv: check.shadowedByEnv, workers: statuses() };
  }

  function stop(cause: NodeJS.Signals | 'startup-failed', exitCode = 0): void {
    if (stopping) return;
    stopping = true;
    // Without Redis: how often each worker (by id) asked for rate-limit tokens, and recall rounds; with leases,
    // far fewer asks than limited requests.
    const { asks: rateLimitAsks, recalls: rateLimitRecalls } = leases.stats();
    const leasing = active.config.rateLimit.redisUrl ? {} : { rateLimitAsks, rateLimitRecalls };
    logger.info('gateway stopping', { ...(cause === 'startup-failed' ? { reason: 'a worker failed to start' } : { signal: cause }), workers: statuses().length, ...leasing });
    for (const slot of slots) clearTimeout(slot.timer);
    const exits = slots.flatMap((slot) => {
      const worker = slot.worker;
      if (!worker) return [];
      const serving = listening.has(worker.id);
      if (serving) draining.add(worker.id);
      return [
        new Promise<boolean>((resolve) => {
          const killer = setTimeout(() => worker.process.kill('SIGKILL'), SHUTDOWN_BOUND_MS);
          worker.once('exit', (code, signal) => {
            clearTimeout(killer);
            // Ctrl-C reaches the whole process group. A worker forked a moment before dies by it while Node itself
            // starts, before any code of the gateway's can hold it (src/stop-signals-held.ts): it served nothing and
            // had nothing to finish, so it stopped as cleanly as one told to. Counted unclean, the cluster exited 1.
            resolve(code === 0 || (!serving && signal === cause));
          });
          send(worker, { gateway: 'shutdown' });
        }),
      ];
    });
    void Promise.all(exits)
      .then(async (clean) => {
        await closeScrape();
        await shutdownTelemetry();
        process.exit(clean.every(Boolean) ? exitCode : 1);
      })
      .catch(() => process.exit(1));
  }

  // The watchdog: every serving worker is pinged; one silent for WORKER_UNRESPONSIVE_MS is killed (its exit
  // handler above replaces it). One still starting is not pinged (it has no handler yet) but bounded by
  // `server.workerStartTimeoutMs`: stuck before it listened (a synchronous loop, a hung native call), its slot never
  // served again, and among the first workers the gateway neither served nor stopped. That bound holds while
  // stopping too: such a worker cannot take the shutdown message, and waiting for its drain took SHUTDOWN_BOUND_MS.
  let pings = 0;
  let lastRound = Date.now();
  const watchdog = setInterval(() => {
    const now = Date.now();
    // The primary itself was not running (a paused container, a suspended VM, SIGSTOP): its workers' silence says
    // nothing about them. Counting it, one pause killed every healthy worker at once.
    const pausedMs = now - lastRound;
    lastRound = now;
    if (pausedMs > WATCHDOG_INTERVAL_MS * 3) {
      for (const slot of slots) {
        if (slot.aliveAt !== undefined) slot.aliveAt = now;
        if (slot.startDeadline !== undefined) slot.startDeadline += pausedMs;
      }
      if (!stopping) logger.warn('gateway primary was not running; its workers\' silence meanwhile is not counted', { pausedMs });
      return;
    }
    for (const slot of slots) {
      const worker = slot.worker;
      if (!worker) continue;
      if (!listening.has(worker.id)) {
        if (slot.startDeadline === undefined || now <= slot.startDeadline) continue;
        logger.error('worker did not start listening in time; killing it', { worker: worker.id, pid: worker.process.pid, workerStartTimeoutMs: active.config.server.workerStartTimeoutMs, waitedMs: now - slot.startedAt });
        slot.startDeadline = undefined;
        worker.process.kill('SIGKILL');
        continue;
      }
      if (stopping || slot.aliveAt === undefined) continue;
      if (now - slot.aliveAt > WORKER_UNRESPONSIVE_MS) {
        logger.error('worker not responding; replacing it', { worker: worker.id, pid: worker.process.pid, silentMs: now - slot.aliveAt });
        slot.aliveAt = undefined;
        worker.process.kill('SIGKILL');
        continue;
      }
      send(worker, { gateway: 'ping', id: ++pings });
    }
  }, WATCHDOG_INTERVAL_MS);
  watchdog.unref();

  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => {
    // What else a single process does on SIGHUP (re-read TLS certificates) each worker does too, with the pair
    // read here: a pair that does not do is refused once, and replacements start with the one in use.
    const reread = tls && readRotatedCertificates(tls, logger);
    if (reread) certificates = reread;
    for (const slot of slots) if (slot.worker) send(slot.worker, { gateway: 'hangup', certificates: reread });
    void reloadAll();
  });
  logger.info('gateway primary started', { workers: count, version: active.version, pid: process.pid });
  // The scrape endpoint is the primary's: one answer for all workers (src/metrics.ts listenClusterMetrics).
  const servingWorkers = () => slots.flatMap((slot) => (slot.worker && listening.has(slot.worker.id) ? [slot.worker] : []));
  const { metrics, server } = active.config;
  const scrape =
    metrics.port === undefined
      ? Promise.resolve(undefined)
      : listenClusterMetrics({ port: metrics.port, host: metrics.host, timeouts: clientTimeouts(server), sendTimeoutMs: server.sendTimeoutMs, logger, servingWorkers, primary: primaryMetrics });
  scrape.then(
    (listener) => {
      if (listener) logger.info('metrics listener started', { url: listener.url, endpoints: ['/metrics'], workers: count });
      closeScrape = () => listener?.close() ?? Promise.resolve();
      for (let index = 0; index < count; index++) fork(index);
    },
    (error: unknown) => {
      logger.error('metrics listener could not start; stopping', { error: error instanceof Error ? error.message : String(error) });
      process.exit(1);
    },
  );
}
