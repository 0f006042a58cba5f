-- A deleted instance: off every route at once, restorable until purge_at, when
-- its data is destroyed (purged_at). The row stays for its billing history.
ALTER TABLE instances ADD COLUMN deleted_at BIGINT;
ALTER TABLE instances ADD COLUMN deleted_by TEXT;
ALTER TABLE instances ADD COLUMN purge_at BIGINT;
ALTER TABLE instances ADD COLUMN purged_at BIGINT;
-- The custom hostnames it had (JSON): bound again on restore while they are
-- still reserved to its tenant.
ALTER TABLE instances ADD COLUMN released_hosts TEXT;
