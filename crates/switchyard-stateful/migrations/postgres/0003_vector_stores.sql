-- Vector stores (docs/files-and-vector-stores.md). Times are unix seconds; JSON is
-- stored as text. The chunks' `embedding vector` column is added at start when the
-- server has pgvector (a server without it still runs everything else).
CREATE TABLE vector_stores (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT 'default',
    created_at BIGINT NOT NULL,
    created_us BIGINT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    description TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    expires_days BIGINT,
    expires_at BIGINT,
    last_active_at BIGINT NOT NULL,
    embedding_model TEXT,
    dims BIGINT
);
CREATE INDEX vector_stores_listed ON vector_stores (owner, created_us);
CREATE INDEX vector_stores_expiring ON vector_stores (expires_at);

CREATE TABLE vector_store_file_batches (
    id TEXT PRIMARY KEY,
    store_id TEXT NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX vector_store_file_batches_of ON vector_store_file_batches (store_id);

CREATE TABLE vector_store_files (
    store_id TEXT NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
    file_id TEXT NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    created_us BIGINT NOT NULL,
    status TEXT NOT NULL,
    last_error TEXT,
    usage_bytes BIGINT NOT NULL DEFAULT 0,
    attributes TEXT NOT NULL DEFAULT '{}',
    chunking TEXT NOT NULL,
    batch_id TEXT,
    lease_until BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (store_id, file_id)
);
CREATE INDEX vector_store_files_listed ON vector_store_files (store_id, created_us);
CREATE INDEX vector_store_files_pending ON vector_store_files (status, lease_until);
CREATE INDEX vector_store_files_batch ON vector_store_files (batch_id);
CREATE INDEX vector_store_files_file ON vector_store_files (file_id);

CREATE TABLE vector_store_chunks (
    id BIGSERIAL PRIMARY KEY,
    store_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    text TEXT NOT NULL,
    tokens BIGINT NOT NULL,
    -- The embedding's dimension: HNSW indexes are per dimension (partial indexes).
    dims BIGINT NOT NULL,
    tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
    FOREIGN KEY (store_id, file_id) REFERENCES vector_store_files (store_id, file_id)
        ON DELETE CASCADE
);
CREATE INDEX vector_store_chunks_of ON vector_store_chunks (store_id, file_id, seq);
CREATE INDEX vector_store_chunks_tsv ON vector_store_chunks USING gin (tsv);
