-- Rollout across the fleet (see host/src/rollout.rs): the nodes, what each has
-- loaded, and the promotions.

-- Every running node: it beats every second, and writes the platform generation
-- it has caught up with as soon as it has (its acknowledgement of a promotion).
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    ingress TEXT NOT NULL,
    admin TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    -- Unix milliseconds of the last beat.
    seen_at BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    stopped_at BIGINT
);

-- What each node has made of each version: ready (compiled and loaded), failed
-- (with the error), or unloaded (no longer used); with the requests and errors
-- it served since it became active there.
CREATE TABLE node_versions (
    node_id TEXT NOT NULL,
    service TEXT NOT NULL,
    version TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    requests BIGINT NOT NULL DEFAULT 0,
    errors BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (node_id, service, version)
);

-- Promotions, rollbacks, canaries and health rollbacks, newest last.
CREATE TABLE promotions (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    kind TEXT NOT NULL,
    version TEXT NOT NULL,
    previous TEXT,
    generation BIGINT NOT NULL,
    actor TEXT NOT NULL,
    detail TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX promotions_by_service ON promotions (service, at);

ALTER TABLE services ADD COLUMN previous_version TEXT;
ALTER TABLE service_versions ADD COLUMN staged_at BIGINT;
-- Who pinned an instance: an operator or tenant (NULL), a canary, or the health gate.
ALTER TABLE instances ADD COLUMN pinned_by TEXT;
ALTER TABLE instances ADD COLUMN pin_reason TEXT;
