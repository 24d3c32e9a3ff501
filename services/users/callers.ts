import { SIGNATURE_AUDIENCE } from '../../otel/wire-names';
import type { CallerRules } from '../../src/gateway-signature';

/** The path of one user's record: what order-service asks for, and what its rule below lets it ask for. */
export function userRecordPath(userId: string): string {
  return `/users/${encodeURIComponent(userId)}`;
}

/**
 * The calls user-service takes from other services (src/gateway-signature.ts CallerRules). order-service reads the
 * record of the user its own call is signed for, to check that the account still exists: that alone. With
 * user-service's own key it could read the user list as an admin, anyone's record, and use the credential check.
 */
export const USER_SERVICE_CALLERS: CallerRules = {
  [SIGNATURE_AUDIENCE.orders]: ({ method, target }, [userId]) => method === 'GET' && userId !== '' && target === userRecordPath(userId),
};
