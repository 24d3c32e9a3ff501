import { z } from 'zod';

/**
 * A service instance's URL as the gateway's config and the services' environment take it: an http(s) origin only.
 * Whoever calls it puts its own path after the origin, so a path, query or credentials here would be dropped without
 * a word (traffic meant for `http://mesh/users-svc` would reach the mesh's root), and port 0 names no listener (a
 * connection to it is refused, always). `pathAdvice` says where a path goes instead.
 */
export function serviceOrigin(pathAdvice: string) {
  return (
    z
      .url({ protocol: /^https?$/, error: 'must be an http(s) URL' })
      // Zod runs these checks after a failed URL check too: `new URL` threw, and startup ended with a bare
      // "Invalid URL" naming neither the key nor the value (a reload called it a bug). The URL check said why.
      .refine((value) => {
        if (!URL.canParse(value)) return true;
        const url = new URL(value);
        return (url.pathname === '/' || url.pathname === '') && url.search === '' && url.hash === '' && url.username === '' && url.password === '' && !/[?#@]/.test(value);
      }, `must be an origin (scheme, host, port) without path, query, fragment or credentials: ${pathAdvice}`)
      .refine((value) => !URL.canParse(value) || new URL(value).port !== '0', 'must name a port other than 0: no service listens there')
  );
}
