"""Wharf's Python SDK: a service's routes and the platform's interfaces
(who is calling, modules and settings, the instance's SQL database and
key-value store, jobs), over the bindings componentize-py generates from
`sdk/python/wit` when the service is built (`sdk/python/build.sh`).

A service::

    import wharf

    app = wharf.App()

    @app.get("/notes")
    def notes(request):
        rows = wharf.sql.query("SELECT id, body FROM notes ORDER BY id")
        return wharf.Response.json([{"id": r["id"], "body": r["body"]} for r in rows])

    IncomingHandler = app.handler()

Errors the platform reports (a refused statement, a quota, a busy database)
are raised as :class:`wharf.Error` with the platform's message; a handler
that lets one escape answers 500 with that message, as the Rust SDK does.
"""

import json as _json
import urllib.parse as _urlparse

from componentize_py_types import Err as _Err, Ok as _Ok
from wit_world import exports as _exports
from wit_world.imports import features as _features
from wit_world.imports import identity as _identity
from wit_world.imports import jobs as _jobs
from wit_world.imports import kv as _kv
from wit_world.imports import sql as _sql
from wit_world.imports import types as _http

__all__ = ["App", "Request", "Response", "Error", "User", "caller", "allowed", "features", "sql", "kv", "jobs"]


class Error(Exception):
    """A failure the client should see: its status and message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message

    @classmethod
    def bad_request(cls, message):
        return cls(400, message)

    @classmethod
    def forbidden(cls, message):
        return cls(403, message)

    @classmethod
    def not_found(cls, message):
        return cls(404, message)

    @classmethod
    def conflict(cls, message):
        return cls(409, message)


def _call(store, function, *args):
    """Call a platform import, turning its `Err` into :class:`Error` (500,
    the message prefixed with `store`, as the Rust SDK does)."""
    try:
        return function(*args)
    except _Err as e:
        raise Error(500, f"{store}: {e.value}") from None


# --- who is calling ----------------------------------------------------------


class User:
    """An authenticated member of the instance's tenant."""

    def __init__(self, user_id, email):
        self.user_id = user_id
        self.email = email

    def __repr__(self):
        return f"User({self.user_id!r}, {self.email!r})"


def caller():
    """The request's caller: a :class:`User`, or None for anonymous requests
    and credentials of anyone outside the tenant."""
    user = _identity.caller()
    return None if user is None else User(user.user_id, user.email)


def allowed(permission):
    """Whether the caller holds `permission`, a name the manifest declares."""
    return _identity.allowed(permission)


def require(permission):
    """The caller, if they hold `permission`; else :class:`Error` 401 or 403."""
    user = caller()
    if user is None:
        raise Error(401, "sign in first")
    if not allowed(permission):
        raise Error(403, f"you need the {permission} permission")
    return user


# --- modules and settings ----------------------------------------------------


class _Features:
    def enabled_modules(self):
        """Ids of the modules this instance has enabled."""
        return list(_features.enabled_modules())

    def is_enabled(self, module):
        """Whether module `module` is enabled."""
        return _features.is_enabled(module)

    def setting(self, key, default=None):
        """One setting, or `default` if the tenant did not set it."""
        value = _features.setting(key)
        return default if value is None else value

    def settings(self):
        """Every setting, as a dict."""
        return dict(_features.settings())


features = _Features()


# --- SQL ---------------------------------------------------------------------


def _to_value(value):
    if value is None:
        return _sql.Value_Null()
    if isinstance(value, bool):
        return _sql.Value_Integer(int(value))
    if isinstance(value, int):
        return _sql.Value_Integer(value)
    if isinstance(value, float):
        return _sql.Value_Real(value)
    if isinstance(value, str):
        return _sql.Value_Text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _sql.Value_Blob(bytes(value))
    raise TypeError(f"a SQL parameter is None, bool, int, float, str or bytes, not {type(value).__name__}")


def _from_value(value):
    return None if isinstance(value, _sql.Value_Null) else value.value


class Row(dict):
    """A result row: its values by column name (and by position, `row[0]`)."""

    def __init__(self, columns, values):
        super().__init__(zip(columns, values))
        self._values = values

    def __getitem__(self, key):
        if isinstance(key, int):
            return self._values[key]
        return super().__getitem__(key)


class _Sql:
    def dialect(self):
        """`"sqlite"` or `"postgres"`: which database the instance has."""
        return "postgres" if _sql.dialect() == _sql.SqlDialect.POSTGRES else "sqlite"

    def query(self, statement, params=()):
        """Rows of one statement (parameters bind to ?1, ?2, ...)."""
        rows = _call("database", _sql.query, statement, [_to_value(p) for p in params])
        return [Row(rows.columns, [_from_value(v) for v in row]) for row in rows.rows]

    def query_one(self, statement, params=()):
        """The first row, or None."""
        rows = self.query(statement, params)
        return rows[0] if rows else None

    def execute(self, statement, params=()):
        """Run one statement that changes data or schema; rows changed."""
        return _call("database", _sql.execute, statement, [_to_value(p) for p in params])

    def batch(self, statements):
        """Run (statement, params) pairs in one transaction: all apply or none."""
        return list(_call("database", _sql.batch, [(s, [_to_value(p) for p in params]) for s, params in statements]))


sql = _Sql()


# --- key-value -----------------------------------------------------------------


class _Kv:
    def get(self, key):
        """The value (bytes) at `key`, or None if absent or expired."""
        return _call("key-value", _kv.get, key)

    def get_text(self, key):
        value = self.get(key)
        return None if value is None else value.decode()

    def set(self, key, value, ttl_seconds=None):
        """Set `key` to `value` (bytes or str); with `ttl_seconds` it expires."""
        if isinstance(value, str):
            value = value.encode()
        _call("key-value", _kv.set, key, bytes(value), ttl_seconds)

    def delete(self, key):
        """Delete `key`; whether it existed."""
        return _call("key-value", _kv.delete, key)

    def list_keys(self, prefix="", limit=1000):
        """Keys starting with `prefix`, sorted, at most `limit` (≤ 1000)."""
        return list(_call("key-value", _kv.list_keys, prefix, limit))

    def increment(self, key, delta=1):
        """Add `delta` to the integer at `key` (0 if absent); the result."""
        return _call("key-value", _kv.increment, key, delta)


kv = _Kv()


# --- jobs ----------------------------------------------------------------------


class _Jobs:
    def enqueue(self, kind, payload=b"", version=1, delay_ms=0, idempotency_key=None, priority=0, max_attempts=None):
        """Queue a job of `kind` (declared in the manifest); its id."""
        if isinstance(payload, str):
            payload = payload.encode()
        options = _jobs.Options(version, delay_ms, idempotency_key, priority, max_attempts)
        return _call("jobs", _jobs.enqueue, kind, bytes(payload), options)


jobs = _Jobs()


# --- HTTP ----------------------------------------------------------------------

_METHODS = {
    _http.Method_Get: "GET",
    _http.Method_Head: "HEAD",
    _http.Method_Post: "POST",
    _http.Method_Put: "PUT",
    _http.Method_Delete: "DELETE",
    _http.Method_Connect: "CONNECT",
    _http.Method_Options: "OPTIONS",
    _http.Method_Trace: "TRACE",
    _http.Method_Patch: "PATCH",
}


class Request:
    """A request as a handler sees it: method, path, query, headers, body."""

    def __init__(self, method, path_and_query, headers, body):
        self.method = method
        path, _, query = path_and_query.partition("?")
        self.path = path or "/"
        self.query_string = query
        self.query = dict(_urlparse.parse_qsl(query))
        self.headers = {name.lower(): value.decode("latin-1") for name, value in headers}
        self.body = body
        self.params = {}

    def text(self):
        try:
            return self.body.decode()
        except UnicodeDecodeError:
            raise Error.bad_request("the request body is not UTF-8 text") from None

    def json(self):
        if not self.body:
            raise Error.bad_request("the request body is empty; send JSON")
        text = self.text()
        try:
            return _json.loads(text)
        except ValueError as e:
            raise Error.bad_request(f"invalid JSON body: {e}") from None


class Response:
    """A response: status, headers, body."""

    def __init__(self, status=200, body=b"", headers=None):
        self.status = status
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self.headers = dict(headers or {})

    @classmethod
    def text(cls, body, status=200):
        return cls(status, body, {"content-type": "text/plain; charset=utf-8"})

    @classmethod
    def json(cls, value, status=200):
        return cls(status, _json.dumps(value), {"content-type": "application/json"})


class App:
    """Routes: `@app.get("/notes/:id")` and the like; `app.handler()` is the
    component's `IncomingHandler`."""

    def __init__(self):
        self._routes = []
        self._jobs = {}
        self._seeder = None

    def route(self, method, pattern):
        parts = [p for p in pattern.split("/") if p]

        def register(handler):
            self._routes.append((method, parts, handler))
            return handler

        return register

    def get(self, pattern):
        return self.route("GET", pattern)

    def post(self, pattern):
        return self.route("POST", pattern)

    def put(self, pattern):
        return self.route("PUT", pattern)

    def patch(self, pattern):
        return self.route("PATCH", pattern)

    def delete(self, pattern):
        return self.route("DELETE", pattern)

    def job(self, kind):
        """`@app.job("kind")`: run jobs of `kind` (declared in the manifest);
        the handler gets the job (`id`, `kind`, `version`, `payload` bytes,
        `attempt`, `enqueued_by`). Raising fails the attempt (it is retried)."""

        def register(handler):
            self._jobs[kind] = handler
            return handler

        return register

    def seeder(self, handler):
        """`@app.seeder`: fill a new instance's database, once, after its first
        migrations. Raising fails the instance's setup."""
        self._seeder = handler
        return handler

    def worker(self):
        """The `Worker` class the world `worker-service` exports (built when
        `app.py` defines `Worker`: see `build.sh`)."""
        base = getattr(_exports, "Worker", None)
        if base is None:
            raise RuntimeError("this component was built without the worker export: define Worker in app.py")
        app = self

        class Worker(base):
            def run(self, job):
                handler = app._jobs.get(job.kind)
                if handler is None:
                    raise _Err(f"this version runs no job of kind {job.kind}")
                _as_err(handler, job)

            def seed(self):
                if app._seeder is not None:
                    _as_err(app._seeder)

        return Worker

    def dispatch(self, request):
        """The response to `request`: its route's, 404 or 405."""
        segments = [s for s in request.path.split("/") if s]
        methods = set()
        for method, parts, handler in self._routes:
            params = _match(parts, segments)
            if params is None:
                continue
            if method != request.method:
                methods.add(method)
                continue
            request.params = params
            try:
                answer = handler(request)
            except Error as e:
                return Response.json({"error": e.message}, e.status)
            if isinstance(answer, Response):
                return answer
            if isinstance(answer, str):
                return Response.text(answer)
            return Response.json(answer)
        if methods:
            allowed = ", ".join(sorted(methods))
            answer = Response.json({"error": f"{request.method} is not allowed here; use {allowed}"}, 405)
            answer.headers["allow"] = allowed
            return answer
        return Response.json({"error": f"no route for {request.path}"}, 404)

    def handler(self):
        """The `IncomingHandler` class componentize-py's world exports."""
        app = self

        class IncomingHandler(_exports.IncomingHandler):
            def handle(self, request, response_out):
                method = request.method()
                name = _METHODS.get(type(method)) or getattr(method, "value", "GET")
                headers = request.headers().entries()
                # A GET or HEAD without `content-length` has no body to read
                # (wasi:http hides `transfer-encoding`: other methods are always
                # read), and none of the calls reading one takes.
                body = _read_all(request.consume()) if _may_have_body(name, headers) else b""
                response = app.dispatch(Request(name, request.path_with_query() or "/", headers, body))
                _respond(response, response_out)

        return IncomingHandler


def _as_err(function, *args):
    """Run a job or seeder: any exception fails it with its message."""
    try:
        function(*args)
    except Error as e:
        raise _Err(e.message) from None
    except _Err:
        raise
    except Exception as e:
        raise _Err(f"{type(e).__name__}: {e}") from None


def _match(parts, segments):
    if len(parts) != len(segments):
        return None
    params = {}
    for part, segment in zip(parts, segments):
        if part.startswith(":"):
            params[part[1:]] = _urlparse.unquote(segment)
        elif part != segment:
            return None
    return params


def _may_have_body(method, headers):
    if method not in ("GET", "HEAD"):
        return True
    return any(name.lower() == "content-length" and value != b"0" for name, value in headers)


def _read_all(incoming_body):
    chunks = []
    with incoming_body.stream() as stream:
        while True:
            try:
                chunks.append(stream.blocking_read(65536))
            except _Err:
                break
    with _http.IncomingBody.finish(incoming_body):
        pass
    return b"".join(chunks)


def _respond(response, response_out):
    headers = [(name, value.encode()) for name, value in response.headers.items()]
    # The whole body is known: say its length, so it is not sent in chunks
    # (not where a response has no body by definition: 1xx, 204, 304).
    bodiless = response.status < 200 or response.status in (204, 304)
    if not bodiless and not any(name.lower() == "content-length" for name, _ in headers):
        headers.append(("content-length", str(len(response.body)).encode()))
    outgoing = _http.OutgoingResponse(_http.Fields.from_list(headers))
    outgoing.set_status_code(response.status)
    body = outgoing.body()
    _http.ResponseOutparam.set(response_out, _Ok(outgoing))
    with body.write() as stream:
        data = response.body
        while data:
            stream.blocking_write_and_flush(data[:4096])
            data = data[4096:]
    _http.OutgoingBody.finish(body, None)
