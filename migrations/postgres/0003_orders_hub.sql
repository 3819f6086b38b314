-- Read model of the `orders_hub` projection: every order across merchants and paths,
-- for the shopper's orders list.
CREATE TABLE orders_hub (
    tenant             text   NOT NULL,
    order_id           text   NOT NULL,
    shopper            text   NOT NULL,
    mandate_id         text,
    merchant           text   NOT NULL,
    path               text   NOT NULL,
    status             text   NOT NULL,
    total_minor        bigint NOT NULL,
    refunded_minor     bigint NOT NULL DEFAULT 0,
    currency           text   NOT NULL,
    merchant_reference text,
    carrier            text,
    tracking_number    text,
    timeline           text   NOT NULL,
    created_at         text   NOT NULL,
    updated_at         text   NOT NULL,
    PRIMARY KEY (tenant, order_id)
);

CREATE INDEX orders_hub_newest ON orders_hub (tenant, created_at DESC, order_id DESC);
CREATE INDEX orders_hub_shopper ON orders_hub (tenant, shopper, created_at DESC, order_id DESC);
