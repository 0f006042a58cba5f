-- A deleted tenant: its people lose access at once and its instances are
-- deleted with it; restorable until purge_at, when its instances' data, its
-- memberships, grants, invitations, quota overrides and hostname reservations
-- are destroyed (purged_at). The row stays: its invoices name it, so its id is
-- never given to another tenant.
ALTER TABLE tenants ADD COLUMN deleted_at BIGINT;
ALTER TABLE tenants ADD COLUMN deleted_by TEXT;
ALTER TABLE tenants ADD COLUMN purge_at BIGINT;
ALTER TABLE tenants ADD COLUMN purged_at BIGINT;
