import { BoundedWindowStore, type WindowEntry } from './middleware/rate-limit';
import type { WindowState } from './rate-limit-store';

/**
 * Rate-limit windows of a cluster without Redis (store kind `primary`), counted in the primary and spent in the
 * workers. Asking the primary for every request cost a round trip of IPC (serialise, parse, answer, parse) that
 * made 2 workers spend ~1.2x the CPU per request of 1 process (issue 13). Instead the primary's ledger grants a
 * worker a *lease*: a block of one client's tokens of the current window, which the worker's lease table spends
 * without asking again until it is used up or the window ended.
 *
 * Exact both ways, in any interleaving:
 * - Never more than `max` per window: a token is admitted once, by the request that asked for it or by a worker
 *   that holds it; a recalled token was zeroed by its worker before the primary hands it out again. A worker
 *   spends a lease only until its `reset`, and the primary opens the next window only after it, so windows of a
 *   client do not overlap in time.
 * - Never fewer: when nothing of a window is left unleased but workers still hold unspent tokens of it, the
 *   primary recalls them (asks queue meanwhile) and denies only when none are left anywhere. A denial is therefore
 *   final for its window, and the worker that got it answers that client's next requests itself until `reset`.
 *   Tokens are lost only with a worker: one that dies takes its unspent lease with it (at most MAX_LEASE per
 *   client), and one that does not answer a recall within RECALL_TIMEOUT_MS loses what it held (it zeroes the
 *   tokens when it gets to the recall; its late answer is ignored). Either way that window then admits fewer
 *   than `max`, never more.
 *
 * Windows open at a client's first request after the previous one ended, as koa-ratelimit's memory driver opens
 * them, so a limit allows as many requests whichever store counts them. Both sides hold at most
 * `maxTrackedClients` windows per policy, as the memory store does: past that, a forgotten window starts afresh
 * in the primary (as in one process, more than `max` may then pass) and a forgotten lease's tokens are lost.
 */

/**
 * The clock windows are timed on, in ms: the host's monotonic clock (process.hrtime, CLOCK_MONOTONIC on Linux), which
 * every process of the cluster reads alike, so a window's end crosses between the primary and the workers as it is.
 * Not Date.now(): a wall clock stepped back an hour lengthened every window by an hour (a spent client refused all
 * that time), stepped forward it ended them all. Not performance.now(): it counts from each process's own start.
 */
export function leaseClockMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** A worker asks for a lease on `client`'s current window of `policy`; the asking request spends its first token. */
export interface LeaseAsk {
  gateway: 'lease';
  id: number;
  policy: string;
  client: string;
  max: number;
  windowMs: number;
}

/**
 * The primary's answer: `granted` tokens of the window ending at `window.reset` (leaseClockMs, in seconds). 0 is a denial,
 * which also means nothing of that window is left anywhere. `window.remaining` counts before the asking request:
 * what the primary has not leased plus this grant, never the unspent leases of other workers.
 */
export interface Leased {
  gateway: 'leased';
  id: number;
  policy: string;
  client: string;
  granted: number;
  window: WindowState;
}

/** The primary asks a worker to hand back its unspent tokens of the window of `client` ending at `reset`. */
export interface Recall {
  gateway: 'recall';
  id: number;
  policy: string;
  client: string;
  reset: number;
}

/**
 * The primary tells every worker that `client`'s window of `policy` ending at `reset` has nothing left: each
 * refuses the client's next requests itself, and can say so before a request costs anything (a credential check).
 */
export interface Spent {
  gateway: 'spent';
  policy: string;
  client: string;
  reset: number;
}

/** A worker's answer to recall `id`: it zeroed `returned` tokens. */
export interface Recalled {
  gateway: 'recalled';
  id: number;
  returned: number;
}

/** Most tokens one lease holds: a worker that dies loses at most this many of a client's window. */
export const MAX_LEASE = 1000;

/** Longest a recall waits for a worker's answer; below the 2 s a worker waits for the primary (src/main.ts). */
export const RECALL_TIMEOUT_MS = 1000;

/**
 * How many of `unleased` tokens one ask gets: a share that leaves room for every worker (so no worker sits on
 * what another needs), shrinking to 1 near the limit, where a lease is just the asking request's token.
 */
export function leaseSize(unleased: number, workers: number): number {
  return Math.min(unleased, MAX_LEASE, Math.max(1, Math.floor(unleased / (2 * workers))));
}

export interface LeaseLedgerOptions {
  /** Clients tracked per policy (`rateLimit.maxTrackedClients`); beyond it the least spent windows are forgotten first. */
  maxTrackedClients: number;
  /** Workers the tokens are shared by (the configured count; sizes leases). */
  workers: number;
  /** Delivers a message to the worker with this cluster id (dropped when it is gone). */
  send: (worker: number, message: Leased | Recall) => void;
  /** Delivers a message to every worker; without it, only the worker denied learns that a window is spent. */
  broadcast?: (message: Spent) => void;
  /** Clock in ms that the workers' lease tables read alike (window ends are sent as they are); default leaseClockMs. */
  now?: () => number;
  /** Runs `callback` after `ms`; returns what cancels it. Default setTimeout. */
  schedule?: (callback: () => void, ms: number) => () => void;
}

interface Ask {
  worker: number;
  ask: LeaseAsk;
}

/** One client's window in the primary. */
interface Ledger {
  reset: number;
  max: number;
  unleased: number;
  /** Per worker, the tokens leased to it beyond the asking requests' own since its last recall: what it may still hold. */
  held?: Map<number, number>;
  /** Set while a recall of this window is out; asks wait in it. */
  recalling?: RecallRound;
  /** Every worker was told the window is spent. */
  announced?: boolean;
}

interface RecallRound {
  ledger: Ledger;
  /** Workers yet to answer, with what each held when recalled: more than that is never taken back. */
  pending: Map<number, number>;
  waiting: Ask[];
  cancel: () => void;
}

/**
 * The primary's side: leases out, recalls and counts every client's windows, per policy (`name|max|windowMs`): a
 * reload that leaves a limit unchanged keeps its counts (and the workers their leases), a changed limit starts afresh.
 */
export function createLeaseLedger(options: LeaseLedgerOptions) {
  const now = options.now ?? leaseClockMs;
  const schedule =
    options.schedule ??
    ((callback, ms) => {
      const timer = setTimeout(callback, ms);
      return () => clearTimeout(timer);
    });
  // Tokens leased out are spent, or held by a worker that may spend them: a window with all of them out is the last
  // to forget (forgotten, its client's next ask opens a full one).
  const ledgers = createPolicyWindows<Ledger>(options.maxTrackedClients, now, (ledger) => ledger.max - ledger.unleased);
  const rounds = new Map<number, RecallRound>();
  let nextRecallId = 1;
  const asks = new Map<number, number>();
  let recalls = 0;

  function dispatch(pending: Ask): void {
    const { policy, client, max, windowMs } = pending.ask;
    const nowSeconds = now() / 1000;
    let ledger = ledgers.get(policy, client);
    if (ledger === undefined || ledger.reset < nowSeconds) {
      ledger = { reset: nowSeconds + windowMs / 1000, max, unleased: max };
      ledgers.set(policy, client, ledger);
    }
    if (ledger.recalling) return void ledger.recalling.waiting.push(pending);
    if (ledger.unleased > 0) return grant(ledger, pending);
    if (ledger.held?.size) return recall(ledger, pending);
    answer(ledger, pending, 0);
  }

  function grant(ledger: Ledger, { worker, ask }: Ask): void {
    const granted = leaseSize(ledger.unleased, options.workers);
    ledger.unleased -= granted;
    if (granted > 1) (ledger.held ??= new Map()).set(worker, (ledger.held.get(worker) ?? 0) + granted - 1);
    answer(ledger, { worker, ask }, granted);
  }

  function answer(ledger: Ledger, { worker, ask }: Ask, granted: number): void {
    const remaining = granted > 0 ? ledger.unleased + granted : 0;
    options.send(worker, { gateway: 'leased', id: ask.id, policy: ask.policy, client: ask.client, granted, window: { remaining, reset: ledger.reset, total: ledger.max } });
    // The last token went to this request (or none was left) and no worker holds any: the window is spent. Said
    // once, after the answer, so the asker keeps its token first.
    if (ledger.unleased === 0 && !ledger.held?.size && !ledger.announced && options.broadcast) {
      ledger.announced = true;
      options.broadcast({ gateway: 'spent', policy: ask.policy, client: ask.client, reset: ledger.reset });
    }
  }

  function recall(ledger: Ledger, first: Ask): void {
    const id = nextRecallId++;
    recalls++;
    const round: RecallRound = { ledger, pending: ledger.held!, waiting: [first], cancel: () => undefined };
    // No ask of this window is answered while the round is out, so nothing is leased to a worker between its
    // recall and its answer: once all answered, no worker holds any of the window.
    ledger.held = undefined;
    ledger.recalling = round;
    rounds.set(id, round);
    for (const worker of round.pending.keys()) options.send(worker, { gateway: 'recall', id, policy: first.ask.policy, client: first.ask.client, reset: ledger.reset });
    round.cancel = schedule(() => finish(id), RECALL_TIMEOUT_MS);
  }

  function finish(id: number): void {
    const round = rounds.get(id);
    if (!round) return;
    rounds.delete(id);
    round.cancel();
    round.ledger.recalling = undefined;
    // In order, each as if it arrived now: the window may have ended meanwhile, or need another recall.
    for (const waiting of round.waiting) dispatch(waiting);
  }

  return {
    /** A worker's ask; answered now, or after a recall. */
    ask(worker: number, ask: LeaseAsk): void {
      asks.set(worker, (asks.get(worker) ?? 0) + 1);
      dispatch({ worker, ask });
    },

    /** A worker's answer to a recall; late ones (the round timed out) and unasked ones are ignored. */
    recalled(worker: number, id: number, returned: number): void {
      const round = rounds.get(id);
      const held = round?.pending.get(worker);
      if (!round || held === undefined) return;
      round.pending.delete(worker);
      round.ledger.unleased += Math.min(Math.max(0, returned), held);
      if (round.pending.size === 0) finish(id);
    },

    /** A worker exited: its unspent tokens are gone with it (its windows admit that many fewer), and no recall waits for it. */
    workerGone(worker: number): void {
      for (const ledger of ledgers.values()) ledger.held?.delete(worker);
      for (const [id, round] of rounds) {
        // Its asks queued behind the round go too: dispatched when it ended, they leased tokens to the dead worker,
        // lost for the window, and the window's next recall waited RECALL_TIMEOUT_MS for an answer that never came.
        round.waiting = round.waiting.filter((waiting) => waiting.worker !== worker);
        if (round.pending.delete(worker) && round.pending.size === 0) finish(id);
      }
    },

    /** Asks handled per worker id and recall rounds started, since the start (logged when the gateway stops). */
    stats: () => ({ asks: Object.fromEntries(asks), recalls }),
  };
}

export type LeaseLedger = ReturnType<typeof createLeaseLedger>;

/** A worker's leased tokens of one client's window; `exhausted`: the primary denied, nothing is left until `reset`. */
interface Lease {
  reset: number;
  tokens: number;
  exhausted: boolean;
}

/** The worker's side: spends leased tokens locally, keeps what the primary's answers leave, hands tokens back on recall. */
export function createLeaseTable(options: { maxTrackedClients: number; /** Clock in ms, the one the primary's ledger reads (window ends come from it); default leaseClockMs. */ now?: () => number }) {
  const now = options.now ?? leaseClockMs;
  const leases = createPolicyWindows<Lease>(options.maxTrackedClients, now);
  return {
    /**
     * The window state for one more request of `client` when this worker can decide it alone: a token of a live
     * lease (`remaining`: this worker's unspent tokens, this one included; other workers' are not counted), or a
     * denial already known for this window. Undefined: ask the primary.
     */
    spend(policy: string, client: string, max: number): WindowState | undefined {
      const lease = leases.get(policy, client);
      if (lease === undefined || lease.reset < now() / 1000) return undefined;
      if (lease.tokens > 0) return { remaining: lease.tokens--, reset: lease.reset, total: max };
      return lease.exhausted ? { remaining: 0, reset: lease.reset, total: max } : undefined;
    },

    /**
     * Keeps what an answer leaves this worker. Called when the answer arrives, before anything else runs, so a
     * recall that follows it finds the tokens. `asked`: a request still waits for it and spends the first token;
     * otherwise (it gave up: store-down policy) all are kept.
     */
    keep(answer: Leased, asked: boolean): void {
      const { policy, client, granted, window } = answer;
      // A window that ended leaves nothing to spend. (So an answer never replaces a newer lease: the next window
      // opened only after this one ended.)
      if (window.reset < now() / 1000) return;
      const unspent = asked ? Math.max(0, granted - 1) : granted;
      if (granted > 0 && unspent === 0) return;
      let lease = leases.get(policy, client);
      if (lease?.reset !== window.reset) leases.set(policy, client, (lease = { reset: window.reset, tokens: 0, exhausted: false }));
      lease.tokens += unspent;
      if (granted === 0) lease.exhausted = true;
    },

    /** The window when this worker knows it has nothing left (a denial, or the primary said so); asks no one. */
    exhausted(policy: string, client: string, max: number): WindowState | undefined {
      const lease = leases.get(policy, client);
      if (lease === undefined || !lease.exhausted || lease.tokens > 0 || lease.reset < now() / 1000) return undefined;
      return { remaining: 0, reset: lease.reset, total: max };
    },

    /** This worker's live lease of `client`'s window, its unspent tokens as `remaining`; asks no one. */
    held(policy: string, client: string, max: number): WindowState | undefined {
      const lease = leases.get(policy, client);
      if (lease === undefined || lease.reset < now() / 1000) return undefined;
      return { remaining: lease.tokens, reset: lease.reset, total: max };
    },

    /** Keeps what the primary said: that window has nothing left anywhere. */
    spent(message: Spent): void {
      if (message.reset < now() / 1000) return;
      let lease = leases.get(message.policy, message.client);
      if (lease?.reset !== message.reset) leases.set(message.policy, message.client, (lease = { reset: message.reset, tokens: 0, exhausted: true }));
      lease.exhausted = true;
    },

    /** Zeroes this worker's unspent tokens of the recalled window and says how many there were. */
    recall(message: Recall): number {
      const lease = leases.get(message.policy, message.client);
      if (lease === undefined || lease.reset !== message.reset) return 0;
      const returned = lease.tokens;
      lease.tokens = 0;
      return returned;
    },
  };
}

export type LeaseTable = ReturnType<typeof createLeaseTable>;

/** Policies kept before those without a live window are dropped (earlier reloads' limits). */
const MAX_POLICIES = 256;

/**
 * Per-policy windows, each policy holding at most `maxTrackedClients` (BoundedWindowStore: expired first, then the
 * least spent by `spentOf`, the oldest among equals).
 */
function createPolicyWindows<T extends WindowEntry>(maxTrackedClients: number, now: () => number, spentOf?: (window: T) => number) {
  const policies = new Map<string, BoundedWindowStore<T>>();
  return {
    get: (policy: string, client: string) => policies.get(policy)?.get(client),
    set(policy: string, client: string, entry: T): void {
      let windows = policies.get(policy);
      if (!windows) {
        if (policies.size >= MAX_POLICIES) {
          const nowSeconds = now() / 1000;
          for (const [name, each] of policies) if (!hasLive(each, nowSeconds)) policies.delete(name);
        }
        policies.set(policy, (windows = new BoundedWindowStore(maxTrackedClients, () => now() / 1000, spentOf)));
      }
      windows.set(client, entry);
    },
    /** Every window of every policy. */
    *values(): IterableIterator<T> {
      for (const windows of policies.values()) yield* windows.values();
    },
  };
}

function hasLive(windows: Map<string, WindowEntry>, nowSeconds: number): boolean {
  for (const window of windows.values()) if (window.reset >= nowSeconds) return true;
  return false;
}
