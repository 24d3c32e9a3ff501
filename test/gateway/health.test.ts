import { startStack, type TestStack } from '../helpers/stack';
import { refusedOrigin } from '../helpers/servers';

describe('health and readiness', () => {
  let stack: TestStack;
  afterEach(() => stack?.close());

  it('GET /health answers for the gateway itself, without a token', async () => {
    stack = await startStack();
    const response = await fetch(`${stack.gateway.url}/health`);
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ status: 'ok', service: 'gateway' });
    expect(stack.serviceRequests()).toHaveLength(0);
  });

  it('GET /ready reports each upstream as up', async () => {
    stack = await startStack();
    const response = await fetch(`${stack.gateway.url}/ready`);
    expect(response.status).toBe(200);
    const body = (await response.json()) as { status: string; services: Record<string, { status: string }> };
    expect(body.status).toBe('ready');
    expect(Object.keys(body.services).sort()).toEqual(['notifications', 'orders', 'users']);
    expect(Object.values(body.services).every((service) => service.status === 'up')).toBe(true);
  });

  it('GET /ready answers 503 naming the upstream that is down', async () => {
    stack = await startStack({ serviceUrls: { notifications: await refusedOrigin() } });
    const response = await fetch(`${stack.gateway.url}/ready`);
    expect(response.status).toBe(503);
    expect(await response.json()).toMatchObject({ status: 'degraded', services: { notifications: { status: 'down', detail: 'ECONNREFUSED' }, users: { status: 'up' } } });
    // The gateway itself keeps serving.
    expect((await fetch(`${stack.gateway.url}/health`)).status).toBe(200);
  });
});
