/**
 * A wall clock a test steps as NTP or a resumed VM does: Date.now() moves, performance.now() and process.hrtime() do
 * not. Installed before what is tested is made, so that code keeping `Date.now` itself as its clock reads it too.
 */
export function steppableWallClock() {
  const realNow = Date.now;
  let offsetMs = 0;
  return {
    install(): void {
      offsetMs = 0;
      Date.now = () => realNow() + offsetMs;
    },
    /** Steps it `ms` from the real wall clock (negative: back). */
    step(ms: number): void {
      offsetMs = ms;
    },
    restore(): void {
      Date.now = realNow;
    },
  };
}
