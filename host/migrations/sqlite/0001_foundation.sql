-- Control plane, first cut. Portable SQL: the same statements run on SQLite and PostgreSQL.

CREATE TABLE services (
    name TEXT PRIMARY KEY,
    active_version TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE service_versions (
    service TEXT NOT NULL REFERENCES services (name),
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    manifest TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (service, version)
);

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    service TEXT NOT NULL REFERENCES services (name),
    pinned_version TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE instance_hosts (
    hostname TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL REFERENCES instances (id) ON DELETE CASCADE
);

CREATE INDEX instance_hosts_by_instance ON instance_hosts (instance_id);

CREATE TABLE usage_totals (
    instance_id TEXT PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    requests BIGINT NOT NULL,
    fuel BIGINT NOT NULL,
    errors BIGINT NOT NULL
);
