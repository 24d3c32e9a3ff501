/**
 * An OpenTelemetry Context that derives without copying. The API's own (BaseContext in @opentelemetry/api 1.x)
 * copies its whole Map, and makes three closures, for every `setValue`: a traced request derives four
 * (its span, the trace's random flag, the request id's baggage, the CLIENT span for `traceparent`), ~4.4k
 * instructions per proxied request in `new Map(parent)` alone (bench/RESULTS.md, perf77). Here each
 * `setValue` is one small object over the context it came from; a lookup walks those layers, newest first, then
 * asks the context the layers started from.
 * Read through the Context interface (getValue, setValue, deleteValue) it is indistinguishable from the API's:
 * a value set is returned until set again, a deleted one reads as unset, nothing changes a context once made.
 */
import { ROOT_CONTEXT, type Context } from '@opentelemetry/api';

/**
 * Most layers over one base: past it, the layers are written into the API's context at once and that one derives
 * by copying again, so a context derived in a loop does not make every later lookup slower. A request makes about
 * five.
 */
const MAX_LAYERS = 32;

/** The key of the first layer, which holds nothing: no one asks for it. */
const NO_KEY = Symbol('layered context: no key');

/** `parent` as a context whose derivations are layers (itself when it already is one). */
export function layeredContext(parent: Context): Context {
  return parent instanceof LayeredContext ? parent : new LayeredContext(parent, undefined, NO_KEY, undefined, 0);
}

class LayeredContext implements Context {
  constructor(
    /** The context the layers started from. */
    private readonly base: Context,
    /** The layer this one was derived from; undefined for the first. */
    private readonly below: LayeredContext | undefined,
    private readonly key: symbol,
    private readonly value: unknown,
    private readonly depth: number,
  ) {}

  getValue(key: symbol): unknown {
    let layer: LayeredContext | undefined = this;
    do {
      if (layer.key === key) return layer.value;
      layer = layer.below;
    } while (layer !== undefined);
    const base = this.base;
    return base === ROOT_CONTEXT ? undefined : base.getValue(key);
  }

  setValue(key: symbol, value: unknown): Context {
    if (this.depth < MAX_LAYERS) return new LayeredContext(this.base, this, key, value, this.depth + 1);
    return this.flattened().setValue(key, value);
  }

  /** A deleted value reads as unset, as in the API's context (whose getValue answers undefined for either). */
  deleteValue(key: symbol): Context {
    if (this.depth < MAX_LAYERS) return new LayeredContext(this.base, this, key, undefined, this.depth + 1);
    return this.flattened().deleteValue(key);
  }

  /** The base with every layer's value set on it, oldest first, as the API's context. */
  private flattened(): Context {
    const layers: LayeredContext[] = [];
    for (let layer: LayeredContext | undefined = this; layer !== undefined; layer = layer.below) layers.push(layer);
    let context = this.base;
    for (let i = layers.length - 1; i >= 0; i--) {
      const layer = layers[i]!;
      if (layer.key !== NO_KEY) context = context.setValue(layer.key, layer.value);
    }
    return context;
  }
}
