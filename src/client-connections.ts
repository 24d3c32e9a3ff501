import type { Socket } from 'node:net';
import type { Logger } from '../otel/logger';
import type { GatewayConfig } from './config';
import { clientNetworkKey } from './middleware/rate-limit';
import { isTrustedProxyPeer } from './middleware/trusted-proxies';

/** Least time between two log lines about refused connections, ms (a client refused at accept may retry at once). */
const REFUSALS_LOG_INTERVAL_MS = 10_000;

export interface ConnectionsPerClientOptions {
  /** Connections one client may hold open at once (`server.maxConnectionsPerClient`); 0 = no bound. */
  maxPerClient: number;
  /** The config in force (read at each accept: `trustedProxies` and `rateLimit.ipv6PrefixLength` reload). */
  config: () => Pick<GatewayConfig, 'trustProxy' | 'trustedProxies' | 'rateLimit'>;
  logger: Logger;
}

/**
 * The public listener's admission of connections (runServer `admitConnection`): a client address (an IPv6
 * client's network, counted as the rate limits count it) holds at most `maxPerClient` connections in this process.
 * `server.maxConnections` alone bounded everyone together, so one machine took every slot: connections that never
 * send a byte, reopened as the gateway closed them (a head timeout later), kept every other client out at accept
 * with next to no traffic. A trusted proxy's connections carry many clients and are not counted. Undefined when
 * `maxPerClient` is 0.
 */
export function createConnectionsPerClient(options: ConnectionsPerClientOptions): ((socket: Socket) => boolean) | undefined {
  const { maxPerClient, logger } = options;
  if (maxPerClient === 0) return undefined;
  /** Connections open by client key; a key leaves with its last connection. */
  const open = new Map<string, number>();
  let loggedAt = -Infinity;
  let refusedSinceLog = 0;
  return function admitConnection(socket) {
    const peer = socket.remoteAddress;
    // Gone before it was accepted: nothing to count, Node closes it.
    if (peer === undefined) return true;
    const config = options.config();
    if (isTrustedProxyPeer(config, peer)) return true;
    const key = clientNetworkKey(peer, config.rateLimit.ipv6PrefixLength);
    const held = open.get(key) ?? 0;
    if (held >= maxPerClient) {
      refusedSinceLog++;
      const now = performance.now();
      if (now - loggedAt >= REFUSALS_LOG_INTERVAL_MS) {
        logger.warn('closed connections over the per-client bound', { remote_address: peer, limit: maxPerClient, refused: refusedSinceLog });
        loggedAt = now;
        refusedSinceLog = 0;
      }
      return false;
    }
    open.set(key, held + 1);
    socket.once('close', () => {
      const left = open.get(key)! - 1;
      if (left === 0) open.delete(key);
      else open.set(key, left);
    });
    return true;
  };
}
