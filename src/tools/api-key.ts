import { generateApiKey, hashApiKey, isWellFormedApiKey } from '../consumers';

/**
 * `npm run apikey`: prints a new API key once, and the hash to declare for it in `consumers[].keys[].hash`.
 * The key itself is stored nowhere: hand it to the consumer and keep only the hash.
 *
 *   npm run apikey                      a new key and its hash (and a consumer entry to paste)
 *   npm run apikey -- --hash < key.txt  the hash of an existing key read from stdin (first line)
 */
async function main(argv: readonly string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write('usage: api-key [--hash]   (--hash: print the hash of a key read from stdin)\n');
    return;
  }
  if (argv.includes('--hash')) {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    const key = Buffer.concat(chunks).toString('utf8').split(/\r?\n/)[0]!.trim();
    if (key === '') throw new Error('no key on stdin');
    // Its hash would be declared and never match: the gateway refuses such a key before hashing it.
    if (!isWellFormedApiKey(key)) throw new Error('not a key the gateway accepts: 16-256 characters of A-Z a-z 0-9 . _ ~ + / = -');
    process.stdout.write(`${hashApiKey(key)}\n`);
    return;
  }
  const key = generateApiKey();
  const hash = hashApiKey(key);
  process.stdout.write(`key:  ${key}\nhash: ${hash}\n\nconsumer entry (gateway.config.json "consumers", or the consumersFile):\n`);
  process.stdout.write(`${JSON.stringify({ id: 'CHANGE-ME', role: 'user', keys: [{ hash }] }, null, 2)}\n`);
}

// A reader that stops early (`npm run apikey | head -2`, which takes the key and the hash) closes the pipe under the
// lines that follow: Node raised that EPIPE as an unhandled 'error' event, a stack trace and exit status 1.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code === 'EPIPE') process.exit(0);
  throw error;
});

main(process.argv.slice(2)).catch((error: unknown) => {
  process.stderr.write(`api-key: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
