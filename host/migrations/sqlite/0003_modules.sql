-- Instances: enabled modules (JSON array of ids), settings (JSON object of strings),
-- and whether the instance is enabled (a disabled instance keeps its data).
ALTER TABLE instances ADD COLUMN modules TEXT NOT NULL DEFAULT '[]';
ALTER TABLE instances ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
ALTER TABLE instances ADD COLUMN enabled BOOLEAN NOT NULL DEFAULT TRUE;
