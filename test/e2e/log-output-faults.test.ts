import http from 'node:http';
import { exitOf, spawnGateway } from '../helpers/process-stack';
import { waitFor } from '../helpers/wait';

/** GETs `path` `count` times over one keep-alive connection; resolves with the statuses. */
async function getMany(url: string, path: string, count: number): Promise<number[]> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  try {
    const statuses: number[] = [];
    for (let i = 0; i < count; i++) {
      statuses.push(
        await new Promise<number>((resolve, reject) => {
          http.get(`${url}${path}`, { agent }, (response) => {
            response.resume();
            response.on('end', () => resolve(response.statusCode!));
          }).on('error', reject);
        }),
      );
    }
    return statuses;
  } finally {
    agent.destroy();
  }
}

// The gateway's JSON lines go to stdout, read by a log shipper, `| tee`, journald: a reader that goes away or stops
// reading is a logging fault, never a reason to stop serving or to grow without bound.
describe('when whatever reads the log goes away or stops reading', () => {
  it.each([
    { desc: 'one process', env: {} as Record<string, string> },
    { desc: 'a primary and 2 workers sharing stdout', env: { GATEWAY_WORKERS: '2' } },
  ])('keeps serving after its stdout reader closed ($desc), and says so on stderr', async ({ env }) => {
    const gateway = spawnGateway({ NODE_ENV: 'test', ...env });
    try {
      const { url } = (await gateway.waitForLine('gateway listening')) as { url: string };
      // The read end goes away: the next write fails with EPIPE (it ended every process).
      gateway.child.stdout!.destroy();
      expect(await getMany(url, '/health', 20)).toEqual(Array(20).fill(200));
      await waitFor(() => /log: \d+ line\(s\) dropped so far: stdout failed \(EPIPE\)/.test(gateway.stderr()), 'the report on stderr');
      expect(await getMany(url, '/health', 5)).toEqual(Array(5).fill(200));
      expect(gateway.child.exitCode).toBeNull();
    } finally {
      gateway.child.kill('SIGKILL');
      await exitOf(gateway.child);
    }
  });

  it('drops lines past a bound while stdout is not read, keeps serving, and writes again once it is', async () => {
    const gateway = spawnGateway({ NODE_ENV: 'test', RATE_LIMIT_MAX: '100000' });
    try {
      const { url } = (await gateway.waitForLine('gateway listening')) as { url: string };
      gateway.child.stdout!.pause();
      // About 4 KB of access line each: 3,000 of them are past the 8 MiB the gateway lets wait.
      const padded = `/health?pad=${'x'.repeat(4000)}`;
      expect(new Set(await getMany(url, padded, 3000))).toEqual(new Set([200]));
      await waitFor(() => /log: \d+ line\(s\) dropped so far: stdout is not being read/.test(gateway.stderr()), 'the report on stderr');
      gateway.child.stdout!.resume();
      const before = gateway.lines.length;
      await getMany(url, '/health?after=resume', 1);
      await waitFor(() => gateway.lines.slice(before).some((line) => line.url === '/health?after=resume'), 'a line written again', 15_000);
      // Once lines flow again the whole count is said, not only the one at the first drop (which is near 0).
      await waitFor(() => /stdout is read again/.test(gateway.stderr()), 'the count once stdout is read again', 15_000);
      const counts = [...gateway.stderr().matchAll(/log: (\d+) line\(s\) dropped so far/g)].map((match) => Number(match[1]));
      const written = gateway.lines.filter((line) => typeof line.url === 'string' && line.url.startsWith('/health?pad=')).length;
      expect(counts.at(-1)).toBe(3000 - written);
    } finally {
      gateway.child.kill('SIGKILL');
      await exitOf(gateway.child);
    }
  });
});
