-- Stratus state, PostgreSQL dialect: the same tables as migrations/sqlite, column for column,
-- so `stratus admin migrate-store` copies rows as they are. Times are fixed-width RFC 3339 text
-- (text order is time order, as in SQLite); bodies are JSON text. Ids compare byte by byte
-- (`COLLATE "C"`), as in SQLite, whatever the database's collation: pages follow id order.
-- See src/lib.rs.

CREATE TABLE resources (
    kind        TEXT    NOT NULL,
    id          TEXT    COLLATE "C" NOT NULL,
    scope       TEXT    NOT NULL DEFAULT '',
    name        TEXT    NOT NULL,
    live        BIGINT  NOT NULL DEFAULT 1,
    state       TEXT,
    revision    BIGINT  NOT NULL,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    PRIMARY KEY (kind, id)
);

-- Names are unique per kind and scope among live resources (a terminated server frees its name).
CREATE UNIQUE INDEX resources_live_name ON resources (kind, scope, name) WHERE live = 1;
CREATE INDEX resources_scope ON resources (kind, scope, id);
CREATE INDEX resources_state ON resources (kind, state, id);

CREATE TABLE tags (
    resource_id TEXT COLLATE "C" NOT NULL,
    namespace   TEXT NOT NULL,
    predicate   TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (resource_id, namespace, predicate, value)
);
CREATE INDEX tags_lookup ON tags (namespace, predicate, value);

-- Encrypted credential values, apart from the credential rows so listing never loads them.
CREATE TABLE secrets (
    id          TEXT  NOT NULL PRIMARY KEY,
    key_id      TEXT  NOT NULL,
    nonce       BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL
);

CREATE TABLE audit_log (
    id      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE INDEX audit_actor ON audit_log (actor, id);
CREATE INDEX audit_action ON audit_log (action, id);

CREATE TABLE settings (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
