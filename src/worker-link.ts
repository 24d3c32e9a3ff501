import cluster from 'node:cluster';
import type { ConfigControl, ConfigStatus } from './admin';
import { createInvalidationQueue, type StaleResources } from './cache-invalidations';
import { deepFreeze } from './config';
import type { ActiveConfig } from './config-reload';
import { createLeaseTable, type LeaseTable, type Leased } from './rate-limit-leases';
import type { PrimaryStoreClient } from './rate-limit-store';
import type { PeerInvalidations } from './response-store';
import type { CertificatePems } from './tls';
import type { ToPrimary, ToWorker } from './workers';

/** A worker's side of the primary's services. */
export interface WorkerLink {
  /** This worker's cluster id (1, 2, ...). */
  readonly id: number;
  /** The config the primary sent first. */
  readonly initial: ActiveConfig;
  /**
   * With `tls`: the certificate and key the primary holds (src/tls.ts CertificatePems), the latest it sent: a
   * SIGHUP that arrives while this worker starts, before it serves, is not lost.
   */
  readonly certificates: CertificatePems | undefined;
  /**
   * Spends the rate-limit tokens the primary leased to this worker, and asks it for more when they are used up;
   * an ask rejects after `timeoutMs` (the limiter's store-down policy then decides).
   */
  primaryStore(timeoutMs: number): PrimaryStoreClient;
  control(active: () => ActiveConfig): ConfigControl;
  /** The other workers' memory response caches, reached through the primary (without Redis each worker has one). */
  readonly cachePeers: PeerInvalidations;
  /** `apply` is called with each config the primary sends later (a reload); it answers whether the swap worked. */
  /** `apply` returns why a config could not be built, or undefined once it runs. */
  serve(apply: (active: ActiveConfig) => string | undefined, url: string, close: () => Promise<void>): void;
  /**
   * Runs `handler` whenever the primary got SIGHUP (a worker is not sent signals itself), with the certificates
   * it read again, or none when it could not (the ones in use stay).
   */
  onHangup(handler: (certificates: CertificatePems | undefined) => void): void;
  /** Tells the primary this worker drains (it no longer counts in `gateway_workers_serving`). */
  draining(): void;
}

/**
 * Longest a worker's `POST /admin/reload` waits for the primary's answer, ms: a worker that never starts held every
 * asking request (and its pending entry) for good, the primary waiting for every worker's first start before the
 * first reload. The primary runs reloads one at a time, each within its workers' 10 s to apply and a rollback, so an
 * ask behind several others can time out (a 500) while its reload is still applied later: GET /admin/config says
 * which version runs.
 */
const RELOAD_ANSWER_TIMEOUT_MS = 60_000;

/** Connects a worker to its primary: waits for the config, then answers reloads and shutdown from it. */
export function connectWorker(): Promise<WorkerLink> {
  const id = cluster.worker!.id;
  let nextId = 1;
  const pending = new Map<number, (message: ToWorker) => void>();
  let onApply: ((active: ActiveConfig) => void) | undefined;
  // Before it serves, a worker has nothing in flight to finish.
  let onShutdown = (): void => process.exit(0);
  let queued: ActiveConfig | undefined;
  const hangupHandlers: ((certificates: CertificatePems | undefined) => void)[] = [];
  let certificates: CertificatePems | undefined;
  let leases: LeaseTable | undefined;
  let dropCachedCopies: ((resources: StaleResources) => void) | undefined;
  // Without the primary a worker ends (Node's cluster exits it on disconnect); until then nothing is sent.
  const send = (message: ToPrimary) => process.connected && process.send!(message);
  const invalidations = createInvalidationQueue({ send });
  const ask = <T extends ToWorker>(build: (id: number) => ToPrimary, timeoutMs?: number): Promise<T> =>
    new Promise((resolve, reject) => {
      const requestId = nextId++;
      const timer = timeoutMs === undefined ? undefined : setTimeout(() => pending.delete(requestId) && reject(new Error(`the cluster primary did not answer within ${timeoutMs} ms`)), timeoutMs);
      pending.set(requestId, (message) => {
        clearTimeout(timer);
        resolve(message as T);
      });
      if (!process.connected) {
        pending.delete(requestId);
        clearTimeout(timer);
        return reject(new Error('the cluster primary is gone'));
      }
      send(build(requestId));
    });

  const answered = (message: Extract<ToWorker, { id: number; gateway: 'leased' | 'reloaded' | 'workers' }>) => {
    pending.get(message.id)?.(message);
    pending.delete(message.id);
  };

  // A terminal hangup reaches the whole process group; what SIGHUP does the primary decides (and relays).
  process.on('SIGHUP', () => undefined);
  return new Promise((resolve) => {
    process.on('message', (message: ToWorker) => {
      switch (message.gateway) {
        case 'apply': {
          const active = { ...message.active, config: deepFreeze(message.active.config) };
          if (onApply) return onApply(active);
          // A reload while this worker starts: applied once it serves.
          onApply = (later) => (queued = later);
          certificates = message.certificates;
          return resolve(link(active));
        }
        case 'shutdown':
          return onShutdown();
        case 'hangup':
          if (message.certificates) certificates = message.certificates;
          return hangupHandlers.forEach((handler) => handler(message.certificates));
        case 'ping':
          return send({ gateway: 'pong', id: message.id });
        case 'invalidate':
          // Confirmed even with no cache (starting, or a config without cached routes): the writer waits for it.
          dropCachedCopies?.(message.resources);
          return send({ gateway: 'invalidated', id: message.id });
        case 'invalidated':
          return invalidations.confirmed(message.id);
        case 'recall':
          return send({ gateway: 'recalled', id: message.id, returned: leases?.recall(message) ?? 0 });
        case 'spent':
          return leases?.spent(message);
        case 'leased':
          // Here, not where the asking request resumes: a recall in the next message must find these tokens.
          leases?.keep(message, pending.has(message.id));
          return answered(message);
        default:
          return answered(message);
      }
    });
    send({ gateway: 'hello' });
  });

  function link(initial: ActiveConfig): WorkerLink {
    // Bounded like the primary's ledger, by the first config's limit (the primary keeps that one too).
    const table = createLeaseTable({ maxTrackedClients: initial.config.rateLimit.maxTrackedClients });
    leases = table;
    return {
      id,
      initial,
      get certificates() {
        return certificates;
      },
      primaryStore: (timeoutMs) => ({
        take: async (policy, client, max, windowMs) =>
          table.spend(policy, client, max) ?? (await ask<Leased>((requestId) => ({ gateway: 'lease', id: requestId, policy, client, max, windowMs }), timeoutMs)).window,
        exhausted: (policy, client, max) => table.exhausted(policy, client, max),
        held: (policy, client, max) => table.held(policy, client, max),
      }),
      control: (active) => ({
        async status(): Promise<ConfigStatus> {
          const { workers, pendingRestart } = await ask<Extract<ToWorker, { gateway: 'workers' }>>((requestId) => ({ gateway: 'status', id: requestId }), 5_000);
          const { version, loadedAt } = active();
          return { version, loadedAt, pendingRestart, servedBy: { worker: id, pid: process.pid }, workers };
        },
        async reload() {
          return (await ask<Extract<ToWorker, { gateway: 'reloaded' }>>((requestId) => ({ gateway: 'reload', id: requestId }), RELOAD_ANSWER_TIMEOUT_MS)).answer;
        },
      }),
      cachePeers: {
        publish: (route, resource) => invalidations.publish(route, resource),
        subscribe: (drop) => void (dropCachedCopies = drop),
      },
      onHangup: (handler) => void hangupHandlers.push(handler),
      draining: () => void send({ gateway: 'draining' }),
      serve(apply, url, close) {
        onApply = (active) => {
          const unbuilt = apply(active);
          send({ gateway: 'applied', ok: unbuilt === undefined, version: active.version, loadedAt: active.loadedAt, ...(unbuilt === undefined ? {} : { reason: unbuilt }) });
        };
        onShutdown = () => void close().then(() => process.exit(0), () => process.exit(1));
        send({ gateway: 'applied', ok: true, version: initial.version, loadedAt: initial.loadedAt });
        send({ gateway: 'listening', url });
        if (queued) onApply(queued);
      },
    };
  }
}
