-- Responses to POST requests that carried an Idempotency-Key, so that a retry gets the
-- original response. `state` is 'in_flight' while the first request runs (a retry then
-- gets 409) and 'done' once its response is stored. An in-flight row whose lease has
-- passed belonged to a process that died; the next retry takes it over (the command
-- layer's own outcome records keep that retry from appending twice).
CREATE TABLE http_idempotency (
    tenant          text    NOT NULL,
    idempotency_key text    NOT NULL,
    request_hash    text    NOT NULL,
    state           text    NOT NULL,
    lease_until_ms  bigint  NOT NULL,
    status          integer,
    headers         text,
    body            text,
    created_at_ms   bigint  NOT NULL,
    PRIMARY KEY (tenant, idempotency_key)
);

CREATE INDEX http_idempotency_created ON http_idempotency (created_at_ms);
