import { HEADER } from '../../otel/wire-names';
import type { Caller } from '../../services/shared/service-app';

/** The demo accounts as the gateway vouches for them to a service. */
export const ALICE: Caller = { id: '1', role: 'admin', email: 'alice@example.com' };
export const BOB: Caller = { id: '2', role: 'user', email: 'bob@example.com' };

/** The identity headers the gateway injects after verifying a token. */
export function identityHeaders(caller: Caller): Record<string, string> {
  return { [HEADER.userId]: caller.id, [HEADER.userRole]: caller.role, [HEADER.userEmail]: caller.email };
}
