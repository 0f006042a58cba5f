-- The linear memory a version's component starts with (its largest memory's
-- initial size, in bytes): what every fresh sandbox of it is given, and resets
-- when its request ends. NULL until a node has compiled or loaded the version.
ALTER TABLE service_versions ADD COLUMN initial_memory_bytes BIGINT;
