-- Read model of the `orders_hub` projection: every order across merchants and paths,
-- for the shopper's orders list.
CREATE TABLE orders_hub (
    tenant             TEXT   NOT NULL,
    order_id           TEXT   NOT NULL,
    shopper            TEXT   NOT NULL,
    mandate_id         TEXT,
    merchant           TEXT   NOT NULL,
    path               TEXT   NOT NULL,
    status             TEXT   NOT NULL,
    total_minor        INTEGER NOT NULL,
    refunded_minor     INTEGER NOT NULL DEFAULT 0,
    currency           TEXT   NOT NULL,
    merchant_reference TEXT,
    carrier            TEXT,
    tracking_number    TEXT,
    timeline           TEXT   NOT NULL,
    created_at         TEXT   NOT NULL,
    updated_at         TEXT   NOT NULL,
    PRIMARY KEY (tenant, order_id)
);

CREATE INDEX orders_hub_newest ON orders_hub (tenant, created_at DESC, order_id DESC);
CREATE INDEX orders_hub_shopper ON orders_hub (tenant, shopper, created_at DESC, order_id DESC);
