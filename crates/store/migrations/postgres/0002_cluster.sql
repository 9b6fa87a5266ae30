-- Several control-plane replicas on one database (see src/cluster.rs). Only PostgreSQL has
-- these: an embedded SQLite control plane is one process.

-- Each replica says it is alive every second; one silent for 10 s is gone.
CREATE TABLE replicas (
    id       TEXT        NOT NULL PRIMARY KEY,
    url      TEXT        NOT NULL,
    leader   BOOLEAN     NOT NULL DEFAULT false,
    seen_at  TIMESTAMPTZ NOT NULL
);

-- Which replica holds each connected agent's WebSocket.
CREATE TABLE agent_connections (
    server_id TEXT        NOT NULL PRIMARY KEY,
    replica   TEXT        NOT NULL,
    since     TIMESTAMPTZ NOT NULL
);

-- Messages for agents connected to another replica, until that replica takes them.
CREATE TABLE outbox (
    id        BIGSERIAL   PRIMARY KEY,
    replica   TEXT        NOT NULL,
    server_id TEXT        NOT NULL,
    message   TEXT        NOT NULL,
    at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX outbox_replica ON outbox (replica, id);
