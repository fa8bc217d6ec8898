-- Tenancy (docs/tenancy.md): tenants, their API keys (only a hash of each secret),
-- the feed of changes other replicas poll, usage per hour, and the admin audit log.
-- Times are unix milliseconds unless named otherwise.
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    limits TEXT NOT NULL,
    allowed_models TEXT,
    metadata TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    -- SHA-256 of the whole key, hex.
    hash TEXT NOT NULL,
    limits TEXT,
    allowed_models TEXT,
    expires_at BIGINT,
    revoked_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant);
CREATE TABLE tenancy_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE TABLE tenant_usage (
    tenant TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    -- Unix seconds of the hour's start.
    hour BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    PRIMARY KEY (tenant, key_id, model, hour)
);
CREATE INDEX tenant_usage_by_hour ON tenant_usage (hour);
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
