-- Responses and conversations (docs/responses.md). Times are unix seconds; JSON is
-- stored as text. Every object has an owner (its tenant; 'default' until tenancy).
CREATE TABLE responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT 'default',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    previous_response_id TEXT,
    conversation_id TEXT,
    background INTEGER NOT NULL DEFAULT 0,
    request TEXT NOT NULL,
    response TEXT,
    -- The error of a failed response (JSON), set apart so that recovery needs no JSON
    -- functions.
    error TEXT,
    -- Until when the replica running a queued or in-progress response vouches for it
    -- (PostgreSQL: a replica that stops renewing it has died).
    lease_until INTEGER
);
CREATE INDEX responses_status ON responses (status);
CREATE INDEX responses_created ON responses (created_at);

CREATE TABLE response_items (
    response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    item_id TEXT NOT NULL,
    item TEXT NOT NULL,
    PRIMARY KEY (response_id, kind, seq)
);

CREATE TABLE response_events (
    response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (response_id, seq)
);

CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT 'default',
    created_at INTEGER NOT NULL,
    metadata TEXT NOT NULL
);
CREATE INDEX conversations_created ON conversations (created_at);

CREATE TABLE conversation_items (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    item_id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL DEFAULT 'default',
    created_at INTEGER NOT NULL,
    item TEXT NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
