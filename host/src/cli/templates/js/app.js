// {name}: a Wharf service in JavaScript. Its routes, the instance's own SQL table,
// a permission, a key-value entry and a job; see README.md to build and publish it.
// Rename it app.ts to write TypeScript: the build type-checks it.
import { App, Response, WharfError, jobs, kv, require, sql } from "wharf";

const app = new App();

app.get("/", () => Response.text("Hello from {name}!\n"));

app.get("/items", () => sql.query("SELECT id, name, added_by FROM items ORDER BY id"));

app.post("/items", (request) => {
  const user = require("write"); // the manifest guards this route too
  const body = request.json();
  if (typeof body?.name !== "string" || body.name === "") throw WharfError.badRequest('send {"name": "..."}');
  sql.execute("INSERT INTO items (name, added_by) VALUES (?1, ?2)", [body.name, user.email]);
  return Response.json({ name: body.name, added_by: user.email }, 201);
});

app.post("/count", () => Response.json({ job: jobs.enqueue("count") }, 202));

app.get("/count", () => ({ count: kv.getText("count") }));

app.job("count", () => {
  const { n } = sql.queryOne("SELECT count(*) AS n FROM items");
  kv.set("count", String(n));
});

export const incomingHandler = app.handler();
export const worker = app.worker();
