import { spawn } from 'node:child_process';
import path from 'node:path';
import { childEnvironment } from '../helpers/process-stack';
import { listen, streamSixChunks, type TestServer } from '../helpers/servers';
import { signToken } from '../helpers/tokens';
import { TEST_JWT_SECRET } from '../helpers/test-config';

const root = path.join(__dirname, '../..');

/** Waits for a line on the child's stdout that parses as JSON and matches. */
function waitForLog(child: ReturnType<typeof spawn>, match: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let buffer = '';
    const timer = setTimeout(() => reject(new Error(`no matching log line; got:\n${buffer}`)), 15_000);
    child.stdout!.on('data', (chunk: Buffer) => {
      buffer += chunk.toString();
      for (const text of buffer.split('\n')) {
        try {
          const line = JSON.parse(text) as Record<string, unknown>;
          if (match(line)) {
            clearTimeout(timer);
            resolve(line);
          }
        } catch {
          // partial line
        }
      }
    });
  });
}

describe('graceful shutdown', () => {
  let upstream: TestServer;
  afterAll(() => upstream?.close());

  it('on SIGTERM finishes a streaming request in flight, refuses new connections, and exits 0', async () => {
    // An upstream that streams its answer over ~1.2 s.
    upstream = await listen((_req, res) => streamSixChunks(res));
    const gateway = spawn(process.execPath, [path.join(root, 'dist/src/main.js')], {
      cwd: root,
      env: childEnvironment({ PORT: '0', JWT_SECRET: TEST_JWT_SECRET, ORDER_SERVICE_URL: upstream.url, OTEL_SDK_DISABLED: 'true' }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      const { url } = (await waitForLog(gateway, (line) => line.message === 'gateway listening')) as { url: string };
      const token = await signToken({ subject: '2', claims: { role: 'user', email: 'bob@example.com' } });
      // In flight: the response head is here and the body (six chunks over ~1.2 s) is still streaming.
      const response = await fetch(`${url}/api/orders/stream`, { headers: { authorization: `Bearer ${token}` } });
      const inFlight = response.text().then((body) => ({ status: response.status, body }));
      const exited = new Promise<number | null>((resolve) => gateway.once('exit', (code) => resolve(code)));
      // The gateway logs this line in the same turn in which it stops listening.
      const stopping = waitForLog(gateway, (line) => line.message === 'gateway stopping');
      gateway.kill('SIGTERM');
      await stopping;
      expect(gateway.exitCode).toBeNull();
      await expect(fetch(`${url}/health`)).rejects.toThrow();

      const finished = await inFlight;
      expect(finished.status).toBe(200);
      expect(finished.body.trim().split('\n')).toHaveLength(6);
      expect(await exited).toBe(0);
    } finally {
      if (gateway.exitCode === null) gateway.kill('SIGKILL');
    }
  });
});
