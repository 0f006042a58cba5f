// Wharf's JavaScript SDK: a service's routes and the platform's interfaces (who
// is calling, modules and settings, the instance's SQL database and key-value
// store, jobs), over the bindings ComponentizeJS generates from `wit/` when the
// service is built (`sdk/js/build.sh`). Its types are in `index.d.ts`.
//
//   import { App, Response, sql } from "wharf";
//
//   const app = new App();
//   app.get("/notes", () => sql.query("SELECT id, body FROM notes ORDER BY id"));
//   export const incomingHandler = app.handler();
//
// Errors the platform reports (a refused statement, a quota, a busy database) are
// thrown as `WharfError` (500) with the platform's message, prefixed as the Rust
// SDK prefixes it ("database: ...", "key-value: ...", "jobs: ...").

import * as identity from "wharf:platform/identity@0.1.0";
import * as platformFeatures from "wharf:platform/features@0.1.0";
import * as platformSql from "wharf:platform/sql@0.1.0";
import * as platformKv from "wharf:platform/kv@0.1.0";
import * as platformJobs from "wharf:platform/jobs@0.1.0";
import { Fields, IncomingBody, OutgoingBody, OutgoingResponse, ResponseOutparam } from "wasi:http/types@0.2.10";

/** A failure the client should see: its status and message. */
export class WharfError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "WharfError";
    this.status = status;
  }
  static badRequest(message) {
    return new WharfError(400, message);
  }
  static unauthorized(message) {
    return new WharfError(401, message);
  }
  static forbidden(message) {
    return new WharfError(403, message);
  }
  static notFound(message) {
    return new WharfError(404, message);
  }
  static conflict(message) {
    return new WharfError(409, message);
  }
  static internal(message) {
    return new WharfError(500, message);
  }
}

// Call a platform import, turning its error into a WharfError (500, the message
// prefixed with `store`).
function call(store, fn, ...args) {
  try {
    return fn(...args);
  } catch (e) {
    if (e && Object.prototype.hasOwnProperty.call(e, "payload")) {
      throw new WharfError(500, `${store}: ${e.payload}`);
    }
    throw e;
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });
// For stored text: invalid bytes become U+FFFD, as the Rust SDK's `get_string`.
const lenient = new TextDecoder();

function bytes(value, what) {
  if (typeof value === "string") return encoder.encode(value);
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  throw new TypeError(`${what} is a string or a Uint8Array, not ${typeof value}`);
}

// Bytes the platform returned (the bindings lift some lists of u8 as arrays).
function asBytes(value) {
  return value instanceof Uint8Array ? value : Uint8Array.from(value);
}

// A bigint the platform returned, as a number when it is exactly one.
function integer(value) {
  return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
}

// A count of seconds or milliseconds: a finite number, rounded up, at least `least`.
function whole(value, what, least) {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new TypeError(`${what} is a number of at least 0, not ${value}`);
  return Math.max(least, Math.ceil(n));
}

// --- who is calling ------------------------------------------------------------

/** The request's caller, `{ userId, email }`, or null for anonymous requests and
 * credentials of anyone outside the tenant. */
export function caller() {
  const user = identity.caller();
  return user === undefined ? null : { userId: user.userId, email: user.email };
}

/** Whether the caller holds `permission`, a name the manifest declares. */
export function allowed(permission) {
  return identity.allowed(permission);
}

/** The caller, if they hold `permission`; else a WharfError 401 or 403. */
export function require(permission) {
  const user = caller();
  if (user === null) throw new WharfError(401, "sign in first");
  if (!allowed(permission)) throw new WharfError(403, `you need the ${permission} permission`);
  return user;
}

// --- modules and settings ------------------------------------------------------

export const features = {
  /** Ids of the modules this instance has enabled. */
  enabledModules() {
    return platformFeatures.enabledModules();
  },
  /** Whether module `id` is enabled. */
  isEnabled(id) {
    return platformFeatures.isEnabled(id);
  },
  /** One setting, or `fallback` (null unless given) if the tenant did not set it. */
  setting(key, fallback = null) {
    const value = platformFeatures.setting(key);
    return value === undefined ? fallback : value;
  },
  /** Every setting, as an object. */
  settings() {
    return Object.fromEntries(platformFeatures.settings());
  },
};

// --- SQL -----------------------------------------------------------------------

/** A parameter bound as a real, for a number that is whole (`sql.real(1)`). */
class Real {
  constructor(value) {
    this.value = value;
  }
}

function toValue(value, index) {
  if (value === null || value === undefined) return { tag: "null" };
  if (value instanceof Real) return { tag: "real", val: value.value };
  switch (typeof value) {
    case "boolean":
      return { tag: "integer", val: value ? 1n : 0n };
    case "bigint":
      return { tag: "integer", val: value };
    case "number":
      return Number.isInteger(value) ? { tag: "integer", val: BigInt(value) } : { tag: "real", val: value };
    case "string":
      return { tag: "text", val: value };
  }
  if (value instanceof Uint8Array) return { tag: "blob", val: value };
  throw new TypeError(
    `SQL parameter ?${index + 1} is null, a boolean, number, bigint, string or Uint8Array, not ${typeof value}`,
  );
}

function fromValue(value) {
  switch (value.tag) {
    case "null":
      return null;
    case "integer":
      return integer(value.val);
    case "blob":
      return asBytes(value.val);
    default:
      return value.val;
  }
}

function values(params) {
  if (!Array.isArray(params)) throw new TypeError("SQL parameters are an array (?1 is its first)");
  return params.map(toValue);
}

export const sql = {
  /** `"sqlite"` or `"postgres"`: which database the instance has. */
  dialect() {
    return platformSql.dialect();
  },
  /** Rows of one statement, as objects by column name (parameters bind to ?1, ?2, ...). */
  query(statement, params = []) {
    const result = call("database", platformSql.query, statement, values(params));
    return result.rows.map((row) => {
      const object = {};
      result.columns.forEach((column, i) => {
        object[column] = fromValue(row[i]);
      });
      return object;
    });
  },
  /** The first row, or null. */
  queryOne(statement, params = []) {
    const rows = sql.query(statement, params);
    return rows.length > 0 ? rows[0] : null;
  },
  /** Run one statement that changes data or schema; rows changed. */
  execute(statement, params = []) {
    return integer(call("database", platformSql.execute, statement, values(params)));
  },
  /** Run `[statement, params]` pairs in one transaction: all apply or none does. */
  batch(statements) {
    const changed = call(
      "database",
      platformSql.batch,
      statements.map(([statement, params = []]) => [statement, values(params)]),
    );
    return Array.from(changed, integer);
  },
  /** Bind `value` as a real even when it is whole. */
  real(value) {
    return new Real(value);
  },
};

// --- key-value -------------------------------------------------------------------

export const kv = {
  /** The value (bytes) at `key`, or null if absent or expired. */
  get(key) {
    const value = call("key-value", platformKv.get, key);
    return value === undefined ? null : asBytes(value);
  },
  /** The value at `key` as text, or null. */
  getText(key) {
    const value = kv.get(key);
    return value === null ? null : lenient.decode(value);
  },
  /** Set `key` to `value` (a string or bytes); with `ttlSeconds` it expires. */
  set(key, value, { ttlSeconds } = {}) {
    // Whole seconds, at least one (as the Rust SDK rounds a Duration).
    const ttl = ttlSeconds === undefined || ttlSeconds === null ? undefined : BigInt(whole(ttlSeconds, "ttlSeconds", 1));
    call("key-value", platformKv.set, key, bytes(value, "a key-value value"), ttl);
  },
  /** Delete `key`; whether it existed. */
  delete(key) {
    return call("key-value", platformKv.delete, key);
  },
  /** Keys starting with `prefix`, sorted, at most `limit` (≤ 1000). */
  listKeys(prefix = "", limit = 1000) {
    return call("key-value", platformKv.listKeys, prefix, limit);
  },
  /** Add `delta` to the integer at `key` (0 if absent); the result. */
  increment(key, delta = 1) {
    return integer(call("key-value", platformKv.increment, key, BigInt(delta)));
  },
};

// --- jobs ------------------------------------------------------------------------

export const jobs = {
  /** Queue a job of `kind` (declared in the manifest); its id. */
  enqueue(kind, payload = "", options = {}) {
    const { version = 1, delayMs = 0, idempotencyKey, priority = 0, maxAttempts } = options;
    return call("jobs", platformJobs.enqueue, kind, bytes(payload, "a job's payload"), {
      version,
      delayMs: BigInt(whole(delayMs, "delayMs", 0)),
      idempotencyKey: idempotencyKey ?? undefined,
      priority,
      maxAttempts: maxAttempts ?? undefined,
    });
  },
};

/** One job to run, as a job handler gets it. */
class Job {
  constructor(job) {
    this.id = job.id;
    this.kind = job.kind;
    this.version = job.version;
    this.payload = asBytes(job.payload);
    this.attempt = job.attempt;
    this.enqueuedBy = job.enqueuedBy;
  }
  /** The payload as text. */
  text() {
    try {
      return decoder.decode(this.payload);
    } catch {
      throw new Error(`job ${this.id} has a payload that is not UTF-8`);
    }
  }
  /** The payload parsed as JSON. */
  json() {
    try {
      return JSON.parse(this.text());
    } catch (e) {
      throw new Error(`job ${this.id} has an invalid JSON payload: ${e.message}`);
    }
  }
}

// --- HTTP ------------------------------------------------------------------------

/** A request as a handler sees it: method, path, query, headers, params, body.
 * Its headers and body are read from the platform when first asked for. */
export class Request {
  constructor(method, pathWithQuery, headers, body) {
    const query = pathWithQuery.indexOf("?");
    this.method = method;
    this.path = (query < 0 ? pathWithQuery : pathWithQuery.slice(0, query)) || "/";
    this.queryString = query < 0 ? "" : pathWithQuery.slice(query + 1);
    this.params = {};
    // Either the values, or the wasi:http request to read them from.
    this.incoming = null;
    this.cachedHeaders = headers ?? null;
    this.cachedBody = body ?? null;
    this.cachedQuery = null;
  }
  /** Query parameters, percent-decoded. */
  get query() {
    return (this.cachedQuery ??= new URLSearchParams(this.queryString));
  }
  /** The headers (names are case-insensitive). */
  get headers() {
    return (this.cachedHeaders ??= this.incoming === null ? new Headers() : readHeaders(this.incoming));
  }
  /** The whole body. */
  get body() {
    return (this.cachedBody ??= this.incoming === null ? new Uint8Array(0) : readBody(this.incoming));
  }
  /** The body as UTF-8 text; 400 if it is not. */
  text() {
    try {
      return decoder.decode(this.body);
    } catch {
      throw WharfError.badRequest("the request body is not UTF-8 text");
    }
  }
  /** The body parsed as JSON; 400 with the parser's message if it does not parse. */
  json() {
    if (this.body.length === 0) throw WharfError.badRequest("the request body is empty; send JSON");
    const text = this.text();
    try {
      return JSON.parse(text);
    } catch (e) {
      throw WharfError.badRequest(`invalid JSON body: ${e.message}`);
    }
  }
}

const Web = globalThis.Response;

// JSON for a response: integers past 2^53 (bigints) are written as numbers.
function stringify(value) {
  return JSON.stringify(value, (_, v) => (typeof v === "bigint" ? JSON.rawJSON?.(v.toString()) ?? Number(v) : v));
}

/** A response the SDK writes straight onto wasi:http (no web `Response` in between). */
export class Reply {
  constructor(status, headers, body) {
    this.status = status;
    this.headers = headers;
    this.body = typeof body === "string" ? encoder.encode(body) : body;
  }
}

/** Responses: `Response.json(value, status)`, `Response.text(body, status)`, … (a
 * handler may return any web `Response` too). */
export const Response = {
  json(value, status = 200, headers = {}) {
    return new Reply(status, { "content-type": "application/json", ...headers }, stringify(value));
  },
  text(body, status = 200, headers = {}) {
    return new Reply(status, { "content-type": "text/plain; charset=utf-8", ...headers }, body);
  },
  html(body, status = 200, headers = {}) {
    return new Reply(status, { "content-type": "text/html; charset=utf-8", ...headers }, body);
  },
  empty(status = 204, headers = {}) {
    return new Reply(status, headers, new Uint8Array(0));
  },
};

function errorResponse(status, message, headers = {}) {
  return Response.json({ error: message }, status, headers);
}

function compile(pattern) {
  return pattern
    .split("/")
    .filter((s) => s !== "")
    .map((s) => {
      if (s.startsWith(":")) return { capture: s.slice(1) };
      if (s.startsWith("*")) return { rest: s.slice(1) };
      return { literal: s };
    });
}

function decode(segment) {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

function match(pattern, parts) {
  const params = {};
  for (let i = 0; i < pattern.length; i++) {
    const segment = pattern[i];
    if (segment.rest !== undefined) {
      params[segment.rest] = decode(parts.slice(i).join("/"));
      return params;
    }
    if (i >= parts.length) return null;
    if (segment.literal !== undefined) {
      if (parts[i] !== segment.literal) return null;
    } else {
      params[segment.capture] = decode(parts[i]);
    }
  }
  return parts.length === pattern.length ? params : null;
}

function toResponse(answer) {
  if (answer instanceof Reply || answer instanceof Web) return answer;
  if (typeof answer === "string") return Response.text(answer);
  if (answer === undefined) return Response.empty();
  return Response.json(answer);
}

function failure(e) {
  if (e instanceof WharfError) return errorResponse(e.status, e.message);
  console.error(e && e.stack ? e.stack : String(e));
  return errorResponse(500, "internal error");
}

const dispose = Symbol.dispose || Symbol.for("dispose");
const METHODS = { get: "GET", head: "HEAD", post: "POST", put: "PUT", delete: "DELETE", connect: "CONNECT",
  options: "OPTIONS", trace: "TRACE", patch: "PATCH" };

// Header bytes as text, a byte per character (HTTP's latin-1).
function latin1(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
  return text;
}

// One request off wasi:http: its method and path now, its headers and body when
// the handler asks (the request is the handler's until it returns).
function readRequest(incoming) {
  const method = incoming.method();
  const name = method.tag === "other" ? method.val : METHODS[method.tag];
  const request = new Request(name, incoming.pathWithQuery() ?? "/");
  request.incoming = incoming;
  return request;
}

function readHeaders(incoming) {
  const fields = incoming.headers();
  const headers = new Headers();
  for (const [key, value] of fields.entries()) headers.append(key, latin1(value));
  fields[dispose]?.();
  return headers;
}

function readBody(incoming) {
  const body = incoming.consume();
  const stream = body.stream();
  const chunks = [];
  let length = 0;
  for (;;) {
    let chunk;
    try {
      chunk = stream.blockingRead(65536n);
    } catch (e) {
      if (e?.payload?.tag === "closed") break;
      throw e;
    }
    chunks.push(chunk);
    length += chunk.length;
  }
  stream[dispose]?.();
  IncomingBody.finish(body)[dispose]?.();
  if (chunks.length === 1) return chunks[0];
  const bytes = new Uint8Array(length);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.length;
  }
  return bytes;
}

// A response (a Reply, or a web Response) onto wasi:http.
async function writeResponse(response, responseOut) {
  const headers = [];
  let body;
  if (response instanceof Reply) {
    for (const key in response.headers) headers.push([key, encoder.encode(String(response.headers[key]))]);
    body = response.body;
  } else {
    response.headers.forEach((value, key) => headers.push([key, encoder.encode(value)]));
    body = new Uint8Array(await response.arrayBuffer());
  }
  const outgoing = new OutgoingResponse(Fields.fromList(headers));
  outgoing.setStatusCode(response.status);
  const outgoingBody = outgoing.body();
  ResponseOutparam.set(responseOut, { tag: "ok", val: outgoing });
  const stream = outgoingBody.write();
  for (let at = 0; at < body.length; at += 4096) stream.blockingWriteAndFlush(body.subarray(at, at + 4096));
  stream[dispose]?.();
  OutgoingBody.finish(outgoingBody, undefined);
}

/** Routes (`app.get("/notes/:id", handler)` and the like), jobs and the seeder. */
export class App {
  constructor() {
    this.routes = [];
    this.jobs = new Map();
    this.seed = null;
  }

  /** A route for `method`: `/items/:id` captures a segment, `/files/*path` the rest. */
  route(method, pattern, handler) {
    this.routes.push({ method: method.toUpperCase(), pattern: compile(pattern), handler });
    return this;
  }
  get(pattern, handler) {
    return this.route("GET", pattern, handler);
  }
  post(pattern, handler) {
    return this.route("POST", pattern, handler);
  }
  put(pattern, handler) {
    return this.route("PUT", pattern, handler);
  }
  patch(pattern, handler) {
    return this.route("PATCH", pattern, handler);
  }
  delete(pattern, handler) {
    return this.route("DELETE", pattern, handler);
  }

  /** Run jobs of `kind` (declared in the manifest); throwing fails the attempt. */
  job(kind, handler) {
    this.jobs.set(kind, handler);
    return this;
  }

  /** Fill a new instance's database, once, after its first migrations. */
  seeder(handler) {
    this.seed = handler;
    return this;
  }

  /** The response to `request` (a `Request`): its route's, 404 or 405. */
  async dispatch(request) {
    const parts = request.path.split("/").filter((s) => s !== "");
    const allow = [];
    for (const { method, pattern, handler } of this.routes) {
      const params = match(pattern, parts);
      if (params === null) continue;
      if (method === request.method || (request.method === "HEAD" && method === "GET")) {
        request.params = params;
        try {
          return toResponse(await handler(request));
        } catch (e) {
          return failure(e);
        }
      }
      if (!allow.includes(method)) allow.push(method);
    }
    if (allow.length > 0) {
      const methods = allow.join(", ");
      return errorResponse(405, `${request.method} is not allowed here; use ${methods}`, { allow: methods });
    }
    return errorResponse(404, `no route for ${request.path}`);
  }

  /** The component's wasi:http incoming handler (`export const incomingHandler =
   * app.handler();`). Each call reads one request and writes one response, so an
   * instance serves as many as the platform gives it (sandbox reuse). */
  handler() {
    return {
      handle: async (incoming, responseOut) => {
        let response;
        try {
          response = await this.dispatch(readRequest(incoming));
        } catch (e) {
          response = failure(e);
        }
        await writeResponse(response, responseOut);
        // Hand the request back now rather than at the next garbage collection:
        // a reused sandbox serves many.
        incoming[dispose]?.();
      },
    };
  }

  /** The `worker` export (`export const worker = app.worker();`): runs this app's
   * jobs and its seeder. */
  worker() {
    return {
      run: async (job) => {
        const handler = this.jobs.get(job.kind);
        if (handler === undefined) return { tag: "err", val: `this version runs no job of kind ${job.kind}` };
        return settle(() => handler(new Job(job)));
      },
      seed: async () => (this.seed === null ? { tag: "ok" } : settle(this.seed)),
    };
  }
}

// Run a job or the seeder: any exception fails it with its message.
async function settle(fn) {
  try {
    await fn();
    return { tag: "ok" };
  } catch (e) {
    return { tag: "err", val: e instanceof Error ? e.message : String(e) };
  }
}
