// The benchmarks' plain JavaScript hello: a wasi:http component built with
// ComponentizeJS (the fetch event, no SDK), answering what plugins/hello answers,
// so that `wasmtime serve` can run it too.
addEventListener("fetch", (event) =>
  event.respondWith(new Response("Hello from Wharf!\n", { headers: { "content-type": "text/plain; charset=utf-8" } })),
);
