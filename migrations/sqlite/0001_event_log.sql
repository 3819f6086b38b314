-- The global event log, and everything that must commit in the same transaction as it.
-- SQLite admits one writer at a time, so rowid order is commit order: `position` (an
-- alias of the rowid) is the reader's cursor. The UNIQUE constraint on
-- (aggregate_type, aggregate_id, sequence) is the optimistic lock.
CREATE TABLE events (
    position        INTEGER PRIMARY KEY,
    event_id        TEXT    NOT NULL UNIQUE,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    sequence        INTEGER NOT NULL CHECK (sequence > 0),
    event_type      TEXT    NOT NULL,
    event_version   TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    metadata        TEXT    NOT NULL,
    recorded_at     TEXT    NOT NULL,
    UNIQUE (aggregate_type, aggregate_id, sequence)
);

CREATE TABLE command_outcomes (
    tenant          TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    request_digest  TEXT    NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    first_sequence  INTEGER NOT NULL,
    last_sequence   INTEGER NOT NULL,
    recorded_at     TEXT    NOT NULL,
    PRIMARY KEY (tenant, idempotency_key)
);

CREATE TABLE snapshots (
    aggregate_type   TEXT    NOT NULL,
    aggregate_id     TEXT    NOT NULL,
    last_sequence    INTEGER NOT NULL,
    current_snapshot INTEGER NOT NULL,
    payload          TEXT    NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

CREATE TABLE projection_checkpoints (
    name           TEXT    NOT NULL PRIMARY KEY,
    txid           INTEGER NOT NULL DEFAULT 0,
    position       INTEGER NOT NULL DEFAULT 0,
    events_applied INTEGER NOT NULL DEFAULT 0,
    updated_at     TEXT    NOT NULL
);

CREATE TABLE aggregate_catalog (
    aggregate_type   TEXT    NOT NULL,
    aggregate_id     TEXT    NOT NULL,
    tenant           TEXT    NOT NULL,
    version          INTEGER NOT NULL,
    last_event_type  TEXT    NOT NULL,
    last_position    INTEGER NOT NULL,
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
