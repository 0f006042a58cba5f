-- Each instance's SQL database on PostgreSQL: a schema and a login role of the
-- same name, created with the instance. The password never leaves the control
-- plane (the guest never connects itself; its node does, as the role).
CREATE TABLE instance_databases (
    instance_id TEXT PRIMARY KEY REFERENCES instances (id),
    role TEXT NOT NULL UNIQUE,
    password TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
