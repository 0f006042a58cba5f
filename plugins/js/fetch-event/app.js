// A JavaScript service answering through StarlingMonkey's fetch event (no SDK),
// which answers only the first request of an instance: with `reuse` on, the
// platform must not lend its sandbox again once it returned without answering
// (tests/e2e/languages.rs). The SDK's `app.handler()` answers every request.
addEventListener("fetch", (event) => event.respondWith(new Response("hello\n")));
