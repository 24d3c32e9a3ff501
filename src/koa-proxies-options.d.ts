// koa-proxies passes these through to http-proxy but its index.d.ts omits them.
import 'koa-proxies';

declare module 'koa-proxies' {
  interface IBaseKoaProxiesOptions {
    xfwd?: boolean;
    proxyTimeout?: number;
    preserveHeaderKeyCase?: boolean;
  }
}
