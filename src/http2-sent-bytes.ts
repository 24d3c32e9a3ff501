import type http2 from 'node:http2';

/** Largest piece of an answer handed to an HTTP/2 stream at once, bytes: one DATA frame's default maximum (RFC 9113 4.2). */
export const MAX_PIECE_BYTES = 16 * 1024;

type Callback = (error?: Error | null) => void;
type WriteOne = (chunk: Buffer | string, encoding: BufferEncoding | 'buffer', callback: Callback) => void;
type Write = (chunk: unknown, encoding?: BufferEncoding | Callback, callback?: Callback) => boolean;
type End = (chunk?: unknown, encoding?: BufferEncoding | Callback, callback?: Callback) => http2.ServerHttp2Stream;

/**
 * Counts the bytes of an HTTP/2 stream's answer the connection has sent, for the send timeout (src/tls.ts) to judge
 * each stream by its own progress: the connection's (PING and SETTINGS acks, other streams) says nothing of a
 * stream its client holds back with a window of 0. Node completes a write to a stream only once the whole of it
 * went out, so a large write (a 200 KB body) would show no progress until its end however steadily it is read:
 * writes are handed to the stream in pieces of at most `pieceBytes` (MAX_PIECE_BYTES at most), each counted as it
 * completes. Returns the count so far. The send timeout's caller makes a piece no larger than what its least rate
 * moves in half a window: of 16 KiB, a reader at 1 KB/s (four times that rate) finished no piece in a 10 s window,
 * and was cut.
 *
 * The pieces are made where the answer is written (`write` and `end`), so that each goes through the stream as a
 * write of its own. Made inside the stream's `_write` instead, one after the other, they met Node's end of the
 * stream: a write made while the stream is ending with nothing buffered behind it shuts the writable side (the
 * END_STREAM on the last DATA frame), so the first piece of a last chunk ended the stream and the next failed (EOF,
 * the answer cut); and a piece of a chunk given as text, written with the text's encoding, made Node's native
 * WriteString take a Buffer for a string and abort the whole process (any answer of 16 KiB or more given as text,
 * as a transcoded gRPC answer's JSON is).
 */
export function countSentBytes(stream: http2.ServerHttp2Stream, pieceBytes: number = MAX_PIECE_BYTES): () => number {
  const pieceSize = Math.max(1, Math.min(MAX_PIECE_BYTES, Math.floor(pieceBytes)));
  let sent = 0;
  const writable = stream as unknown as { _write: WriteOne; _writev: unknown; write: Write; end: End };
  const writeOne = writable._write.bind(stream);
  // Chunks the stream buffered meanwhile go through `_write` one by one, in order, each counted.
  writable._writev = null;
  writable._write = (chunk, encoding, callback) => {
    const size = typeof chunk === 'string' ? Buffer.byteLength(chunk, encoding as BufferEncoding) : chunk.length;
    writeOne(chunk, encoding, (error) => {
      if (!error) sent += size;
      callback(error);
    });
  };
  const write = writable.write.bind(stream);
  const end = writable.end.bind(stream);
  /** `chunk` as pieces of at most `pieceSize` bytes, or undefined when it is one already (or nothing this counts). */
  const piecesOf = (chunk: unknown, encoding: unknown): Buffer[] | undefined => {
    const data = typeof chunk === 'string' ? Buffer.from(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8') : chunk;
    if (!(data instanceof Uint8Array) || data.length <= pieceSize) return undefined;
    const bytes = Buffer.from(data.buffer, data.byteOffset, data.length);
    const pieces: Buffer[] = [];
    for (let offset = 0; offset < bytes.length; offset += pieceSize) pieces.push(bytes.subarray(offset, offset + pieceSize));
    return pieces;
  };
  writable.write = (chunk, encoding, callback) => {
    const pieces = piecesOf(chunk, encoding);
    if (pieces === undefined) return write(chunk, encoding, callback);
    const done = typeof encoding === 'function' ? encoding : callback;
    for (const piece of pieces.slice(0, -1)) write(piece);
    return write(pieces.at(-1), done);
  };
  writable.end = (chunk, encoding, callback) => {
    if (typeof chunk === 'function' || chunk === undefined || chunk === null) return end(chunk, encoding, callback);
    const pieces = piecesOf(chunk, encoding);
    if (pieces === undefined) return end(chunk, encoding, callback);
    for (const piece of pieces) write(piece);
    return end(typeof encoding === 'function' ? encoding : callback);
  };
  return () => sent;
}
