-- Usage per instance per hour, from every node (see host/src/billing). Each
-- node's journal file is applied as one batch, recorded here by its id in the
-- same transaction: a batch applied twice (a retry, a replay after a crash)
-- counts once.
CREATE TABLE usage_ledger (
    instance_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    -- Unix seconds of the hour's start.
    hour BIGINT NOT NULL,
    requests BIGINT NOT NULL DEFAULT 0,
    jobs BIGINT NOT NULL DEFAULT 0,
    fuel BIGINT NOT NULL DEFAULT 0,
    errors BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (instance_id, hour)
);
CREATE INDEX usage_ledger_by_tenant ON usage_ledger (tenant_id, hour);

CREATE TABLE usage_batches (
    id TEXT PRIMARY KEY,
    applied_at BIGINT NOT NULL
);
