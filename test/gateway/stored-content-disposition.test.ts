import { Redis } from 'ioredis';
import { createRedisResponseStore } from '../../src/response-store';
import type { CachedResponse } from '../../src/response-cache';
import { deleteKeys, isolatedKeyPrefix, requireRedis } from '../helpers/redis';
import { memoryLogger } from '../helpers/servers';

const MACHINE_REDIS = 'redis://127.0.0.1:6379';

/** `text`'s UTF-8 bytes one character per byte, as a service's field value is handed over (and was stored). */
const asReceived = (text: string) => Buffer.from(text, 'utf8').toString('latin1');

/**
 * A copy in the shared Redis store written by a gateway from before the proxy wrote Content-Disposition in ASCII (a
 * replica not yet upgraded, an entry from before the upgrade) holds the service's raw bytes: served as they were, Node's
 * http wrote `č` and `Ċ` of a file name as CR and LF, and a hit carried a Set-Cookie the service never sent (an
 * outside review did it). Read from the store, the field is in ASCII as the proxy passes it on.
 */
describe('a stored copy with a Content-Disposition outside ASCII', () => {
  const prefix = isolatedKeyPrefix();
  let client: Redis;

  beforeAll(async () => {
    client = new Redis(MACHINE_REDIS, { maxRetriesPerRequest: 1 });
    await requireRedis(client, MACHINE_REDIS);
  });
  afterAll(async () => {
    client.disconnect();
    await deleteKeys(MACHINE_REDIS, prefix);
  });

  it.each([
    ['one line', `attachment; filename="a${asReceived('čĊ')}Set-Cookie: session=attacker.pdf"`, `attachment; filename="a??Set-Cookie: session=attacker.pdf"; filename*=UTF-8''a%C4%8D%C4%8ASet-Cookie%3A%20session%3Dattacker.pdf`],
    ['two lines', [`inline; filename="${asReceived('č')}.txt"`, 'attachment'], [`inline; filename="?.txt"; filename*=UTF-8''%C4%8D.txt`, 'attachment']],
  ])('is read back in ASCII (%s)', async (_desc, stored, expected) => {
    const store = createRedisResponseStore({ client, keyPrefix: prefix, logger: memoryLogger('gateway').logger });
    const key = { resource: `resource-${String(_desc).replace(' ', '-')}`, variant: 'v' };
    const entry: CachedResponse = { status: 200, headers: { 'content-type': 'application/pdf', 'content-disposition': stored }, body: Buffer.from('%PDF'), storedAt: Date.now(), initialAgeSeconds: 0, lifetimeSeconds: 60, staleIfErrorSeconds: 0, staleWhileRevalidateSeconds: 0, vary: [], varyValues: [] };
    const since = await store.fetchStarting('files', key.resource);
    await store.set('files', key, entry, since);
    const read = await store.get('files', key);
    expect(read?.headers['content-disposition']).toEqual(expected);
    expect(read?.headers['content-type']).toBe('application/pdf');
  });
});
