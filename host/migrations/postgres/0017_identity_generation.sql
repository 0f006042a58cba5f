-- Nodes that share a control plane cache credentials and memberships: every
-- change to them bumps this number (and notifies `wharf_identity`), and each
-- node acknowledges the number it has invalidated its cache for.
CREATE TABLE identity_generation (
    id INTEGER PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO identity_generation (id, value) VALUES (1, 0);
ALTER TABLE nodes ADD COLUMN identity_generation BIGINT NOT NULL DEFAULT 0;
