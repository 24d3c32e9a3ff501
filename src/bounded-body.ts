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
