-- Files (docs/files-and-vector-stores.md): metadata here, the bytes in the blob store
-- under `blob`. Times are unix seconds.
CREATE TABLE files (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT 'default',
    created_at BIGINT NOT NULL,
    -- Creation in microseconds: the order of lists (many files share a second).
    created_us BIGINT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    expires_at BIGINT,
    blob TEXT NOT NULL
);
CREATE INDEX files_listed ON files (owner, created_us);
CREATE INDEX files_expiring ON files (expires_at);
