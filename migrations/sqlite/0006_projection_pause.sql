-- Ops can pause a projection: its runner stops applying until resumed.
ALTER TABLE projection_checkpoints ADD COLUMN paused integer NOT NULL DEFAULT 0;
