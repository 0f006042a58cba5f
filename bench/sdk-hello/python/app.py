"""The benchmarks' hello written with Wharf's Python SDK (sdk/python): what a
service pays for the SDK's request and response handling over a plain one."""

import wharf

app = wharf.App()


@app.get("/")
def hello(request):
    return wharf.Response.text("Hello from Wharf!\n")


IncomingHandler = app.handler()
