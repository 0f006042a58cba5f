-- Instances are listed page by page in creation order (the API, the billing
-- passes over every instance): each page an index range, not a sort of all.
CREATE INDEX instances_by_creation ON instances (created_at, id);
