/**
 * Resolves once `condition` holds, polled every 20 ms; throws after `timeoutMs`, naming `what`. Tests wait for
 * a condition this way, never with a fixed sleep.
 */
export async function waitFor(condition: () => boolean | Promise<boolean>, what = 'the condition', timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
