-- Read model of the `reconciliation` projection: per order, the money that moved
-- (card authorizations, captures and refunds, merchant refunds, mandate spend), and
-- the ledger of money movements by day, for finance.
CREATE TABLE reconciliation_orders (
    tenant                  text    NOT NULL,
    order_id                text    NOT NULL,
    payment_id              text,
    card_reference          text,
    reservation_id          text,
    merchant                text,
    currency                text    NOT NULL,
    -- The merchant-confirmed total; NULL while no order is known for the payment.
    order_total_minor       bigint,
    -- YYYY-MM-DD the order was placed; NULL while it is not.
    placed_on               text,
    closed                  integer NOT NULL DEFAULT 0,
    authorizations_approved bigint  NOT NULL DEFAULT 0,
    authorizations_declined bigint  NOT NULL DEFAULT 0,
    authorized_minor        bigint  NOT NULL DEFAULT 0,
    captured_minor          bigint  NOT NULL DEFAULT 0,
    card_refunded_minor     bigint  NOT NULL DEFAULT 0,
    merchant_refunded_minor bigint  NOT NULL DEFAULT 0,
    committed_minor         bigint  NOT NULL DEFAULT 0,
    currency_mismatch       integer NOT NULL DEFAULT 0,
    -- The exception that holds whatever the date (see domain::reconciliation).
    standing_exception      text,
    -- The day the order counts on: placed_on once placed, else the day it began.
    business_date           text    NOT NULL,
    created_at              text    NOT NULL,
    updated_at              text    NOT NULL,
    PRIMARY KEY (tenant, order_id)
);

CREATE INDEX reconciliation_orders_payment ON reconciliation_orders (tenant, payment_id);
CREATE INDEX reconciliation_orders_card ON reconciliation_orders (card_reference);
CREATE INDEX reconciliation_orders_reservation ON reconciliation_orders (tenant, reservation_id);
CREATE INDEX reconciliation_orders_day ON reconciliation_orders (tenant, business_date, order_id);

-- Every capture and refund, on the day it happened.
CREATE TABLE reconciliation_entries (
    tenant       text   NOT NULL,
    entry_id     text   NOT NULL,
    order_id     text   NOT NULL,
    -- capture, card_refund or merchant_refund
    kind         text   NOT NULL,
    amount_minor bigint NOT NULL,
    currency     text   NOT NULL,
    day          text   NOT NULL,
    PRIMARY KEY (tenant, entry_id)
);

CREATE INDEX reconciliation_entries_day ON reconciliation_entries (day, tenant);
