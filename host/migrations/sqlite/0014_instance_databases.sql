-- The same table as PostgreSQL's 0007: each instance's SQL database there is a
-- schema and a login role. A SQLite control plane keeps instance databases in
-- files and never writes it; it exists so both dialects describe one schema
-- (tests/e2e/schema.rs checks that they do).
CREATE TABLE instance_databases (
    instance_id TEXT PRIMARY KEY REFERENCES instances (id),
    role TEXT NOT NULL UNIQUE,
    password TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
