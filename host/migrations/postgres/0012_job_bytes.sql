-- What a tenant's jobs hold in the control plane, bounded by its quotas:
-- `pending` now counts dead jobs too (they keep their payload until someone
-- retries or cancels them), and `bytes` is the size of every payload kept
-- (a succeeded job's payload is dropped; a cancelled one's stays, for a retry,
-- until the job is deleted).
ALTER TABLE job_tenants ADD COLUMN bytes BIGINT NOT NULL DEFAULT 0;
UPDATE job_tenants SET
    pending = (SELECT count(*) FROM jobs j WHERE j.tenant_id = job_tenants.tenant_id
               AND j.state IN ('queued', 'running', 'failed', 'dead')),
    bytes = (SELECT COALESCE(sum(length(j.payload)), 0) FROM jobs j WHERE j.tenant_id = job_tenants.tenant_id
             AND j.state <> 'succeeded');
UPDATE jobs SET payload = ''::bytea WHERE state = 'succeeded';
-- Finished jobs of a tenant, newest first (only so many are kept).
CREATE INDEX jobs_finished ON jobs (tenant_id, finished_at) WHERE state IN ('succeeded', 'cancelled');
