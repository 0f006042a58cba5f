// The JavaScript SDK's edges, for its end-to-end test: SQL values both ways, the
// key-value store, the platform's refusals, exceptions, path captures, async
// handlers, and a job that fails.
import { App, Response, WharfError, jobs, kv, sql } from "wharf";

const app = new App();

const describe = (value: unknown) =>
  value instanceof Uint8Array ? `bytes:${Array.from(value).join(",")}` : `${typeof value}:${String(value)}`;

app.get("/values", () => {
  const cast = sql.dialect() === "postgres" ? ["::bigint", "::bigint", "::float8", "::float8", "::bytea", "::text", "::bigint"] : Array(7).fill("");
  const row = sql.queryOne(
    `SELECT ?1${cast[0]} AS big, ?2${cast[1]} AS small, ?3${cast[2]} AS real, ?4${cast[3]} AS whole_real, ` +
      `?5${cast[4]} AS blob, ?6${cast[5]} AS absent, ?7${cast[6]} AS yes`,
    [9007199254740993n, 42, 1.5, sql.real(2), new Uint8Array([1, 2, 255]), null, true],
  );
  const described: Record<string, string> = {};
  for (const [column, value] of Object.entries(row ?? {})) described[column] = describe(value);
  // A bigint is written into JSON as a number.
  return { described, big: row?.big };
});

app.get("/refused", () => {
  const statement = sql.dialect() === "postgres" ? "SET search_path TO public" : "ATTACH DATABASE 'other.db' AS other";
  try {
    sql.execute(statement);
    return { refused: false };
  } catch (e) {
    if (!(e instanceof WharfError)) throw e;
    return { refused: true, status: e.status, message: e.message };
  }
});

// A refusal nobody catches answers as the Rust SDK's `?` would: 500 and its message.
app.get("/uncaught", () => sql.query("SELECT * FROM no_such_table"));

app.get("/crash", () => {
  throw new TypeError("a bug");
});

app.get("/files/*path", (request) => ({ path: request.path, rest: request.params.path }));

app.get("/later", async () => {
  await new Promise((resolve) => setTimeout(resolve, 5));
  return { waited: true };
});

app.post("/echo", (request) =>
  Response.json({
    text: request.text(),
    header: request.headers.get("x-wharf-test"),
    query: request.query.get("q"),
    method: request.method,
  }),
);

app.get("/kv", () => {
  kv.set("bytes", new Uint8Array([0, 1, 2]));
  kv.set("text", "hello", { ttlSeconds: 60 });
  kv.set("gone", "soon");
  const deleted = kv.delete("gone");
  return {
    bytes: describe(kv.get("bytes")),
    text: kv.getText("text"),
    missing: kv.get("missing"),
    deleted,
    deletedAgain: kv.delete("gone"),
    keys: kv.listKeys(""),
    counted: kv.increment("n", 5),
    again: kv.increment("n"),
  };
});

app.delete("/nothing", () => undefined);

// A body read over several reads, and a web Response answered as it is.
app.post("/size", (request) => ({ bytes: request.body.length, last: request.body[request.body.length - 1] }));
app.get("/web", () => new globalThis.Response("from a web Response", { status: 201, headers: { "x-web": "yes" } }));

// A global: with `reuse` on, one sandbox serves request after request and counts them.
let served = 0;
app.get("/served", () => ({ served: ++served }));

app.post("/fail", (request) => Response.json({ job: jobs.enqueue("fail", request.text(), { maxAttempts: 1 }) }, 202));

app.job("fail", (job) => {
  throw new Error(`failed on purpose: ${job.text()}`);
});

export const incomingHandler = app.handler();
export const worker = app.worker();
