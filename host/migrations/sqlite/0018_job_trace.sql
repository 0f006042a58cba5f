-- The trace context (W3C traceparent) of the request that queued a job, when
-- that request's trace was kept: the job's trace continues it.
ALTER TABLE jobs ADD COLUMN trace_parent TEXT;
