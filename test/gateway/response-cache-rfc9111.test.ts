import type http from 'node:http';
import { listen, sendRaw, type RawReply, type TestServer } from '../helpers/servers';
import { startStack, type TestStack } from '../helpers/stack';
import { shippedConfigFile } from '../helpers/test-config';
import { waitFor } from '../helpers/wait';
import { steppableWallClock } from '../helpers/wall-clock';

/**
 * The response cache against RFC 9111 where the HTTP working group's cache tests (cache-tests.fyi) found it
 * apart from a shared cache: each row a behaviour nginx, Varnish and Fastly show, talked to over HTTP.
 */

interface Seen {
  url: string;
  headers: http.IncomingHttpHeaders;
}

interface Answer {
  status?: number;
  headers?: Record<string, string>;
  body?: string;
  /** Sends the head, then the body this long after, ms. */
  bodyAfterMs?: number;
  /** Answers this long after the request arrived, ms (its Date is from the arrival). */
  headAfterMs?: number;
}

interface ScriptedOrigin extends TestServer {
  seen: Seen[];
  /** What the origin answers to each request for a path of the route (`/item-1`), in turn (the last one repeats). */
  script(path: string, ...answers: ((request: http.IncomingMessage) => Answer)[]): void;
}

async function scriptedOrigin(): Promise<ScriptedOrigin> {
  const seen: Seen[] = [];
  const scripts = new Map<string, ((request: http.IncomingMessage) => Answer)[]>();
  const server = await listen((req, res) => {
    seen.push({ url: req.url ?? '', headers: { ...req.headers } });
    req.resume();
    req.on('end', async () => {
      const path = (req.url ?? '').split('?')[0]!;
      const answers = scripts.get(path) ?? [(): Answer => ({ status: 404 })];
      const answer = (answers.length > 1 ? answers.shift()! : answers[0]!)(req);
      if (answer.headAfterMs !== undefined) {
        const date = new Date().toUTCString();
        await new Promise((resolve) => setTimeout(resolve, answer.headAfterMs));
        answer.headers = { date, ...answer.headers };
      }
      res.writeHead(answer.status ?? 200, { 'content-type': 'text/plain', ...answer.headers });
      const body = answer.status === 304 ? undefined : (answer.body ?? `body of ${path}`);
      if (answer.bodyAfterMs === undefined) return void res.end(body);
      res.flushHeaders();
      setTimeout(() => res.end(body), answer.bodyAfterMs);
    });
  });
  return Object.assign(server, { seen, script: (path: string, ...answers: ((request: http.IncomingMessage) => Answer)[]) => void scripts.set(`/rfc${path}`, answers) });
}

/** The test stack with a public route `/api/rfc` to `origin`'s `/rfc`, cached (60 s, shared). */
function rfcStack(origin: ScriptedOrigin): Promise<TestStack> {
  return startStack({
    serviceUrls: { notifications: origin.url },
    overrides: {
      routes: [...(shippedConfigFile().routes as unknown[]), { name: 'rfc', prefix: '/api/rfc', service: 'notifications', upstreamPath: '/rfc', auth: 'public', cache: { ttlSeconds: 60, scope: 'public' } }],
      rateLimit: { max: 10_000, windowMs: 60_000 },
    },
  });
}

let unique = 0;
const fresh = () => `/item-${++unique}`;

describe('response cache (RFC 9111, as the HTTP cache tests check it)', () => {
  let origin: ScriptedOrigin;
  let stack: TestStack;
  const get = (path: string, headers: http.OutgoingHttpHeaders = {}): Promise<RawReply> => sendRaw(stack.gateway.url, `/api/rfc${path}`, headers);
  const seenFor = (path: string) => origin.seen.filter((each) => each.url === `/rfc${path}`);

  beforeAll(async () => {
    origin = await scriptedOrigin();
    stack = await rfcStack(origin);
  });
  afterAll(async () => {
    await stack.close();
    await origin.close();
  });

  it('reads a two-digit year in an RFC 850 Expires as at most 50 years ahead (RFC 9110 5.6.7), not as 19xx', async () => {
    const path = fresh();
    // A year ahead whose last two digits are 50 or more, written the obsolete way: Date.parse alone makes it 19xx
    // (it puts 00-49 in 20xx), an answer long expired.
    let year = new Date().getUTCFullYear() + 1;
    while (year % 100 < 50) year++;
    const yy = String(year % 100);
    origin.script(path, () => ({ headers: { expires: `Thursday, 18-Aug-${yy} 02:01:18 GMT` } }));
    const first = await get(path);
    const second = await get(path);
    expect([first.headers['x-cache'], second.headers['x-cache']]).toEqual(['MISS', 'HIT']);
    expect(seenFor(path)).toHaveLength(1);
  });

  it("keeps none of the identity and signature headers a service echoed in a shared copy, nor passes them on", async () => {
    const path = fresh();
    origin.script(path, () => ({ headers: { 'cache-control': 'max-age=60', 'x-user-id': '1', 'x-user-roles': 'admin', 'x-gateway-signature': 't=1,v2=abc', 'x-consumer-id': 'c-7', 'x-note': 'kept' } }));
    const first = await get(path);
    const second = await get(path);
    expect([first.headers['x-cache'], second.headers['x-cache']]).toEqual(['MISS', 'HIT']);
    for (const reply of [first, second]) {
      expect(Object.keys(reply.headers).filter((name) => /^x-(user|gateway|consumer)-/.test(name))).toEqual([]);
      expect(reply.headers['x-note']).toBe('kept');
    }
  });

  it('revalidates a stale copy with its validators and answers a 304 from it, updated by the 304\'s headers (RFC 9111 4.3)', async () => {
    const path = fresh();
    origin.script(
      path,
      () => ({ headers: { etag: '"v1"', 'last-modified': 'Tue, 01 Dec 2026 10:00:00 GMT', 'cache-control': 'max-age=0', 'x-version': 'first' }, body: 'the stored body' }),
      () => ({ status: 304, headers: { etag: '"v1"', 'cache-control': 'max-age=60', 'x-version': 'refreshed' } }),
    );
    const first = await get(path);
    const second = await get(path);
    const third = await get(path);
    expect([first.headers['x-cache'], second.headers['x-cache'], third.headers['x-cache']]).toEqual(['MISS', 'REVALIDATED', 'HIT']);
    expect([second.status, second.text, second.headers['x-version'], second.headers['cache-control']]).toEqual([200, 'the stored body', 'refreshed', 'max-age=60']);
    expect([third.text, third.headers['x-version']]).toEqual(['the stored body', 'refreshed']);
    const asked = seenFor(path);
    expect(asked).toHaveLength(2);
    expect([asked[1]!.headers['if-none-match'], asked[1]!.headers['if-modified-since']]).toEqual(['"v1"', 'Tue, 01 Dec 2026 10:00:00 GMT']);
  });

  // A cache in front of the service (nginx, Varnish: they write their own Date) answers a 304 for a copy it has held
  // 55 s with `Age: 55`. The age was dropped with the rest of what a copy does not store, and the refreshed copy was
  // fresh for the whole max-age=60, not the 5 s left of it.
  it("counts a refreshing 304's Age in the refreshed copy's age (RFC 9111 4.2.3, 4.3.4)", async () => {
    const path = fresh();
    origin.script(
      path,
      () => ({ headers: { etag: '"aged"', 'cache-control': 'max-age=0' }, body: 'the stored body' }),
      () => ({ status: 304, headers: { etag: '"aged"', 'cache-control': 'max-age=60', age: '58' } }),
    );
    await get(path);
    const revalidated = await get(path);
    expect(revalidated.headers['x-cache']).toBe('REVALIDATED');
    expect(Number(revalidated.headers.age)).toBeGreaterThanOrEqual(58);
    const next = await get(path);
    expect(Number(next.headers.age)).toBeGreaterThanOrEqual(58);
    // Past 60 s of age within a few seconds: the next use asks the service again.
    await waitFor(async () => (await get(path)).headers['x-cache'] !== 'HIT', 'the refreshed copy to go stale', 10_000);
    expect(seenFor(path).length).toBeGreaterThanOrEqual(3);
  });

  it('makes the URLs of a 304 that refreshes a copy public, as those of an answer it forwards (never the instance\'s address)', async () => {
    const path = fresh();
    origin.script(
      path,
      () => ({ headers: { etag: '"u"', 'cache-control': 'max-age=0', 'content-location': '/rfc/old' } }),
      () => ({ status: 304, headers: { etag: '"u"', 'content-location': `${origin.url}/rfc/new`, refresh: `5; url=${origin.url}/rfc/next` } }),
    );
    await get(path);
    const revalidated = await get(path);
    expect(revalidated.headers['x-cache']).toBe('REVALIDATED');
    expect([revalidated.headers['content-location'], revalidated.headers.refresh]).toEqual([`${stack.gateway.url}/api/rfc/new`, `5; url=${stack.gateway.url}/api/rfc/next`]);
  });

  it('keeps a no-cache answer that has a validator and asks the service before each use of it', async () => {
    const path = fresh();
    origin.script(
      path,
      () => ({ headers: { etag: '"nc"', 'cache-control': 'no-cache' }, body: 'checked each time' }),
      () => ({ status: 304, headers: { etag: '"nc"', 'cache-control': 'no-cache' } }),
    );
    const replies = [await get(path), await get(path), await get(path)];
    expect(replies.map((reply) => [reply.status, reply.headers['x-cache'], reply.text])).toEqual([
      [200, 'MISS', 'checked each time'],
      [200, 'REVALIDATED', 'checked each time'],
      [200, 'REVALIDATED', 'checked each time'],
    ]);
    expect(seenFor(path).map((seen) => seen.headers['if-none-match'] ?? null)).toEqual([null, '"nc"', '"nc"']);
  });

  it('asks again without validators when the 304 is about another response than the stored one (another ETag)', async () => {
    const path = fresh();
    origin.script(
      path,
      () => ({ headers: { etag: '"a"', 'cache-control': 'max-age=0' }, body: 'version a' }),
      (req): Answer => (req.headers['if-none-match'] ? { status: 304, headers: { etag: '"b"' } } : { headers: { etag: '"b"', 'cache-control': 'max-age=60' }, body: 'version b' }),
    );
    await get(path);
    const second = await get(path);
    expect([second.status, second.headers['x-cache'], second.text, second.headers.etag]).toEqual([200, 'MISS', 'version b', '"b"']);
    expect(seenFor(path).map((seen) => seen.headers['if-none-match'] ?? null)).toEqual([null, '"a"', null]);
    expect((await get(path)).headers['x-cache']).toBe('HIT');
  });

  it('gives a revalidated copy whose 304 made it private to that client only, and keeps it no longer', async () => {
    const path = fresh();
    origin.script(
      path,
      () => ({ headers: { etag: '"p"', 'cache-control': 'max-age=0' }, body: 'shared until now' }),
      () => ({ status: 304, headers: { etag: '"p"', 'cache-control': 'private, max-age=60' } }),
      () => ({ headers: { etag: '"p2"', 'cache-control': 'private' }, body: 'private now' }),
    );
    await get(path);
    const second = await get(path);
    expect([second.headers['x-cache'], second.headers['cache-control']]).toEqual(['REVALIDATED', 'private, max-age=60']);
    const third = await get(path);
    expect([third.headers['x-cache'], third.text]).toEqual(['MISS', 'private now']);
    expect(seenFor(path).map((seen) => seen.headers['if-none-match'] ?? null)).toEqual([null, '"p"', null]);
  });

  // A 304 that does not say `public` may refresh a copy for a request with credentials (a cookie) but not be stored
  // for it (RFC 9111 3.5): that is about this request, as on a miss. Read as the copy's own verdict, it dropped every
  // stored copy of the resource, and any client with an analytics cookie purged it on each request.
  it('keeps the stored copy when a request with a cookie revalidates it: only that answer is not stored', async () => {
    const path = fresh();
    origin.script(
      path,
      () => ({ headers: { etag: '"c"', 'cache-control': 'max-age=0' }, body: 'shared copy' }),
      (req): Answer => (req.headers['if-none-match'] === '"c"' ? { status: 304, headers: { etag: '"c"', 'cache-control': 'max-age=0' } } : { headers: { etag: '"c"', 'cache-control': 'max-age=0' }, body: 'shared copy' }),
    );
    await get(path);
    const withCookie = await get(path, { cookie: '_ga=1' });
    expect([withCookie.status, withCookie.headers['x-cache'], withCookie.text]).toEqual([200, 'REVALIDATED', 'shared copy']);
    const next = await get(path);
    expect([next.status, next.headers['x-cache'], next.text]).toEqual([200, 'REVALIDATED', 'shared copy']);
    expect(seenFor(path).map((seen) => seen.headers['if-none-match'] ?? null)).toEqual([null, '"c"', '"c"']);
  });

  it.each([500, 502, 503, 504])('answers a GET and a HEAD with a stale copy under stale-if-error when the service answers %i (RFC 5861 4)', async (status) => {
    const path = fresh();
    // Stale from the start (max-age=0), kept for its ETag.
    origin.script(path, () => ({ headers: { 'cache-control': 'max-age=0, stale-if-error=60', etag: '"k"' }, body: 'kept for bad times' }), () => ({ status, body: 'the service is struggling' }));
    await get(path);
    const stale = await get(path);
    expect([stale.status, stale.headers['x-cache'], stale.text]).toEqual([200, 'STALE', 'kept for bad times']);
    const head = await sendRaw(stack.gateway.url, `/api/rfc${path}`, {}, 'HEAD');
    expect([head.status, head.headers['x-cache']]).toEqual([200, 'STALE']);
  });

  it('passes the service\'s 503 on when the stale copy allows no stale-if-error, or its window is over', async () => {
    const none = fresh();
    origin.script(none, () => ({ headers: { 'cache-control': 'max-age=0', etag: '"x"' } }), () => ({ status: 503 }));
    await get(none);
    expect((await get(none)).status).toBe(503);
    const over = fresh();
    origin.script(over, () => ({ headers: { 'cache-control': 'max-age=0, stale-if-error=60', age: '61', etag: '"y"' } }), () => ({ status: 503 }));
    await get(over);
    expect((await get(over)).status).toBe(503);
  });

  it('counts an answer\'s age from when its head arrived, not from the end of a slow body (RFC 9111 4.2.3)', async () => {
    const path = fresh();
    origin.script(path, () => ({ headers: { 'cache-control': 'max-age=60' }, bodyAfterMs: 1_100 }));
    await get(path);
    const stored = await get(path);
    expect(stored.headers['x-cache']).toBe('HIT');
    // Its head arrived over a second before its body ended: that second is part of its age.
    expect(Number(stored.headers.age)).toBeGreaterThanOrEqual(1);
  });

  it('adds the time the service took to answer to the Age it sent (RFC 9111 4.2.3 corrected_age_value)', async () => {
    const path = fresh();
    // Its own cache's copy was 5 s old when it began to answer, and the answer took over a second.
    origin.script(path, () => ({ headers: { 'cache-control': 'max-age=60', age: '5' }, headAfterMs: 1_100 }));
    await get(path);
    const stored = await get(path);
    expect(stored.headers['x-cache']).toBe('HIT');
    expect(Number(stored.headers.age)).toBeGreaterThanOrEqual(6);
  });

  it('keeps each variant of an answer that varies, so clients alternating the header Vary names are both answered from the cache', async () => {
    const path = fresh();
    origin.script(path, (req) => ({ headers: { 'cache-control': 'max-age=60', vary: 'Accept-Language' }, body: `in ${req.headers['accept-language'] ?? 'no language'}` }));
    const rounds: string[][] = [];
    for (let round = 0; round < 3; round++) {
      const french = await get(path, { 'accept-language': 'fr' });
      const none = await get(path);
      rounds.push([`${french.headers['x-cache']} ${french.text}`, `${none.headers['x-cache']} ${none.text}`]);
    }
    expect(rounds).toEqual([
      ['MISS in fr', 'MISS in no language'],
      ['HIT in fr', 'HIT in no language'],
      ['HIT in fr', 'HIT in no language'],
    ]);
    expect(seenFor(path)).toHaveLength(2);
    // A third value was never stored: it is never answered with another's.
    const german = await get(path, { 'accept-language': 'de' });
    expect([german.headers['x-cache'], german.text]).toEqual(['MISS', 'in de']);
  });

  it('passes a request with a condition of its own on to the service instead of revalidating with the stored validators', async () => {
    const path = fresh();
    origin.script(
      path,
      () => ({ headers: { etag: '"mine"', 'cache-control': 'max-age=0' } }),
      (req) => ({ status: req.headers['if-none-match'] === '"client"' ? 304 : 200, headers: { etag: '"client"' } }),
    );
    await get(path);
    const conditional = await get(path, { 'if-none-match': '"client"' });
    expect([conditional.status, conditional.headers['x-cache']]).toEqual([304, 'MISS']);
    expect(seenFor(path)[1]!.headers['if-none-match']).toBe('"client"');
  });

  // Browsers send If-None-Match once they hold the ETag: the copy stayed stale, and every one of them went on to the
  // service for as long as the copy was kept.
  it('freshens the stored copy from the 304 to a client\'s own conditions when it names the stored copy (RFC 9111 4.3.4)', async () => {
    const path = fresh();
    origin.script(
      path,
      () => ({ headers: { etag: '"v1"', 'cache-control': 'max-age=0', 'x-version': 'first' }, body: 'the stored body' }),
      () => ({ status: 304, headers: { etag: '"v1"', 'cache-control': 'max-age=60', 'x-version': 'refreshed' } }),
    );
    await get(path);
    const conditional = await get(path, { 'if-none-match': '"v1"' });
    expect([conditional.status, conditional.headers['x-cache'], conditional.text]).toEqual([304, 'MISS', '']);
    expect(seenFor(path)[1]!.headers['if-none-match']).toBe('"v1"');
    const next = await get(path);
    expect([next.status, next.headers['x-cache'], next.text, next.headers['x-version'], next.headers['cache-control']]).toEqual([200, 'HIT', 'the stored body', 'refreshed', 'max-age=60']);
    // A conditional request now matches the freshened copy: answered here.
    const again = await get(path, { 'if-none-match': '"v1"' });
    expect([again.status, again.headers['x-cache']]).toEqual([304, 'HIT']);
    expect(seenFor(path)).toHaveLength(2);
  });

  it.each<{ desc: string; stored: Record<string, string>; client: Record<string, string>; notModified: Record<string, string> }>([
    { desc: 'another entity-tag (the client holds a newer version)', stored: { etag: '"old"' }, client: { 'if-none-match': '"new"' }, notModified: { etag: '"new"' } },
    { desc: 'no validator, the stored copy having an entity-tag', stored: { etag: '"kept"' }, client: { 'if-modified-since': 'Tue, 01 Dec 2026 10:00:00 GMT' }, notModified: {} },
    { desc: 'no validator, the stored copy having only a Last-Modified', stored: { 'last-modified': 'Tue, 01 Dec 2026 09:00:00 GMT' }, client: { 'if-modified-since': 'Tue, 01 Dec 2026 10:00:00 GMT' }, notModified: {} },
    { desc: 'another Last-Modified', stored: { 'last-modified': 'Tue, 01 Dec 2026 09:00:00 GMT' }, client: { 'if-modified-since': 'Tue, 01 Dec 2026 10:00:00 GMT' }, notModified: { 'last-modified': 'Tue, 01 Dec 2026 10:00:00 GMT' } },
  ])('leaves the stored copy stale when the 304 to a client\'s own conditions names $desc', async ({ stored, client, notModified }) => {
    const path = fresh();
    origin.script(
      path,
      () => ({ headers: { ...stored, 'cache-control': 'max-age=0' }, body: 'the stored body' }),
      () => ({ status: 304, headers: { ...notModified, 'cache-control': 'max-age=60' } }),
      () => ({ headers: { ...stored, 'cache-control': 'max-age=0' }, body: 'asked again' }),
    );
    await get(path);
    expect((await get(path, client)).status).toBe(304);
    const next = await get(path);
    expect(next.headers['x-cache']).not.toBe('HIT');
    expect(seenFor(path)).toHaveLength(3);
  });

  it('updates the stored GET copy from a HEAD\'s 200 that describes the same content (RFC 9111 4.3.5), so the next GET is a HIT', async () => {
    const path = fresh();
    origin.script(
      path,
      () => ({ headers: { etag: '"same"', 'cache-control': 'max-age=0', 'x-version': 'first' }, body: 'the stored body' }),
      () => ({ headers: { etag: '"same"', 'cache-control': 'max-age=600', 'x-version': 'from the head', 'content-length': String('the stored body'.length) } }),
    );
    await get(path);
    const head = await sendRaw(stack.gateway.url, `/api/rfc${path}`, {}, 'HEAD');
    expect([head.status, head.headers['x-version']]).toEqual([200, 'from the head']);
    const next = await get(path);
    expect([next.headers['x-cache'], next.text, next.headers['x-version'], next.headers['cache-control']]).toEqual(['HIT', 'the stored body', 'from the head', 'max-age=600']);
    expect(seenFor(path).map((each) => each.headers['if-none-match'])).toHaveLength(2);
  });

  it('keeps a stale copy without a validator for a HEAD\'s 200 to freshen (RFC 9111 4.3.5), so the next GET is a HIT', async () => {
    const path = fresh();
    origin.script(
      path,
      // Fresh for about a second (its Age), then stale: no validator to revalidate it with, only a HEAD can freshen it.
      () => ({ headers: { 'cache-control': 'max-age=60', age: '59', 'x-version': 'first' }, body: 'the stored body' }),
      () => ({ headers: { 'cache-control': 'max-age=600', 'x-version': 'from the head', 'content-length': String('the stored body'.length) } }),
    );
    await get(path);
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const head = await sendRaw(stack.gateway.url, `/api/rfc${path}`, {}, 'HEAD');
    expect([head.status, head.headers['x-cache']]).toEqual([200, 'MISS']);
    const next = await get(path);
    expect([next.headers['x-cache'], next.text, next.headers['x-version']]).toEqual(['HIT', 'the stored body', 'from the head']);
    expect(seenFor(path)).toHaveLength(2);
  });

  it.each([
    { desc: 'another ETag', head: { etag: '"other"', 'content-length': '15' } },
    { desc: 'another Last-Modified', head: { etag: '"same"', 'last-modified': 'Wed, 02 Dec 2026 10:00:00 GMT', 'content-length': '15' } },
    { desc: 'another Content-Length', head: { etag: '"same"', 'content-length': '3' } },
  ] as { desc: string; head: Record<string, string> }[])('never lets a HEAD\'s 200 with $desc refresh the stored GET copy: the next GET asks the service (RFC 9111 4.3.5)', async ({ head }) => {
    const path = fresh();
    origin.script(
      path,
      () => ({ headers: { etag: '"same"', 'last-modified': 'Tue, 01 Dec 2026 10:00:00 GMT', 'cache-control': 'max-age=0' }, body: 'the stored body' }),
      () => ({ headers: { 'cache-control': 'max-age=600', ...head } }),
      () => ({ headers: { etag: '"new"', 'cache-control': 'max-age=600' }, body: 'the new body' }),
    );
    await get(path);
    await sendRaw(stack.gateway.url, `/api/rfc${path}`, {}, 'HEAD');
    const next = await get(path);
    expect([next.headers['x-cache'], next.text]).toEqual(['MISS', 'the new body']);
  });

  // Refreshed as a stored 200 is, a 404 took the HEAD's headers and lifetime: served for ten minutes while the
  // service said the resource existed.
  it.each([404, 301])('never lets a HEAD\'s 200 refresh a stored %i: the next GET asks the service (RFC 9111 4.3.5)', async (status) => {
    const path = fresh();
    origin.script(
      path,
      () => ({ status, headers: { 'cache-control': 'max-age=60', age: '59', location: '/elsewhere' }, body: 'the stored answer' }),
      () => ({ headers: { 'cache-control': 'max-age=600' } }),
      () => ({ headers: { 'cache-control': 'max-age=600' }, body: 'the resource now' }),
    );
    expect((await get(path)).status).toBe(status);
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    expect((await sendRaw(stack.gateway.url, `/api/rfc${path}`, {}, 'HEAD')).status).toBe(200);
    const next = await get(path);
    expect([next.status, next.headers['x-cache'], next.text]).toEqual([200, 'MISS', 'the resource now']);
  });

  it.each([302, 307, 201, 299])('stores a %i the service gave an explicit lifetime (RFC 9111 3), and one without it never', async (status) => {
    const path = fresh();
    const bare = fresh();
    // An absolute Location naming the instance: the copy keeps it as the proxy made it public, never the instance's address.
    origin.script(path, () => ({ status, headers: { 'cache-control': 'max-age=60', location: `${origin.url}/rfc/elsewhere` }, body: `a ${status}` }));
    origin.script(bare, () => ({ status, body: `a ${status}` }));
    const first = await get(path);
    const second = await get(path);
    expect([first.headers['x-cache'], second.headers['x-cache'], second.status, second.text]).toEqual(['MISS', 'HIT', status, `a ${status}`]);
    expect(second.headers.location).toBe(`${stack.gateway.url}/api/rfc/elsewhere`);
    expect(seenFor(path)).toHaveLength(1);
    await get(bare);
    expect((await get(bare)).headers['x-cache']).toBe('MISS');
  });

  it.each([503, 429, 412, 400, 403, 431, 499])('never stores a %i, even with an explicit lifetime', async (status) => {
    const path = fresh();
    origin.script(path, () => ({ status, headers: { 'cache-control': 'max-age=60' } }));
    await get(path);
    expect((await get(path)).headers['x-cache']).toBe('MISS');
    expect(seenFor(path)).toHaveLength(2);
  });

  it('never lets one client\'s request refused for a header the key does not hold (400 under a blanket max-age) answer the next client (CPDoS)', async () => {
    const path = fresh();
    origin.script(path, (request) => (request.headers['x-oversized'] !== undefined ? { status: 400, headers: { 'cache-control': 'public, max-age=300' }, body: 'bad request' } : { headers: { 'cache-control': 'public, max-age=300' }, body: 'the page' }));
    expect((await get(path, { 'x-oversized': 'x'.repeat(4096) })).status).toBe(400);
    const next = await get(path);
    expect([next.status, next.text, next.headers['x-cache']]).toEqual([200, 'the page', 'MISS']);
  });

  // A request that waited on another's fetch went on with the copy it had read before the wait: a write in the
  // meantime had dropped it (RFC 9111 4.4), and it still stood in for the request's own error as STALE.
  it('never stands in with a copy a write dropped while the request waited on another fetch', async () => {
    const path = fresh();
    const kept = { 'cache-control': 'max-age=0, stale-if-error=600' };
    origin.script(
      path,
      () => ({ headers: kept, body: 'before the write' }),
      () => ({ headers: kept, body: 'fetched across the write', headAfterMs: 1500 }),
      () => ({ status: 204 }),
      () => ({ status: 503, body: 'down' }),
    );
    expect((await get(path)).text).toBe('before the write');
    const waiting = () => stack.gatewayLogs.filter((line) => line.message === 'response cache: waiting for a fetch in flight').length;
    const first = get(path);
    await waitFor(() => seenFor(path).length === 2, 'the first stale read to reach the service');
    const waitedBefore = waiting();
    const second = get(path);
    await waitFor(() => waiting() > waitedBefore, 'the second read to wait on the first');
    const write = await sendRaw(stack.gateway.url, `/api/rfc${path}`, { 'content-length': '0' }, 'PUT');
    expect(write.status).toBe(204);
    expect((await first).text).toBe('fetched across the write');
    const answer = await second;
    expect([answer.status, answer.text]).toEqual([503, 'down']);
    expect(seenFor(path)).toHaveLength(4);
  });

  it('stands in with a copy sent with max-age=0 and stale-if-error but no validator while the service fails (RFC 5861 4)', async () => {
    const path = fresh();
    origin.script(path, () => ({ headers: { 'cache-control': 'max-age=0, stale-if-error=600' }, body: 'the last good body' }), () => ({ status: 503, body: 'down' }));
    await get(path);
    const failed = await get(path);
    expect([failed.status, failed.headers['x-cache'], failed.text]).toEqual([200, 'STALE', 'the last good body']);
  });
});

// A wall-clock step back (NTP, a resumed VM) stopped every copy's age for the step's length: its time in the store
// was counted on the wall clock, so a `max-age=1` answer was a HIT with `Age: 0` for the hour. The step is made on a
// Date.now the gateway is built with, as modules keep a reference to it when they start.
describe('response cache ages across a wall-clock step', () => {
  const wallClock = steppableWallClock();
  let origin: ScriptedOrigin;
  let stack: TestStack;

  beforeAll(async () => {
    wallClock.install();
    origin = await scriptedOrigin();
    stack = await rfcStack(origin);
  });
  afterAll(async () => {
    await stack.close();
    await origin.close();
    wallClock.restore();
  });

  it('counts a copy\'s time in the memory store on the monotonic clock: a step back does not keep it fresh', async () => {
    origin.script('/stepped', () => ({ headers: { 'cache-control': 'max-age=1' } }));
    const get = () => sendRaw(stack.gateway.url, '/api/rfc/stepped', {});
    expect((await get()).headers['x-cache']).toBe('MISS');
    expect((await get()).headers['x-cache']).toBe('HIT');
    wallClock.step(-3_600_000);
    await waitFor(async () => (await get()).headers['x-cache'] === 'MISS', 'the copy to go stale', 5000);
  });
});
