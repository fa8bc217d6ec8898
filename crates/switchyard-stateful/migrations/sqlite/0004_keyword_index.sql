-- Keyword search ranks a store's matches inside the full-text index: the index holds
-- each chunk's store as a second column, so a search filters by store without reading
-- the chunks. Rebuilt from the chunks.
DROP TRIGGER vector_store_chunks_ai;
DROP TRIGGER vector_store_chunks_ad;
DROP TABLE vector_store_chunks_fts;
CREATE VIRTUAL TABLE vector_store_chunks_fts USING fts5 (
    text, store_id, content = 'vector_store_chunks', content_rowid = 'id'
);
INSERT INTO vector_store_chunks_fts (vector_store_chunks_fts) VALUES ('rebuild');
CREATE TRIGGER vector_store_chunks_ai AFTER INSERT ON vector_store_chunks BEGIN
    INSERT INTO vector_store_chunks_fts (rowid, text, store_id)
        VALUES (new.id, new.text, new.store_id);
END;
CREATE TRIGGER vector_store_chunks_ad AFTER DELETE ON vector_store_chunks BEGIN
    INSERT INTO vector_store_chunks_fts (vector_store_chunks_fts, rowid, text, store_id)
        VALUES ('delete', old.id, old.text, old.store_id);
END;

-- How many chunks hold each term: the terms in most chunks are left out of a search.
CREATE VIRTUAL TABLE vector_store_chunks_vocab USING fts5vocab (vector_store_chunks_fts, 'row');
