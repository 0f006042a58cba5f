-- Trust at the edges: who created a tenant (for the tenants-per-user quota),
-- instance names (for platform hostnames), hostname claims awaiting proof,
-- released hostnames held for their tenant, quota overrides, invitations, proven
-- email addresses and the addresses an account usually logs in from.

ALTER TABLE tenants ADD COLUMN created_by TEXT;

ALTER TABLE instances ADD COLUMN name TEXT;
UPDATE instances SET name = id WHERE name IS NULL;
CREATE UNIQUE INDEX instances_by_name ON instances (tenant_id, name);
CREATE INDEX instances_by_tenant ON instances (tenant_id, created_at);

-- Hostnames in instance_hosts are verified (they route). A claim is a hostname a
-- tenant wants but has not proven yet; several tenants may claim one name, the
-- first to prove it gets it.
CREATE TABLE hostname_claims (
    hostname TEXT NOT NULL,
    instance_id TEXT NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    checked_at BIGINT,
    last_error TEXT,
    PRIMARY KEY (hostname, instance_id)
);
CREATE INDEX hostname_claims_by_instance ON hostname_claims (instance_id);
CREATE INDEX hostname_claims_by_tenant ON hostname_claims (tenant_id);

CREATE TABLE hostname_reservations (
    hostname TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    until_at BIGINT NOT NULL
);

-- subject: 'tenant:<id>' or 'user:<id>'.
CREATE TABLE quota_overrides (
    subject TEXT NOT NULL,
    quota TEXT NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (subject, quota)
);

CREATE TABLE invitations (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    email TEXT NOT NULL,
    role TEXT NOT NULL,
    invited_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    accepted_at BIGINT
);
CREATE INDEX invitations_by_tenant ON invitations (tenant_id, created_at);

ALTER TABLE users ADD COLUMN email_verified BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE users SET email_verified = TRUE WHERE is_operator;

CREATE TABLE login_addresses (
    user_id TEXT NOT NULL REFERENCES users (id),
    address TEXT NOT NULL,
    last_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, address)
);

CREATE INDEX tenant_members_by_user ON tenant_members (user_id, tenant_id);
