import type { Logger } from '../otel/logger';
import { redactUrl } from '../otel/redact-url';
import type { GatewayConfig } from './config';

/** Logged by the gateway at start (by the primary of a cluster), and again after each reload that changed the config. */
export function startupWarnings(config: GatewayConfig, logger: Logger): void {
  if (config.auth.secretSource === 'generated') {
    logger.warn('JWT_SECRET is not set: tokens are signed with a random secret of this process; they stop working when it restarts and are not accepted by other replicas. Set JWT_SECRET (32+ characters) to keep them.', { environment: config.environment });
  }
  // Production refuses to start without it (config.ts); elsewhere (compose runs in development) only the services said
  // so, each in its own log, and the gateway's said nothing.
  if (config.proxy.signingKey === undefined) {
    logger.warn('GATEWAY_SIGNING_KEY is not set: requests to the services carry no signature, and a service without a key of its own believes identity headers from anyone who reaches it. Set it (32+ characters) and give each service its own key (npm run service-key).', { environment: config.environment });
  }
  // Refused in production (config.ts); elsewhere the keys every token is checked with can be replaced on the way.
  if (config.auth.jwks !== undefined && URL.canParse(config.auth.jwks.url) && new URL(config.auth.jwks.url).protocol === 'http:') {
    logger.warn('auth.jwks.url is plain http: the keys every token is checked with can be replaced on the way, and with them any token (production refuses it).', { jwks_url: redactUrl(config.auth.jwks.url) });
  }
  if (config.environment === 'production' && config.allowedHosts === undefined) {
    logger.warn('allowedHosts is not set: any Host a client sends reaches the services as X-Forwarded-Host. Set ALLOWED_HOSTS to the names this gateway serves.');
  }
  if (config.trustProxy && config.trustedProxies === undefined) {
    logger.warn('trustProxy is on with no trustedProxies: every peer may set X-Forwarded-For, so a client that reaches this port directly chooses its own address (and rate-limit key). List your proxies in trustedProxies.');
  }
  if (config.admin.port !== undefined && !isLoopbackHost(config.admin.host)) {
    logger.warn('the internal listener is not on a loopback address: /ready details, /admin/config and POST /admin/reload answer anyone who reaches it, without authentication. Keep admin.host on 127.0.0.1 unless a network policy keeps everyone else out.', { admin_host: config.admin.host });
  }
}

/** `localhost`, 127.0.0.0/8 or ::1: the internal listener is reachable from this machine only. */
function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127(?:\.\d{1,3}){3}$/.test(host);
}
