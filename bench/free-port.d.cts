/** bench/free-port.cjs: a loopback port free a moment ago, below the kernel's range for outgoing connections' local ports. */
export function freePort(): Promise<number>;
