-- The global event log, and everything that must commit in the same transaction as it.

-- One row per event, all aggregates in one table.
--   position  global position: unique, increasing in insertion order, with gaps
--             (a rolled-back append consumes positions). NOT commit order.
--   txid      the appending transaction's id. Readers only read rows whose txid is below
--             the oldest transaction still running (pg_snapshot_xmin), ordered by
--             (txid, position): a transaction that took low positions and commits late
--             is therefore never skipped. See docs/adr/0001-own-event-repository.md.
--   The primary key (aggregate_type, aggregate_id, sequence) is the optimistic lock:
--   two appends at the same sequence cannot both commit.
CREATE TABLE events (
    position        bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    txid            xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid        NOT NULL UNIQUE,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL CHECK (sequence > 0),
    event_type      text        NOT NULL,
    event_version   text        NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL,
    CONSTRAINT events_pkey PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE INDEX events_commit_order ON events (txid, position);

-- The outcome of every command that carried an idempotency key, written in the same
-- transaction as its events: a retried command finds it even when the first attempt
-- crashed between its commit and its reply.
CREATE TABLE command_outcomes (
    tenant          text        NOT NULL,
    idempotency_key text        NOT NULL,
    request_digest  text        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    first_sequence  bigint      NOT NULL,
    last_sequence   bigint      NOT NULL,
    recorded_at     timestamptz NOT NULL,
    CONSTRAINT command_outcomes_pkey PRIMARY KEY (tenant, idempotency_key)
);

-- Aggregate snapshots, written in the same transaction as the events they cover.
CREATE TABLE snapshots (
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint NOT NULL,
    current_snapshot bigint NOT NULL,
    payload          jsonb  NOT NULL,
    CONSTRAINT snapshots_pkey PRIMARY KEY (aggregate_type, aggregate_id)
);

-- One row per projection: how far into the log its read model is. Updated in the same
-- transaction as the read model, so a batch is applied exactly once.
CREATE TABLE projection_checkpoints (
    name           text   NOT NULL PRIMARY KEY,
    txid           bigint NOT NULL DEFAULT 0,
    position       bigint NOT NULL DEFAULT 0,
    events_applied bigint NOT NULL DEFAULT 0,
    updated_at     text   NOT NULL
);

-- Read model of the `aggregate_catalog` projection: every stream in the log.
CREATE TABLE aggregate_catalog (
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    tenant           text   NOT NULL,
    version          bigint NOT NULL,
    last_event_type  text   NOT NULL,
    last_position    bigint NOT NULL,
    created_at       text   NOT NULL,
    updated_at       text   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
