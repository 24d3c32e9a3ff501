import type http from 'node:http';
import { listen, sendRaw, type RawReply, type TestServer } from '../helpers/servers';
import { startStack, type TestStack } from '../helpers/stack';
import { shippedConfigFile } from '../helpers/test-config';

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
    req.on('end', () => {
      const path = (req.url ?? '').split('?')[0]!;
      const answers = scripts.get(path) ?? [() => ({ status: 404 })];
      const answer = (answers.length > 1 ? answers.shift()! : answers[0]!)(req);
      res.writeHead(answer.status ?? 200, { 'content-type': 'text/plain', ...answer.headers });
      res.end(answer.status === 304 ? undefined : (answer.body ?? `body of ${path}`));
    });
  });
  return Object.assign(server, { seen, script: (path: string, ...answers: ((request: http.IncomingMessage) => Answer)[]) => void scripts.set(`/rfc${path}`, answers) });
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
    stack = await startStack({
      serviceUrls: { notifications: origin.url },
      overrides: {
        routes: [...(shippedConfigFile().routes as unknown[]), { name: 'rfc', prefix: '/api/rfc', service: 'notifications', upstreamPath: '/rfc', auth: 'public', cache: { ttlSeconds: 60, scope: 'public' } }],
        rateLimit: { max: 10_000, windowMs: 60_000 },
      },
    });
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
});
