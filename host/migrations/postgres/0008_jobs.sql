-- The durable job queue (see host/src/jobs). Times are Unix milliseconds.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    instance_id TEXT NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    service TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BYTEA NOT NULL,
    -- The shape of the payload, and the service version that enqueued it.
    job_version BIGINT NOT NULL,
    enqueued_by TEXT NOT NULL,
    run_at BIGINT NOT NULL,
    priority BIGINT NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    idempotency_key TEXT,
    -- queued, running, failed (an attempt failed; retried at run_at), succeeded,
    -- dead (out of attempts), cancelled
    state TEXT NOT NULL,
    last_error TEXT,
    -- Bumped by every claim: a worker whose lease expired cannot complete the
    -- job another worker holds.
    fence BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until BIGINT,
    -- The service version the last attempt ran on.
    ran_version TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
-- NULL keys never collide.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (instance_id, idempotency_key);
-- A tenant's ready jobs in the order they run.
CREATE INDEX jobs_ready ON jobs (tenant_id, priority DESC, run_at, id) WHERE state IN ('queued', 'failed');
CREATE INDEX jobs_leases ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_by_instance ON jobs (instance_id, created_at);
CREATE INDEX jobs_by_state ON jobs (state, service);

-- One row per tenant that ever queued a job: when a worker last took one of its
-- jobs (workers serve the least recently served tenant first), and how many of
-- its jobs are pending (queued, failed or running), against its quota.
CREATE TABLE job_tenants (
    tenant_id TEXT PRIMARY KEY,
    served_at BIGINT NOT NULL DEFAULT 0,
    pending BIGINT NOT NULL DEFAULT 0
);

-- The instance lifecycle: the migrations its database has (mirrored from the
-- database's own record), the version whose schema is in place, and a setup
-- (migrations, then the seeder) in progress or failed.
ALTER TABLE instances ADD COLUMN applied_migrations TEXT NOT NULL DEFAULT '[]';
ALTER TABLE instances ADD COLUMN settled_version TEXT;
ALTER TABLE instances ADD COLUMN setup_state TEXT NOT NULL DEFAULT 'ready';
ALTER TABLE instances ADD COLUMN setup_target TEXT;
ALTER TABLE instances ADD COLUMN setup_error TEXT;
ALTER TABLE instances ADD COLUMN seeded_at BIGINT;

-- Job runs count apart from requests (their fuel and failures count alike).
ALTER TABLE usage_totals ADD COLUMN jobs BIGINT NOT NULL DEFAULT 0;
