-- What each platform change was about, by generation: a node that is behind
-- re-reads just the instances (or tenants) that changed, and rebuilds
-- everything only for changes of another scope or when it missed part of the
-- log (old rows are pruned).
CREATE TABLE platform_changes (
    generation BIGINT PRIMARY KEY,
    -- `instance` or `tenant` (key: its id), or `all`
    scope TEXT NOT NULL,
    key TEXT NOT NULL
);
