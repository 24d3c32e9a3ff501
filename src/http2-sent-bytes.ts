import type http2 from 'node:http2';

/** Largest piece of an answer handed to an HTTP/2 stream at once, bytes: one DATA frame's default maximum (RFC 9113 4.2). */
const PIECE_BYTES = 16 * 1024;

type WriteOne = (chunk: Buffer | string, encoding: BufferEncoding, callback: (error?: Error | null) => void) => void;

/**
 * Counts the bytes of an HTTP/2 stream's answer the connection has sent, for the send timeout (src/tls.ts) to judge
 * each stream by its own progress: the connection's (PING and SETTINGS acks, other streams) says nothing of a
 * stream its client holds back with a window of 0. Node completes a write to a stream only once the whole of it
 * went out, so a large write (a 200 KB body) would show no progress until its end however steadily it is read:
 * writes are handed on in pieces of at most PIECE_BYTES, one after the other, each counted as it completes.
 * Returns the count so far.
 */
export function countSentBytes(stream: http2.ServerHttp2Stream): () => number {
  let sent = 0;
  const writable = stream as unknown as { _write: WriteOne; _writev: unknown };
  const writeOne = writable._write.bind(stream);
  // Chunks the stream buffered meanwhile go through `_write` one by one, in order.
  writable._writev = null;
  writable._write = (chunk, encoding, callback) => {
    const size = typeof chunk === 'string' ? Buffer.byteLength(chunk, encoding) : chunk.length;
    if (size <= PIECE_BYTES) {
      return writeOne(chunk, encoding, (error) => {
        if (!error) sent += size;
        callback(error);
      });
    }
    const data = typeof chunk === 'string' ? Buffer.from(chunk, encoding) : chunk;
    let offset = 0;
    const next = (error?: Error | null) => {
      if (error || offset >= data.length) return callback(error);
      const piece = data.subarray(offset, offset + PIECE_BYTES);
      offset += piece.length;
      writeOne(piece, encoding, (error) => {
        if (!error) sent += piece.length;
        next(error);
      });
    };
    next();
  };
  return () => sent;
}
