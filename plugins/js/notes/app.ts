// Notes, in TypeScript: the example of Wharf's JavaScript SDK (sdk/js), the twin
// of plugins/notes (Rust) and plugins/python/notes.
import { App, Response, WharfError, allowed, caller, features, jobs, kv, require, sql } from "wharf";

const app = new App();

app.get("/", () => Response.text(`Hello from ${features.setting("site-name", "Wharf")} in JavaScript!\n`));

app.get("/notes", () => {
  kv.increment("reads");
  return sql.query("SELECT id, author, body FROM notes ORDER BY id");
});

app.get("/notes/:id", (request) => {
  const id = Number(request.params.id);
  if (!Number.isInteger(id)) throw WharfError.badRequest("a note's id is a number");
  const note = sql.queryOne("SELECT id, author, body FROM notes WHERE id = ?1", [id]);
  if (note === null) throw WharfError.notFound(`no note ${id}`);
  return note;
});

app.post("/notes", (request) => {
  // Wharf lets only callers granted jsnotes.write reach this route; the check
  // here is the SDK's, for a route the manifest does not guard.
  const user = require("write");
  const body = request.json<{ body?: unknown }>();
  if (typeof body !== "object" || body === null || typeof body.body !== "string" || body.body === "") {
    throw WharfError.badRequest('send {"body": "..."}');
  }
  sql.execute("INSERT INTO notes (author, body) VALUES (?1, ?2)", [user.email, body.body]);
  const row = sql.queryOne("SELECT max(id) AS id FROM notes WHERE author = ?1", [user.email]);
  return Response.json({ id: row?.id, author: user.email }, 201);
});

app.get("/me", () => ({ caller: caller()?.email ?? null, can_write: allowed("write") }));

app.get("/stats", () => ({
  notes: sql.queryOne("SELECT count(*) AS n FROM notes")?.n,
  reads: Number(kv.getText("reads") ?? "0"),
  dialect: sql.dialect(),
  modules: features.enabledModules(),
}));

app.post("/tally", (request) =>
  Response.json({ job: jobs.enqueue("tally", "", { idempotencyKey: request.query.get("key") }) }, 202),
);
app.get("/tally", () => ({ tally: kv.getText("tally") }));
app.get("/digest", () => ({ digest: kv.getText("digest") }));

// A job sees the instance's database and key-value store, and no caller.
app.job("tally", (job) => {
  const count = sql.queryOne("SELECT count(*) AS n FROM notes")?.n;
  kv.set("tally", `${count} notes (job ${job.kind} v${job.version}, attempt ${job.attempt})`);
});

// On the manifest's schedule (every minute), for every instance.
app.job("digest", () => {
  const rows = sql.query("SELECT author, count(*) AS n FROM notes GROUP BY author ORDER BY author");
  kv.set("digest", rows.map((row) => `${row.author}: ${row.n}`).join(", "));
});

// Once per new instance, after its first migrations: its settings are readable.
app.seeder(() => {
  sql.execute("INSERT INTO notes (author, body) VALUES (?1, ?2)", [
    "wharf",
    `Welcome to ${features.setting("site-name", "your notes")}`,
  ]);
});

export const incomingHandler = app.handler();
export const worker = app.worker();
