import type { ServerHttp2Stream } from 'node:http2';
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

/** What a listener asks as a client's connection and, over HTTP/2, each of its streams arrives (runServer). */
export interface ConnectionsPerClient {
  /** Whether the connection may stay (false: closed at accept). */
  admitConnection(socket: Socket): boolean;
  /** Whether the HTTP/2 stream is served (false: reset with REFUSED_STREAM). */
  admitStream(stream: ServerHttp2Stream): boolean;
}

/**
 * A client address's share of a listener (an IPv6 client's network, counted as the rate limits count it): at most
 * `maxPerClient` connections in this process, an HTTP/2 connection counting one and each stream open on it one
 * more (nginx's `limit_conn` counts HTTP/2 requests alike). `server.maxConnections` alone bounded everyone
 * together, so one machine took every slot: connections that never send a byte, reopened as the gateway closed
 * them (a head timeout later), kept every other client out at accept with next to no traffic. And the streams:
 * with a flow-control window of 0, every answer waits until `server.sendTimeoutMs` with its request (up to 16 KiB
 * of headers) and its stream's state, about 3 MiB per connection of 100 streams, which the rate limits never see
 * when the gateway answers itself (`/health`, a 429); 50 such connections took a gateway past the shipped pod's
 * 384 MiB. A trusted proxy's connections carry many clients and are not counted. Undefined when `maxPerClient` is 0.
 */
export function createConnectionsPerClient(options: ConnectionsPerClientOptions): ConnectionsPerClient | undefined {
  const { maxPerClient, logger } = options;
  if (maxPerClient === 0) return undefined;
  /** Connections and streams open by client key; a key leaves with its last one. */
  const open = new Map<string, number>();
  /** Each HTTP/2 session's client key, null when it is not counted (a trusted proxy), read at its first stream. */
  const sessionKeys = new WeakMap<object, string | null>();
  let loggedAt = -Infinity;
  let refusedSinceLog = 0;

  /** The client key of a peer, or null when the peer is not counted. */
  const keyOf = (peer: string | undefined): string | null => {
    if (peer === undefined) return null;
    const config = options.config();
    return isTrustedProxyPeer(config, peer) ? null : clientNetworkKey(peer, config.rateLimit.ipv6PrefixLength);
  };
  /** Counts one more for `key` until `closing` closes, or refuses it (false) at the bound. */
  const take = (key: string, peer: string | undefined, closing: Socket | ServerHttp2Stream): boolean => {
    const held = open.get(key) ?? 0;
    if (held >= maxPerClient) {
      refusedSinceLog++;
      const now = performance.now();
      if (now - loggedAt >= REFUSALS_LOG_INTERVAL_MS) {
        logger.warn('refused connections over the per-client bound', { remote_address: peer ?? null, limit: maxPerClient, refused: refusedSinceLog });
        loggedAt = now;
        refusedSinceLog = 0;
      }
      return false;
    }
    open.set(key, held + 1);
    closing.once('close', () => {
      const left = open.get(key)! - 1;
      if (left === 0) open.delete(key);
      else open.set(key, left);
    });
    return true;
  };

  return {
    admitConnection(socket) {
      const key = keyOf(socket.remoteAddress);
      return key === null || take(key, socket.remoteAddress, socket);
    },
    admitStream(stream) {
      const session = stream.session;
      // Its session gone already: nothing to count, the stream closes with it.
      if (!session) return true;
      let key = sessionKeys.get(session);
      if (key === undefined) sessionKeys.set(session, (key = keyOf(session.socket.remoteAddress)));
      return key === null || take(key, session.socket.remoteAddress, stream);
    },
  };
}
