-- The server finishes a request whose process died while it ran (api/src/idempotency.rs,
-- `resume_interrupted`): the request is kept beside its key while it runs — its method,
-- path and caller, and its body — and dropped once its answer is stored.
ALTER TABLE http_idempotency ADD COLUMN request text;
ALTER TABLE http_idempotency ADD COLUMN request_body bytea;

-- The requests still running, or interrupted: a handful among the stored answers.
CREATE INDEX http_idempotency_in_flight ON http_idempotency (lease_until_ms)
    WHERE state = 'in_flight';
