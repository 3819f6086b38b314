-- Inbound webhooks name orders by the merchant's reference or the carrier's tracking
-- number; these find the order.
CREATE INDEX orders_hub_merchant_reference ON orders_hub (tenant, merchant, merchant_reference);
CREATE INDEX orders_hub_tracking_number ON orders_hub (tenant, tracking_number);
