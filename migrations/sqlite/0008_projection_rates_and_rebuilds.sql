-- Throughput of each reader of the log, and the progress of a projection's rebuild
-- beside its live read model (NULL when none runs).
ALTER TABLE projection_checkpoints ADD COLUMN events_per_second REAL NOT NULL DEFAULT 0;
ALTER TABLE projection_checkpoints ADD COLUMN rebuild_position INTEGER;
ALTER TABLE projection_checkpoints ADD COLUMN rebuild_events_per_second REAL;
ALTER TABLE projection_checkpoints ADD COLUMN rebuild_heartbeat TEXT;
