-- A projection that cannot go on records why, and at which event, for ops to see.
ALTER TABLE projection_checkpoints ADD COLUMN last_error text;
ALTER TABLE projection_checkpoints ADD COLUMN failed_position bigint;
