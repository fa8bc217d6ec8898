-- Vector stores (docs/files-and-vector-stores.md). Times are unix seconds; JSON is
-- stored as text.
CREATE TABLE vector_stores (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT 'default',
    created_at INTEGER NOT NULL,
    created_us INTEGER NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    description TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    -- expires_after.days (anchored at last_active_at), and the time it comes to.
    expires_days INTEGER,
    expires_at INTEGER,
    last_active_at INTEGER NOT NULL,
    -- The embedding model of its chunks and their dimension (set by the first chunks).
    embedding_model TEXT,
    dims INTEGER
);
CREATE INDEX vector_stores_listed ON vector_stores (owner, created_us);
CREATE INDEX vector_stores_expiring ON vector_stores (expires_at);

CREATE TABLE vector_store_file_batches (
    id TEXT PRIMARY KEY,
    store_id TEXT NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    -- in_progress until its files are done; cancelled by a cancel.
    status TEXT NOT NULL
);
CREATE INDEX vector_store_file_batches_of ON vector_store_file_batches (store_id);

-- A file in a store, and its ingestion job while status is in_progress: the replica
-- working on it holds a lease (lease_until), so a job left by a stopped one is resumed.
CREATE TABLE vector_store_files (
    store_id TEXT NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
    file_id TEXT NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    created_us INTEGER NOT NULL,
    status TEXT NOT NULL,
    last_error TEXT,
    usage_bytes INTEGER NOT NULL DEFAULT 0,
    attributes TEXT NOT NULL DEFAULT '{}',
    chunking TEXT NOT NULL,
    batch_id TEXT,
    lease_until INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (store_id, file_id)
);
CREATE INDEX vector_store_files_listed ON vector_store_files (store_id, created_us);
CREATE INDEX vector_store_files_pending ON vector_store_files (status, lease_until);
CREATE INDEX vector_store_files_batch ON vector_store_files (batch_id);
CREATE INDEX vector_store_files_file ON vector_store_files (file_id);

-- Chunks: text, position and embedding (float32, little-endian: sqlite-vec's form).
CREATE TABLE vector_store_chunks (
    id INTEGER PRIMARY KEY,
    store_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    text TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    embedding BLOB NOT NULL,
    FOREIGN KEY (store_id, file_id) REFERENCES vector_store_files (store_id, file_id)
        ON DELETE CASCADE
);
CREATE INDEX vector_store_chunks_of ON vector_store_chunks (store_id, file_id, seq);

-- Keyword search (BM25) over the chunks' text, kept in step by triggers.
CREATE VIRTUAL TABLE vector_store_chunks_fts USING fts5 (
    text, content = 'vector_store_chunks', content_rowid = 'id'
);
CREATE TRIGGER vector_store_chunks_ai AFTER INSERT ON vector_store_chunks BEGIN
    INSERT INTO vector_store_chunks_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER vector_store_chunks_ad AFTER DELETE ON vector_store_chunks BEGIN
    INSERT INTO vector_store_chunks_fts (vector_store_chunks_fts, rowid, text)
        VALUES ('delete', old.id, old.text);
END;
