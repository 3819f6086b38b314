//! The orders this instance placed lately, by the merchant's name for them.
//!
//! A merchant's order webhook names the order by the merchant's own reference, and
//! finding shopagent's order from it is a look-up in the orders hub: a statement per
//! webhook, and an answer only once the hub has caught up with the placement. But the
//! pairing is fixed the moment the order is placed (an order is placed once; its
//! reference never changes), so the instance that placed it can keep it: nothing kept
//! can become wrong, only be forgotten. The first events a merchant sends come moments
//! after the placement, to whichever instance it reaches; on the one that placed the
//! order they need no look-up. Everything else — another instance, an order placed
//! before the last restart, one forgotten since — goes to the hub as before.
//!
//! Bounded: the oldest pairings are forgotten first, so memory stays flat under any
//! load.

use std::num::NonZeroUsize;
use std::sync::{Mutex, PoisonError};

use lru::LruCache;
use shopagent_domain::money::Currency;

/// How a merchant names an order: tenant, merchant, the merchant's reference.
type Reference = (String, String, String);

/// The orders placed lately, by reference ([module docs](self)).
#[derive(Debug)]
pub struct PlacedOrders {
    kept: Mutex<LruCache<Reference, (String, Currency)>>,
}

impl PlacedOrders {
    /// Enough for every placement of the last half minute at a few hundred a second;
    /// about a megabyte when full.
    pub const DEFAULT_CAPACITY: usize = 8_192;

    /// Keeps at most `capacity` orders (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            kept: Mutex::new(LruCache::new(capacity)),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, LruCache<Reference, (String, Currency)>> {
        // Held only to put or peek one entry: a panic cannot leave it half done.
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps that `merchant` calls order `order_id` of `tenant`, in `currency`,
    /// `reference`.
    pub fn placed(
        &self,
        tenant: &str,
        merchant: &str,
        reference: &str,
        order_id: &str,
        currency: Currency,
    ) {
        let key = (tenant.to_owned(), merchant.to_owned(), reference.to_owned());
        self.kept().put(key, (order_id.to_owned(), currency));
    }

    /// The order and currency of the order `merchant` calls `reference`, if this
    /// instance placed it lately. A look-up does not keep an order longer: the oldest
    /// placed are forgotten first.
    pub fn find(
        &self,
        tenant: &str,
        merchant: &str,
        reference: &str,
    ) -> Option<(String, Currency)> {
        let key = (tenant.to_owned(), merchant.to_owned(), reference.to_owned());
        self.kept().peek(&key).cloned()
    }
}

impl Default for PlacedOrders {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::parse("USD").expect("USD")
    }

    #[test]
    fn an_order_is_found_by_its_tenant_merchant_and_reference_only() {
        let placed = PlacedOrders::default();
        placed.placed("acme", "m1", "ord_1", "order-a", usd());
        assert_eq!(
            placed.find("acme", "m1", "ord_1"),
            Some(("order-a".into(), usd()))
        );
        assert_eq!(placed.find("other", "m1", "ord_1"), None);
        assert_eq!(placed.find("acme", "m2", "ord_1"), None);
        assert_eq!(placed.find("acme", "m1", "ord_2"), None);
    }

    #[test]
    fn the_oldest_orders_are_forgotten_beyond_the_capacity() {
        let placed = PlacedOrders::new(3);
        for n in 0..5 {
            placed.placed(
                "acme",
                "m1",
                &format!("ord_{n}"),
                &format!("order-{n}"),
                usd(),
            );
        }
        // The same order kept again takes no second place.
        placed.placed("acme", "m1", "ord_4", "order-4", usd());
        for forgotten in 0..2 {
            assert_eq!(placed.find("acme", "m1", &format!("ord_{forgotten}")), None);
        }
        for kept in 2..5 {
            assert_eq!(
                placed.find("acme", "m1", &format!("ord_{kept}")),
                Some((format!("order-{kept}"), usd()))
            );
        }
    }
}
