// The benchmarks' hello written with Wharf's JavaScript SDK (sdk/js): what a
// service pays for the SDK's routing and request handling over a plain one.
import { App, Response } from "wharf";

const app = new App();
app.get("/", () => Response.text("Hello from Wharf!\n"));
export const incomingHandler = app.handler();
