import * as protobuf from 'protobufjs';
import { fieldNamed, isTextSettable, jsonFromText, JsonMappingError, JsonNumberText, messageFromJson } from './json-mapping';
import { comparePrecedence, matchPathTemplate, parsePathTemplate, type PathBinding, type PathTemplate } from './path-template';
import { loadProtoRoot } from './proto-files';
import type { ProtoSources } from './proto-sources';

/**
 * A gRPC service's REST surface, compiled once from the `google.api.http` annotations of its proto
 * (google/api/http.proto): each binding is an HTTP method and path template for one RPC, with the request
 * body bound to the whole message (`body: "*"`), to one field, or to nothing; fields bound by neither come
 * from query parameters.
 */

export interface GrpcMethod {
  /** `/package.Service/Method`, the HTTP/2 path of the call. */
  readonly path: string;
  readonly service: string;
  readonly name: string;
  readonly requestType: protobuf.Type;
  readonly responseType: protobuf.Type;
  /** Server streaming: the answer is newline-delimited JSON. */
  readonly serverStreaming: boolean;
}

export interface HttpBinding {
  /** Upper case; `GET` bindings also take `HEAD`. */
  readonly httpMethod: string;
  readonly template: PathTemplate;
  /** `*`: the body is the message; a field name (lowerCamelCase): the body is that field; undefined: no body. */
  readonly body: '*' | string | undefined;
  readonly method: GrpcMethod;
}

export interface BindingMatch {
  kind: 'matched';
  binding: HttpBinding;
  variables: PathBinding[];
}

export interface GrpcServiceMapping {
  readonly service: string;
  readonly bindings: readonly HttpBinding[];
  /**
   * The binding for a request (path = the route's upstream path). A path that fits only other methods'
   * templates is `method_not_allowed` with their methods; a path that fits none is undefined.
   */
  find(httpMethod: string, path: string): BindingMatch | { kind: 'method_not_allowed'; allowed: string[] } | undefined;
}

/** Query parameters beyond this many are refused (400), before any is applied. */
export const MAX_QUERY_PARAMETERS = 256;

const HTTP_VERBS = ['get', 'put', 'post', 'delete', 'patch'] as const;

interface HttpRuleOption {
  get?: string;
  put?: string;
  post?: string;
  delete?: string;
  patch?: string;
  custom?: unknown;
  body?: string;
  response_body?: string;
  additional_bindings?: HttpRuleOption | HttpRuleOption[];
}

/**
 * Loads `protoFile` (from `sources` when given: loadProtoRoot) and compiles the bindings of `serviceName`; throws
 * naming the proto and method on any problem.
 */
export function loadGrpcServiceMapping(protoFile: string, serviceName: string, sources?: ProtoSources): GrpcServiceMapping {
  const root = loadProtoRoot(protoFile, sources);
  let service: protobuf.Service;
  try {
    service = root.lookupService(serviceName);
  } catch {
    throw new Error(`proto ${protoFile}: no service ${serviceName}`);
  }
  const bindings: HttpBinding[] = [];
  for (const rpc of service.methodsArray) {
    const where = `proto ${protoFile}: ${serviceName}.${rpc.name}`;
    const rule = httpRuleOf(rpc);
    if (!rule) continue; // no mapping: not reachable through the gateway
    if (rpc.requestStream) throw new Error(`${where}: client-streaming methods cannot be mapped to HTTP`);
    const method: GrpcMethod = {
      path: `/${serviceName}/${rpc.name}`,
      service: serviceName,
      name: rpc.name,
      requestType: rpc.resolvedRequestType!,
      responseType: rpc.resolvedResponseType!,
      serverStreaming: Boolean(rpc.responseStream),
    };
    const additional = rule.additional_bindings === undefined ? [] : [rule.additional_bindings].flat();
    for (const each of [rule, ...additional]) bindings.push(compileBinding(each, method, where));
  }
  // In the reference matcher's order (comparePrecedence): `/v1/things/special` is tried before `/v1/things/{id}`.
  bindings.sort((a, b) => comparePrecedence(a.template, b.template));

  return {
    service: serviceName,
    bindings,
    find(httpMethod, path) {
      const wanted = httpMethod === 'HEAD' ? 'GET' : httpMethod;
      const allowed = new Set<string>();
      for (const binding of bindings) {
        const variables = matchPathTemplate(binding.template, path);
        if (!variables) continue;
        if (binding.httpMethod === wanted) return { kind: 'matched', binding, variables };
        allowed.add(binding.httpMethod);
        // HEAD is served wherever GET is (above), and Allow says so, as the route table's 405 does.
        if (binding.httpMethod === 'GET') allowed.add('HEAD');
      }
      return allowed.size > 0 ? { kind: 'method_not_allowed', allowed: [...allowed] } : undefined;
    },
  };
}

function httpRuleOf(rpc: protobuf.Method): HttpRuleOption | undefined {
  for (const option of rpc.parsedOptions ?? []) {
    const rule = (option as Record<string, unknown>)['(google.api.http)'];
    if (rule) return rule as HttpRuleOption;
  }
  return undefined;
}

function compileBinding(rule: HttpRuleOption, method: GrpcMethod, where: string): HttpBinding {
  const verbs = HTTP_VERBS.filter((verb) => typeof rule[verb] === 'string');
  if (rule.custom !== undefined) throw new Error(`${where}: custom HTTP methods are not supported`);
  if (verbs.length !== 1) throw new Error(`${where}: an http rule needs exactly one of ${HTTP_VERBS.join(', ')}`);
  if (rule.response_body !== undefined) throw new Error(`${where}: response_body is not supported`);
  const verb = verbs[0]!;
  let template: PathTemplate;
  try {
    template = parsePathTemplate(rule[verb]!);
  } catch (error) {
    throw new Error(`${where}: ${(error as Error).message}`);
  }
  for (const variable of template.variables) {
    const field = fieldAt(method.requestType, variable.fieldPath);
    if (!field || field.repeated || (field.resolvedType instanceof protobuf.Type && !isTextSettable(field.resolvedType))) {
      throw new Error(`${where}: path variable {${variable.fieldPath.join('.')}} names no singular field of ${method.requestType.name}`);
    }
  }
  let body: HttpBinding['body'];
  if (rule.body === '*') body = '*';
  else if (rule.body) {
    const field = protoNamed(method.requestType, rule.body);
    if (!field) throw new Error(`${where}: body "${rule.body}" names no field of ${method.requestType.name}`);
    body = field.name;
  }
  return { httpMethod: verb.toUpperCase(), template, body, method };
}

/** The field at a path of proto field names (as templates and `body` name them), through singular message fields. */
function fieldAt(type: protobuf.Type, path: readonly string[]): protobuf.Field | undefined {
  let current: protobuf.Type = type;
  for (let index = 0; index < path.length; index++) {
    const field = protoNamed(current, path[index]!);
    if (!field) return undefined;
    if (index === path.length - 1) return field;
    if (field.repeated || field instanceof protobuf.MapField || !(field.resolvedType instanceof protobuf.Type)) return undefined;
    current = field.resolvedType;
  }
  return undefined;
}

/** The field of `type` whose name in the proto is `name`. */
function protoNamed(type: protobuf.Type, name: string): protobuf.Field | undefined {
  return type.fieldsArray.find((field) => field.protoName === name);
}

/**
 * The query string as parameters, refusing a name or value whose percent-encoding is not UTF-8
 * (URLSearchParams would turn `%ff` into U+FFFD, a character the client never sent), as path variables are.
 */
export function parseQuery(raw: string): URLSearchParams {
  for (const part of raw.split('&')) {
    try {
      decodeURIComponent(part.replaceAll('+', ' '));
    } catch {
      throw new JsonMappingError(`the query parameter ${truncate(part)} is not percent-encoded UTF-8`);
    }
  }
  return new URLSearchParams(raw);
}

/**
 * The request message from the three sources, in the annotation's precedence: the body (the whole message
 * or one field), then path variables, then query parameters for fields neither bound. Throws
 * JsonMappingError (-> 400) when any part does not fit the message type.
 */
export function buildRequestMessage(binding: HttpBinding, variables: readonly PathBinding[], body: unknown, query: URLSearchParams): protobuf.Message {
  const type = binding.method.requestType;
  let json: Record<string, unknown> = {};
  if (binding.body === '*') {
    if (body !== undefined) {
      if (typeof body !== 'object' || body === null || Array.isArray(body) || body instanceof JsonNumberText) throw new JsonMappingError('the request body must be a JSON object');
      json = { ...(body as Record<string, unknown>) };
    }
  } else if (binding.body !== undefined && body !== undefined) {
    json[binding.body] = body;
  }
  // Field paths the path bound, by the fields they reach: a query parameter may name one by any of its names.
  const bound = new Set<string>();
  for (const { fieldPath, value } of variables) {
    const where = `path variable ${fieldPath.join('.')}`;
    const fields = fieldsAt(type, fieldPath, protoNamed, where);
    setText(type, json, fields, value, false, where);
    bound.add(pathKey(fields));
  }
  if (binding.body !== '*') {
    let count = 0;
    for (const [key, value] of query) {
      if (++count > MAX_QUERY_PARAMETERS) throw new JsonMappingError(`more than ${MAX_QUERY_PARAMETERS} query parameters`);
      const where = `query parameter ${truncate(key)}`;
      // JSON names (`displayName`, a `json_name`) or proto names (`display_name`), as grpc-gateway reads them.
      const fields = fieldsAt(type, key.split('.'), fieldNamed, where);
      if (bound.has(pathKey(fields))) throw new JsonMappingError(`${where} is already bound by the path`);
      if (binding.body !== undefined && fields[0]!.name === binding.body) throw new JsonMappingError(`${where} is bound by the body`);
      setText(type, json, fields, value, true, where);
    }
  }
  return messageFromJson(type, json);
}

/** The fields a dotted name reaches from `type`, through singular message fields, each name looked up by `named`. */
function fieldsAt(type: protobuf.Type, names: readonly string[], named: (type: protobuf.Type, name: string) => protobuf.Field | undefined, where: string): protobuf.Field[] {
  const fields: protobuf.Field[] = [];
  let current = type;
  names.forEach((name, index) => {
    const field = named(current, name);
    if (!field) throw new JsonMappingError(`${where} names no field of ${current.name}`);
    fields.push(field);
    if (index === names.length - 1) return;
    if (field.repeated || field instanceof protobuf.MapField || !(field.resolvedType instanceof protobuf.Type)) throw new JsonMappingError(`${where}: ${field.name} is not a message`);
    current = field.resolvedType;
  });
  return fields;
}

function pathKey(fields: readonly protobuf.Field[]): string {
  return fields.map((field) => field.name).join('.');
}

/** Sets one text value at a field path of the JSON being built (keyed by protobufjs's names); repeated fields collect every occurrence. */
function setText(type: protobuf.Type, json: Record<string, unknown>, fields: readonly protobuf.Field[], text: string, repeatable: boolean, where: string): void {
  let current: protobuf.Type = type;
  let node = json;
  fields.forEach((field, index) => {
    if (index === fields.length - 1) {
      if (field instanceof protobuf.MapField) throw new JsonMappingError(`${where} is a map and cannot be set from text`);
      const value = jsonFromText(field, text, where);
      const previous = takeField(current, node, field);
      if (field.repeated) {
        if (!repeatable) throw new JsonMappingError(`${where} is repeated`);
        const list = Array.isArray(previous) ? (previous as unknown[]) : [];
        list.push(value);
        node[field.name] = list;
      } else {
        // `?type=a&type=b` for one value: which one the client meant is a guess (grpc-gateway refuses it too).
        // (Only from the query: there `previous` can only be an earlier parameter; a path variable replaces the body's value.)
        if (repeatable && previous !== undefined) throw new JsonMappingError(`${where} is given more than once, but the field takes one value`);
        node[field.name] = value;
      }
      return;
    }
    const child = takeField(current, node, field);
    // A scalar or list in the body's place of a message (a JsonNumberText is an object too) is no message to set a
    // field in: replaced by {}, the body went unsent without a word. Unset and null are the field's default.
    const isMessage = typeof child === 'object' && child !== null && !Array.isArray(child) && !(child instanceof JsonNumberText);
    if (!isMessage && child !== undefined && child !== null) throw new JsonMappingError(`${type.name}.${pathKey(fields.slice(0, index + 1))} must be an object`);
    node = node[field.name] = typeof child === 'object' && child !== null && !Array.isArray(child) ? { ...(child as Record<string, unknown>) } : {};
    current = field.resolvedType as protobuf.Type;
  });
}

/**
 * What `node` (JSON of `type` being built) holds for `field`, under any of its names, leaving only protobufjs's:
 * a body's `account_id` (or `json_name`) must not survive beside the path's value (two names of one field are refused).
 */
function takeField(type: protobuf.Type, node: Record<string, unknown>, field: protobuf.Field): unknown {
  let value = node[field.name];
  for (const key of Object.keys(node)) {
    if (key !== field.name && fieldNamed(type, key) === field) {
      value ??= node[key];
      delete node[key];
    }
  }
  return value;
}

function truncate(text: string): string {
  return text.length > 64 ? `${text.slice(0, 61)}...` : text;
}
