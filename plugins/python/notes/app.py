"""Notes, in Python: the example of Wharf's Python SDK (sdk/python)."""

import wharf

app = wharf.App()


@app.get("/")
def hello(request):
    return wharf.Response.text(f"Hello from {wharf.features.setting('site-name', 'Wharf')} in Python!\n")


@app.get("/notes")
def notes(request):
    wharf.kv.increment("reads")
    rows = wharf.sql.query("SELECT id, author, body FROM notes ORDER BY id")
    return [{"id": row["id"], "author": row["author"], "body": row["body"]} for row in rows]


@app.get("/notes/:id")
def note(request):
    try:
        id = int(request.params["id"])
    except ValueError:
        raise wharf.Error.bad_request("a note's id is a number")
    row = wharf.sql.query_one("SELECT id, author, body FROM notes WHERE id = ?1", [id])
    if row is None:
        raise wharf.Error.not_found(f"no note {id}")
    return {"id": row["id"], "author": row["author"], "body": row["body"]}


@app.post("/notes")
def write(request):
    # Wharf lets only callers granted pynotes.write reach this route; the
    # check here is the SDK's, for a route the manifest does not guard.
    user = wharf.require("write")
    body = request.json()
    if not isinstance(body, dict) or not isinstance(body.get("body"), str) or not body["body"]:
        raise wharf.Error.bad_request('send {"body": "..."}')
    wharf.sql.execute("INSERT INTO notes (author, body) VALUES (?1, ?2)", [user.email, body["body"]])
    row = wharf.sql.query_one("SELECT max(id) AS id FROM notes WHERE author = ?1", [user.email])
    return wharf.Response.json({"id": row["id"], "author": user.email}, 201)


@app.get("/me")
def me(request):
    user = wharf.caller()
    return {"caller": None if user is None else user.email, "can_write": wharf.allowed("write")}


@app.get("/stats")
def stats(request):
    count = wharf.sql.query_one("SELECT count(*) AS n FROM notes")["n"]
    reads = wharf.kv.get_text("reads") or "0"
    return {"notes": count, "reads": int(reads), "dialect": wharf.sql.dialect(), "modules": wharf.features.enabled_modules()}


@app.post("/tally")
def tally(request):
    return wharf.Response.json({"job": wharf.jobs.enqueue("tally", b"", idempotency_key=request.query.get("key"))}, 202)


@app.job("tally")
def count_notes(job):
    # A job sees the instance's database and key-value store, and no caller.
    count = wharf.sql.query_one("SELECT count(*) AS n FROM notes")["n"]
    wharf.kv.set("tally", f"{count} notes (job {job.kind} v{job.version}, attempt {job.attempt})")


@app.job("digest")
def digest(job):
    # On the manifest's schedule (every minute), for every instance.
    rows = wharf.sql.query("SELECT author, count(*) AS n FROM notes GROUP BY author ORDER BY author")
    wharf.kv.set("digest", ", ".join(f"{row['author']}: {row['n']}" for row in rows))


@app.get("/digest")
def digested(request):
    return {"digest": wharf.kv.get_text("digest")}


@app.seeder
def welcome():
    # Once per new instance, after its first migrations: its settings are readable.
    wharf.sql.execute("INSERT INTO notes (author, body) VALUES (?1, ?2)", ["wharf", f"Welcome to {wharf.features.setting('site-name', 'your notes')}"])


@app.get("/tally")
def tallied(request):
    return {"tally": wharf.kv.get_text("tally")}


IncomingHandler = app.handler()
Worker = app.worker()
