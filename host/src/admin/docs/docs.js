// The admin API's reference, drawn from GET /v1/openapi.json: every operation
// by section, with its parameters, body and answers. Built from text nodes only
// (no HTML from the description is ever parsed), under the same strict Content
// Security Policy as the dashboard.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const METHODS = ["get", "post", "put", "patch", "delete"];
let components = {};

function refName(ref) {
  return ref.split("/").pop();
}

// A one-line name for a schema's type.
function typeName(schema) {
  if (!schema) return "any";
  if (schema.$ref) return refName(schema.$ref);
  if (schema.oneOf) return schema.oneOf.map(typeName).join(" | ");
  if (Array.isArray(schema.type)) return schema.type.map((t) => typeName({ ...schema, type: t })).join(" | ");
  if (schema.type === "array") return "array of " + typeName(schema.items);
  if (schema.type === "object" && schema.additionalProperties && typeof schema.additionalProperties === "object" && !schema.properties) {
    return "map of " + typeName(schema.additionalProperties);
  }
  let name = schema.type || "any";
  if (schema.format) name += " (" + schema.format + ")";
  if (schema.enum) name += ": " + schema.enum.map((v) => JSON.stringify(v)).join(", ");
  return name;
}

// A schema's fields, expanded one level through references.
function schemaTree(schema, depth) {
  if (!schema) return el("span", { class: "type" }, "any");
  if (schema.$ref) {
    const name = refName(schema.$ref);
    const target = components[name];
    if (!target || depth > 2) return el("a", { href: "#schema-" + name, class: "type" }, name);
    return el("div", {}, el("a", { href: "#schema-" + name, class: "type" }, name), schemaTree(target, depth + 1));
  }
  if (schema.type === "array" && schema.items && (schema.items.$ref || schema.items.properties)) {
    return el("div", {}, el("span", { class: "type" }, "array of"), schemaTree(schema.items, depth + 1));
  }
  if (!schema.properties) {
    return el("span", { class: "type" }, typeName(schema), schema.description ? " — " + schema.description : "");
  }
  const required = new Set(schema.required || []);
  return el(
    "ul",
    { class: "schema" },
    Object.entries(schema.properties).map(([name, field]) =>
      el(
        "li",
        {},
        el("code", {}, name),
        " ",
        el("span", { class: "type" }, typeName(field)),
        required.has(name) ? el("span", { class: "required" }, " required") : null,
        field.description ? " — " + field.description : "",
      ),
    ),
    schema.additionalProperties === false ? el("li", { class: "muted" }, "no other fields") : null,
  );
}

// A body's media types and schemas; the one error shape is named, not expanded
// under every operation.
function content(body) {
  return Object.entries(body.content || {}).map(([type, media]) => {
    const schema = media.schema || {};
    const shape = schema.$ref && refName(schema.$ref) === "ErrorBody"
      ? el("a", { href: "#schema-ErrorBody", class: "type" }, "ErrorBody")
      : schemaTree(schema, 0);
    return el("div", {}, el("span", { class: "muted" }, type + " "), shape);
  });
}

function operation(method, path, op) {
  const id = "op-" + (op.operationId || method + path);
  const parts = [
    el(
      "h3",
      { id },
      el("span", { class: "method " + method }, method),
      el("span", { class: "path" }, path),
      el("span", {}, op.summary || ""),
      Array.isArray(op.security) && op.security.length === 1 && Object.keys(op.security[0]).length === 0
        ? el("span", { class: "public" }, "no credential")
        : null,
    ),
  ];
  if (op.description) parts.push(el("p", {}, op.description));
  const params = op.parameters || [];
  if (params.length) {
    parts.push(
      el("h4", {}, "Parameters"),
      el(
        "table",
        {},
        el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, "type"), el("th", {}, "")),
        params.map((p) =>
          el(
            "tr",
            {},
            el("td", {}, el("code", {}, p.name), p.required ? el("span", { class: "required" }, " required") : null),
            el("td", {}, p.in),
            el("td", { class: "type" }, typeName(p.schema)),
            el("td", {}, p.description || ""),
          ),
        ),
      ),
    );
  }
  if (op.requestBody) parts.push(el("h4", {}, "Body"), content(op.requestBody));
  parts.push(
    el("h4", {}, "Answers"),
    el(
      "table",
      { class: "responses" },
      Object.entries(op.responses || {}).map(([status, response]) =>
        el("tr", {}, el("td", {}, el("code", {}, status)), el("td", {}, response.description || "", content(response))),
      ),
    ),
  );
  return el("section", { class: "operation", "data-method": method, "data-path": path }, parts);
}

function render(doc) {
  components = (doc.components && doc.components.schemas) || {};
  document.getElementById("title").textContent = doc.info.title + " " + (doc.info.version || "");
  const byTag = new Map((doc.tags || []).map((t) => [t.name, { tag: t, ops: [] }]));
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const method of METHODS) {
      if (!item[method]) continue;
      const tag = (item[method].tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, { tag: { name: tag }, ops: [] });
      byTag.get(tag).ops.push([method, path, item[method]]);
    }
  }
  const main = document.getElementById("reference");
  const nav = document.getElementById("tags");
  main.replaceChildren(el("p", {}, doc.info.description || ""));
  nav.replaceChildren();
  for (const { tag, ops } of byTag.values()) {
    if (!ops.length) continue;
    nav.append(el("a", { href: "#tag-" + tag.name }, tag.name));
    main.append(el("h2", { id: "tag-" + tag.name }, tag.name), tag.description ? el("p", { class: "muted" }, tag.description) : null);
    for (const [method, path, op] of ops) main.append(operation(method, path, op));
  }
  nav.append(el("a", { href: "#schemas" }, "schemas"));
  main.append(el("h2", { id: "schemas" }, "Schemas"));
  for (const [name, schema] of Object.entries(components)) {
    main.append(
      el("section", { class: "operation", id: "schema-" + name }, el("h3", {}, el("span", { class: "path" }, name)),
        schema.description ? el("p", {}, schema.description) : null, schemaTree(schema, 1)),
    );
  }
  document.body.dataset.operations = String(document.querySelectorAll("section[data-method]").length);
}

fetch("/v1/openapi.json", { headers: { accept: "application/json" } })
  .then((r) => (r.ok ? r.json() : Promise.reject(new Error("GET /v1/openapi.json answered " + r.status))))
  .then(render)
  .catch((e) => {
    document.getElementById("reference").replaceChildren(el("p", { class: "error" }, String(e.message || e)));
  });
