-- Billing (see host/src/billing): plans, subscriptions, accounts, discounts and
-- closed invoices. Money is integer minor units of the plan's currency.

-- A plan's prices are never edited: each change is a new revision, effective
-- from when it was made, so an invoice always finds the prices it used.
CREATE TABLE plan_revisions (
    service TEXT NOT NULL,
    revision BIGINT NOT NULL,
    effective_from BIGINT NOT NULL,
    currency TEXT NOT NULL,
    period_price BIGINT NOT NULL,
    module_prices TEXT NOT NULL,
    fuel_price BIGINT NOT NULL,
    fuel_unit BIGINT NOT NULL,
    request_price BIGINT NOT NULL,
    request_unit BIGINT NOT NULL,
    set_by TEXT NOT NULL,
    PRIMARY KEY (service, revision)
);

-- What an instance is subscribed to, from `at` until the next event: a
-- snapshot per change (created, modules, enabled, version, end date). `seq`
-- orders one instance's events; a node that sees a change another node already
-- recorded loses the insert on the key and records nothing twice.
CREATE TABLE subscription_events (
    instance_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    tenant_id TEXT NOT NULL,
    service TEXT NOT NULL,
    at BIGINT NOT NULL,
    active BIGINT NOT NULL,
    version TEXT,
    modules TEXT NOT NULL,
    ends_at BIGINT,
    reason TEXT NOT NULL,
    PRIMARY KEY (instance_id, seq)
);
CREATE INDEX subscription_events_by_tenant ON subscription_events (tenant_id, at);

-- A trial or prepaid period: past it the instance answers 402 and is not billed.
ALTER TABLE instances ADD COLUMN ends_at BIGINT;

-- Who a tenant's invoices are addressed to, its spending limit, and whether
-- the limit suspended it.
CREATE TABLE billing_accounts (
    tenant_id TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT '',
    tax_id TEXT NOT NULL DEFAULT '',
    email TEXT NOT NULL DEFAULT '',
    spending_limit BIGINT,
    limit_currency TEXT,
    suspended_reason TEXT,
    suspended_at BIGINT,
    updated_at BIGINT NOT NULL
);

-- A percentage (basis points) or a fixed amount off, for a tenant, a service,
-- or a tenant's use of a service, over [starts_at, ends_at).
CREATE TABLE discounts (
    id TEXT PRIMARY KEY,
    tenant_id TEXT,
    service TEXT,
    basis_points BIGINT,
    amount BIGINT,
    currency TEXT,
    starts_at BIGINT NOT NULL,
    ends_at BIGINT,
    description TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- A closed invoice is this document, never changed. `invoice_usage` records
-- how much usage of each instance it billed (cumulatively), so usage recorded
-- after it closed goes to the next one.
CREATE TABLE invoices (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    period TEXT NOT NULL,
    closed_at BIGINT NOT NULL,
    document TEXT NOT NULL,
    UNIQUE (tenant_id, period)
);
CREATE TABLE invoice_usage (
    invoice_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    requests BIGINT NOT NULL,
    fuel BIGINT NOT NULL,
    PRIMARY KEY (invoice_id, instance_id)
);
CREATE INDEX invoice_usage_by_instance ON invoice_usage (instance_id);
