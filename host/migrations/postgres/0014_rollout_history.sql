-- One history entry per rollback of an instance by the health gate, naming
-- every node that saw it fail (each node judges the requests it served, so
-- several may reach the same verdict), and the node that recorded each entry.
ALTER TABLE promotions ADD COLUMN instance_id TEXT;
ALTER TABLE promotions ADD COLUMN nodes TEXT NOT NULL DEFAULT '';
