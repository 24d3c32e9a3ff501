import { parseConfig } from '../../src/config';
import { compileRoutes } from '../../src/routes';
import { shippedConfigFile } from '../helpers/test-config';

describe('route table', () => {
  const file = shippedConfigFile();
  (file.routes as unknown[]).push({ name: 'orders-admin', prefix: '/api/orders/admin', service: 'orders', upstreamPath: '/admin/orders', timeoutMs: 1234 });
  const table = compileRoutes(parseConfig(file));

  it.each([
    { desc: 'the prefix itself', path: '/api/users', route: 'users', upstream: '/users' },
    { desc: 'a path below the prefix', path: '/api/users/1', route: 'users', upstream: '/users/1' },
    { desc: 'a trailing slash', path: '/api/users/', route: 'users', upstream: '/users/' },
    { desc: 'the longest prefix first', path: '/api/orders/admin/7', route: 'orders-admin', upstream: '/admin/orders/7' },
    { desc: 'the shorter prefix otherwise', path: '/api/orders/7', route: 'orders', upstream: '/orders/7' },
    { desc: 'an exact route', path: '/api/auth/register', route: 'register', upstream: '/users' },
    { desc: 'encoded bytes kept as sent', path: '/api/users/john%20doe', route: 'users', upstream: '/users/john%20doe' },
  ])('matches $desc', ({ path, route, upstream }) => {
    const match = table.match(path);
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
    expect(table.match(path)).toBeUndefined();
  });

  it('derives per-route timeouts and keeps the service origin only', () => {
    expect(table.match('/api/orders/admin')!.route.timeoutMs).toBe(1234);
    expect(table.match('/api/orders')!.route.timeoutMs).toBe(10_000);
    expect(table.match('/api/users')!.route.target).toBe('http://127.0.0.1:4001');
  });
});
