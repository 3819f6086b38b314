-- Read model of the `reconciliation` projection: per order, the money that moved
-- (card authorizations, captures and refunds, merchant refunds, mandate spend), and
-- the ledger of money movements by day, for finance.
CREATE TABLE reconciliation_orders (
    tenant                  TEXT    NOT NULL,
    order_id                TEXT    NOT NULL,
    payment_id              TEXT,
    card_reference          TEXT,
    reservation_id          TEXT,
    merchant                TEXT,
    currency                TEXT    NOT NULL,
    -- The merchant-confirmed total; NULL while no order is known for the payment.
    order_total_minor       INTEGER,
    -- YYYY-MM-DD the order was placed; NULL while it is not.
    placed_on               TEXT,
    closed                  INTEGER NOT NULL DEFAULT 0,
    authorizations_approved INTEGER  NOT NULL DEFAULT 0,
    authorizations_declined INTEGER  NOT NULL DEFAULT 0,
    authorized_minor        INTEGER  NOT NULL DEFAULT 0,
    captured_minor          INTEGER  NOT NULL DEFAULT 0,
    card_refunded_minor     INTEGER  NOT NULL DEFAULT 0,
    merchant_refunded_minor INTEGER  NOT NULL DEFAULT 0,
    committed_minor         INTEGER  NOT NULL DEFAULT 0,
    currency_mismatch       INTEGER NOT NULL DEFAULT 0,
    -- The exception that holds whatever the date (see domain::reconciliation).
    standing_exception      TEXT,
    -- The day the order counts on: placed_on once placed, else the day it began.
    business_date           TEXT    NOT NULL,
    created_at              TEXT    NOT NULL,
    updated_at              TEXT    NOT NULL,
    PRIMARY KEY (tenant, order_id)
);

CREATE INDEX reconciliation_orders_payment ON reconciliation_orders (tenant, payment_id);
CREATE INDEX reconciliation_orders_card ON reconciliation_orders (card_reference);
CREATE INDEX reconciliation_orders_reservation ON reconciliation_orders (tenant, reservation_id);
CREATE INDEX reconciliation_orders_day ON reconciliation_orders (tenant, business_date, order_id);

-- Every capture and refund, on the day it happened.
CREATE TABLE reconciliation_entries (
    tenant       TEXT   NOT NULL,
    entry_id     TEXT   NOT NULL,
    order_id     TEXT   NOT NULL,
    -- capture, card_refund or merchant_refund
    kind         TEXT   NOT NULL,
    amount_minor INTEGER NOT NULL,
    currency     TEXT   NOT NULL,
    day          TEXT   NOT NULL,
    PRIMARY KEY (tenant, entry_id)
);

CREATE INDEX reconciliation_entries_day ON reconciliation_entries (day, tenant);
