-- Several nodes on one control plane: a generation number every change that nodes
-- hold in memory bumps (routes, versions, quotas), and component bytes kept in the
-- control plane so that any node can fetch and compile them (on SQLite, a single
-- node, the table stays empty: the files under components/ are the copy).
CREATE TABLE platform_generation (
    id INTEGER PRIMARY KEY,
    generation BIGINT NOT NULL
);
INSERT INTO platform_generation (id, generation) VALUES (1, 0);

CREATE TABLE component_blobs (
    sha256 TEXT PRIMARY KEY,
    bytes BLOB NOT NULL,
    created_at BIGINT NOT NULL
);
