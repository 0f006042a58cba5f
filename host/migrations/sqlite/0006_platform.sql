-- The platform's own id: it namespaces what the platform keeps outside its control
-- plane (Redis keys), so several platforms can share one Redis.
CREATE TABLE platform_info (
    id INTEGER PRIMARY KEY,
    platform_id TEXT NOT NULL
);
