import { Metadata, status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import fc from 'fast-check';
import { HEADER } from '../../otel/wire-names';
import { duplicateJsonKey } from '../../src/grpc/json-mapping';
import { grpcFailure } from '../../src/grpc/status-errors';
import { upstreamRequestHeaders, type UpstreamRequestHeadersInput } from '../../src/upstream-headers';

describe('duplicateJsonKey: a key one JSON object names twice', () => {
  it.each([
    ['{"a":1,"a":2}', 'a'],
    ['{"a":1,"\\u0061":2}', 'a'],
    ['{"outer":{"s":"first","s":"second"}}', 's'],
    ['[{"x":1},{"x":1,"y":{"z":[1,{"x":2,"x":3}]}}]', 'x'],
    ['{"k":"a,\\"b\\":{","k":0}', 'k'],
  ])('finds it in %s', (text, key) => {
    expect(duplicateJsonKey(text)).toBe(key);
  });

  it.each(['{}', '[]', '"a"', '{"a":{"a":{"a":1}}}', '[{"a":1},{"a":2}]', '{"a":"{\\"a\\":1}","b":["a","a"]}', '{"a,":1,"a":2}'])('finds none in %s', (text) => {
    expect(duplicateJsonKey(text)).toBeUndefined();
  });

  it('finds none in any JSON text JSON.stringify writes (generated)', () => {
    fc.assert(fc.property(fc.jsonValue(), (value) => duplicateJsonKey(JSON.stringify(value)) === undefined), { seed: 20261202, numRuns: 500 });
  });

  it('finds the key named twice, however the object around it looks (generated)', () => {
    fc.assert(
      fc.property(fc.dictionary(fc.string(), fc.jsonValue(), { minKeys: 1 }), fc.jsonValue(), (object, again) => {
        const [key] = Object.keys(object);
        const text = `${JSON.stringify(object).slice(0, -1)},${JSON.stringify(key)}:${JSON.stringify(again)}}`;
        return duplicateJsonKey(text) === key;
      }),
      { seed: 20261202, numRuns: 500 },
    );
  });
});

describe('grpcFailure: an answer over the receive limit', () => {
  const failure = (code: GrpcStatus, details: string): ServiceError => Object.assign(new Error(details), { code, details, metadata: new Metadata() });

  it('is the service answering something the gateway cannot forward (502), not the caller over a quota (429)', () => {
    const error = grpcFailure('echo', failure(GrpcStatus.RESOURCE_EXHAUSTED, 'Received message larger than max (5242893 vs 4194304)'));
    expect(error).toMatchObject({ code: 'upstream_bad_response', status: 502 });
    expect(error.message).not.toContain('4194304');
  });

  it.each([
    ['grpc-js or grpc-core', 'Received message larger than max (1605 vs 1000)'],
    ['grpc-go', 'grpc: received message larger than max (1605 vs. 1000)'],
    ['grpc-java', 'gRPC message exceeds maximum size 1000: 1605'],
  ])("is the request over the service's receive limit (413) in the words of %s", (_desc, details) => {
    expect(grpcFailure('echo', failure(GrpcStatus.RESOURCE_EXHAUSTED, details))).toMatchObject({ code: 'payload_too_large', status: 413 });
  });

  it('leaves a RESOURCE_EXHAUSTED the service sent as the service said it (429)', () => {
    expect(grpcFailure('echo', failure(GrpcStatus.RESOURCE_EXHAUSTED, 'quota exceeded'))).toMatchObject({ code: 'grpc_resource_exhausted', status: 429, message: 'quota exceeded' });
  });
});

describe('upstreamRequestHeaders: an API key never leaves the gateway', () => {
  const base: UpstreamRequestHeadersInput = { client: {}, underscores: 'allow', forwardAuthorization: true, targetHost: 'users:4001', requestId: 'r', peerAddress: '127.0.0.1', publicHost: 'gw', publicProto: 'http', publicPort: '80', timestamp: 't' };
  it.each([
    ['Authorization: ApiKey<TAB>key', { authorization: 'ApiKey\tk_secret' }],
    ['Authorization: apikey<SP><SP>key', { authorization: 'apikey  k_secret' }],
    ['Authorization: ApiKey alone', { authorization: 'ApiKey' }],
    ['X_API_Key (underscores allowed)', { x_api_key: 'k_secret' }],
    ['X_Api-Key (underscores allowed)', { 'x_api-key': 'k_secret' }],
  ])('drops %s on a route that forwards Authorization', (_desc, client) => {
    const headers = upstreamRequestHeaders({ ...base, client });
    expect(JSON.stringify(headers)).not.toMatch(/k_secret|apikey/i);
  });

  it('still forwards a bearer token where the route says so', () => {
    expect(upstreamRequestHeaders({ ...base, client: { authorization: 'Bearer abc' } })[HEADER.authorization]).toBe('Bearer abc');
  });
});
