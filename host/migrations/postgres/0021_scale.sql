-- One change may be about several things (a promotion: a service's active
-- version and each instance whose pin it released), logged as one row each
-- under its generation; and a change may name a service (its versions).
CREATE TABLE platform_changes_new (
    generation BIGINT NOT NULL,
    -- `instance`, `tenant` or `service` (key: its id or name), or `all`
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (generation, scope, key)
);
INSERT INTO platform_changes_new (generation, scope, key) SELECT generation, scope, key FROM platform_changes;
DROP TABLE platform_changes;
ALTER TABLE platform_changes_new RENAME TO platform_changes;

-- The instances of one service, in a stable order: an activation records the
-- subscription change of each follower a page at a time.
CREATE INDEX instances_by_service ON instances (service, id);

-- Work only one node of the platform needs to do (the billing passes, queueing
-- setups and scheduled jobs, purges) is done by the holder of its lease, until
-- `expires_ms` by the control plane's clock; its holder renews it.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
