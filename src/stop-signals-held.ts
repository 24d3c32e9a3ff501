/**
 * Holds SIGTERM and SIGINT from the moment the gateway's first module loads (every launch path preloads this before
 * the telemetry bootstrap, whose SDK takes 0.1-0.25 s to load; main.ts imports it first too, for a gateway started
 * without it) until runServer listens for them: `releaseStopSignals` stops holding and says the first one held, which main.ts
 * raises again once it serves, so runServer stops as on any other.
 *
 * In a container the gateway is PID 1, for which a signal nobody listens for is ignored: a pod deleted while it
 * started went on to serve until SIGKILL 30 s later (elsewhere it died at once, its telemetry unflushed). A cluster
 * worker holds them too, from before its modules are loaded: Ctrl-C reaches the whole process group, and a worker
 * still loading or waiting for its config died by it (held only once its config came, it had no listener before),
 * which its primary took for an unclean stop, and the cluster exited 1. Its primary's shutdown message, sent on
 * that same Ctrl-C, ends a worker that does not serve yet at once (src/worker-link.ts).
 */

/** The signals runServer stops on. */
const STOP_SIGNALS = ['SIGTERM', 'SIGINT'] as const;

let held: NodeJS.Signals | undefined;
const hold = (signal: NodeJS.Signals) => void (held ??= signal);
for (const signal of STOP_SIGNALS) process.on(signal, hold);
// SIGHUP too is caught from the first moment: what it does, main.ts and the primary decide once they listen (a
// reload, relayed to the workers), and one delivered before anything listened ended the process (exit 129) while
// its modules loaded. Delivered then, it is handed to their listeners after the load.
process.on('SIGHUP', () => undefined);

export function releaseStopSignals(): NodeJS.Signals | undefined {
  for (const signal of STOP_SIGNALS) process.off(signal, hold);
  return held;
}
