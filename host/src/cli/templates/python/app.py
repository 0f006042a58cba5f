"""{name}: a Wharf service in Python. Its routes, the instance's own SQL table,
a permission, a key-value entry and a job; see README.md to build and publish it."""

import wharf

app = wharf.App()


@app.get("/")
def hello(request):
    return wharf.Response.text("Hello from {name}!\n")


@app.get("/items")
def items(request):
    rows = wharf.sql.query("SELECT id, name, added_by FROM items ORDER BY id")
    return [{"id": row["id"], "name": row["name"], "added_by": row["added_by"]} for row in rows]


@app.post("/items")
def add(request):
    user = wharf.require("write")  # the manifest guards this route too
    body = request.json()
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"]:
        raise wharf.Error.bad_request('send {"name": "..."}')
    wharf.sql.execute("INSERT INTO items (name, added_by) VALUES (?1, ?2)", [body["name"], user.email])
    return wharf.Response.json({"name": body["name"], "added_by": user.email}, 201)


@app.post("/count")
def count(request):
    return wharf.Response.json({"job": wharf.jobs.enqueue("count")}, 202)


@app.get("/count")
def counted(request):
    return {"count": wharf.kv.get_text("count")}


@app.job("count")
def count_items(job):
    n = wharf.sql.query_one("SELECT count(*) AS n FROM items")["n"]
    wharf.kv.set("count", str(n))


IncomingHandler = app.handler()
Worker = app.worker()
