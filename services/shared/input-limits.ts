import { z } from 'zod';
import { IDENTITY_VALUE } from '../../otel/wire-names';

/**
 * The bounds every string a service takes in is held to (body fields, path variables, gRPC fields), so that no
 * input is kept or echoed at whatever size a caller sent: a 100 kB `userId` was stored in memory as it came.
 */

/** Longest id of a record a service makes (an order's UUID, a user's sequence number), characters. */
export const RECORD_ID_MAX_LENGTH = 128;

/** Ids the services make are letters, digits and `.`, `_`, `:`, `~`, `-`: nothing that needs escaping anywhere. */
const RECORD_ID_CHARACTERS = /^[A-Za-z0-9._:~-]+$/;

/** An id of a record a service makes: 1 to 128 characters of RECORD_ID_CHARACTERS. */
export const recordId = z
  .string()
  .min(1, 'must not be empty')
  .max(RECORD_ID_MAX_LENGTH, `must be at most ${RECORD_ID_MAX_LENGTH} characters`)
  .regex(RECORD_ID_CHARACTERS, 'must be letters, digits, ".", "_", ":", "~" or "-"');

/**
 * Longest caller id, characters: the gateway vouches for a token's `sub` of up to 255 characters
 * (IDENTITY_CLAIM_LIMITS), a provider's behind its `subjectPrefix` (`idp:` by default); 512 leaves any sensible
 * prefix room.
 */
export const CALLER_ID_MAX_LENGTH = 512;

/** A caller id as the gateway passes it on in `X-User-Id` (IDENTITY_VALUE), at most 512 characters. */
export const callerId = z
  .string()
  .min(1, 'must not be empty')
  .max(CALLER_ID_MAX_LENGTH, `must be at most ${CALLER_ID_MAX_LENGTH} characters`)
  .regex(IDENTITY_VALUE, 'must be printable ASCII without commas or spaces at either end, as the gateway passes caller ids on');

/** `field: what is wrong`, for the first problem zod found: the message of a 400 or INVALID_ARGUMENT. */
export function describeFirstIssue(error: z.ZodError, whole = 'body'): string {
  const issue = error.issues[0]!;
  return `${issue.path.join('.') || whole}: ${issue.message}`;
}
