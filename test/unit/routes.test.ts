import { parseConfig } from '../../src/config';
import { compileRoutes, type RouteMatch } from '../../src/routes';
import { createUpstreamPools } from '../../src/upstream-pool';
import { shippedConfigFile } from '../helpers/test-config';

describe('route table', () => {
  const file = shippedConfigFile();
  (file.routes as unknown[]).push({ name: 'orders-admin', prefix: '/api/orders/admin', service: 'orders', upstreamPath: '/admin/orders', timeoutMs: 1234 });
  const config = parseConfig(file);
  const table = compileRoutes(config, createUpstreamPools(config.services));
  const matched = (path: string, method = 'GET') => {
    const match = table.match(path, method);
    return match?.kind === 'matched' ? (match as RouteMatch) : undefined;
  };

  it.each([
    { desc: 'the prefix itself', method: 'POST', path: '/api/users', route: 'users', upstream: '/users' },
    { desc: 'an exact route refining a prefix for its method', method: 'GET', path: '/api/users', route: 'users-directory', upstream: '/users' },
    { desc: 'a path below the prefix', method: 'GET', path: '/api/users/1', route: 'users', upstream: '/users/1' },
    { desc: 'a trailing slash', method: 'GET', path: '/api/users/', route: 'users', upstream: '/users/' },
    { desc: 'the longest prefix first', method: 'GET', path: '/api/orders/admin/7', route: 'orders-admin', upstream: '/admin/orders/7' },
    { desc: 'the shorter prefix otherwise', method: 'GET', path: '/api/orders/7', route: 'orders', upstream: '/orders/7' },
    { desc: 'an exact route', method: 'POST', path: '/api/auth/register', route: 'register', upstream: '/users' },
    { desc: 'encoded bytes kept as sent', method: 'GET', path: '/api/users/john%20doe', route: 'users', upstream: '/users/john%20doe' },
  ])('matches $desc', ({ path, method, route, upstream }) => {
    const match = matched(path, method);
    expect(match?.route.name).toBe(route);
    expect(match?.upstreamPath).toBe(upstream);
  });

  it.each([
    { desc: 'a longer first segment', path: '/api/usersX/1' },
    { desc: 'a shorter prefix', path: '/api/user' },
    { desc: 'another case', path: '/API/users/1' },
    { desc: 'below an exact route', path: '/api/auth/register/extra' },
    { desc: 'the root', path: '/' },
  ])('does not match $desc', ({ path }) => {
    expect(table.match(path, 'GET')).toBeUndefined();
  });

  it('reports the allowed methods when only other methods have a route', () => {
    expect(table.match('/api/auth/register', 'GET')).toEqual({ kind: 'method_not_allowed', allowed: ['POST'] });
  });

  it('derives per-route timeouts, roles, and keeps the service origin only', () => {
    expect(matched('/api/orders/admin')!.route.timeoutMs).toBe(1234);
    expect(matched('/api/orders')!.route.timeoutMs).toBe(10_000);
    expect(matched('/api/users/1')!.route.pool.health().map((instance) => instance.origin)).toEqual(['http://127.0.0.1:4001']);
    expect([...matched('/api/users')!.route.roles!]).toEqual(['admin']);
  });
});
