/**
 * A body read whole, but never past `limit` bytes: undefined once it goes past (leaving the loop gives the stream
 * up: a Node stream is destroyed, a web stream cancelled; the rest is never read). For the answers the gateway reads itself (the login's credential check, the identity
 * provider's key set): undici's `body.json()` and fetch's `text()` buffer whatever arrives, so a service that
 * answered with hundreds of MB held them in the gateway for as long as its timeout let it send.
 */
export async function readAtMost(body: AsyncIterable<Uint8Array>, limit: number): Promise<Buffer | undefined> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.byteLength;
    if (size > limit) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size);
}

/**
 * A body read as JSON, never past `limit` bytes: undefined when it goes past or is not JSON (a failing stream still
 * rejects). For the small answers the gateway and the services read themselves: a user-service answer, a problem's `code`.
 */
export async function jsonAtMost(body: AsyncIterable<Uint8Array>, limit: number): Promise<unknown> {
  const bytes = await readAtMost(body, limit);
  if (bytes === undefined) return undefined;
  try {
    return JSON.parse(bytes.toString('utf8')) as unknown;
  } catch {
    return undefined;
  }
}
