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
//! A merchant may also send its first event before its answer to the placement has
//! come back (the sandbox merchant does so for some orders under load):
//! the instance placing an order at that merchant knows a placement is under way, and
//! the event waits a moment for it ([`PlacedOrders::find_or_wait`]) instead of being
//! refused and sent again.
//!
//! Bounded: the oldest pairings are forgotten first, so memory stays flat under any
//! load; the placements under way are as many as the checkout process runs at once.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use lru::LruCache;
use shopagent_domain::money::Currency;
use tokio::sync::Notify;

/// How a merchant names an order: tenant, merchant, the merchant's reference.
type Reference = (String, String, String);

/// Where a placement is under way: tenant, merchant.
type Merchant = (String, String);

/// The orders placed lately, by reference ([module docs](self)).
#[derive(Debug)]
pub struct PlacedOrders {
    kept: Mutex<LruCache<Reference, (String, Currency)>>,
    /// How many placements are under way at each merchant.
    placing: Mutex<HashMap<Merchant, usize>>,
    /// Told whenever an order is kept or a placement ends.
    changed: Notify,
}

/// A placement under way at a merchant ([`PlacedOrders::placing_at`]); dropped, it ends.
#[derive(Debug)]
pub struct Placing<'a> {
    orders: &'a PlacedOrders,
    merchant: Merchant,
}

impl Drop for Placing<'_> {
    fn drop(&mut self) {
        {
            let mut placing = self.orders.placing();
            if let Some(count) = placing.get_mut(&self.merchant) {
                *count -= 1;
                if *count == 0 {
                    placing.remove(&self.merchant);
                }
            }
        }
        self.orders.changed.notify_waiters();
    }
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
            placing: Mutex::default(),
            changed: Notify::new(),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, LruCache<Reference, (String, Currency)>> {
        // Held only to put or peek one entry: a panic cannot leave it half done.
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn placing(&self) -> std::sync::MutexGuard<'_, HashMap<Merchant, usize>> {
        // Held only to count one placement in or out.
        self.placing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells that an order of `tenant` is being placed at `merchant` until the answer
    /// is dropped: hold it from before the call to the merchant until the order is kept
    /// ([`placed`](Self::placed)) or has failed.
    pub fn placing_at(&self, tenant: &str, merchant: &str) -> Placing<'_> {
        let merchant = (tenant.to_owned(), merchant.to_owned());
        *self.placing().entry(merchant.clone()).or_default() += 1;
        Placing {
            orders: self,
            merchant,
        }
    }

    fn is_placing_at(&self, merchant: &Merchant) -> bool {
        self.placing().contains_key(merchant)
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
        self.changed.notify_waiters();
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

    /// Like [`find`](Self::find); but while this instance is placing an order of
    /// `tenant` at `merchant`, waits for it up to `patience`: the merchant may tell of
    /// the order before its answer to the placement is back. `None` once no placement
    /// there is under way, or after `patience`.
    pub async fn find_or_wait(
        &self,
        tenant: &str,
        merchant: &str,
        reference: &str,
        patience: Duration,
    ) -> Option<(String, Currency)> {
        // Almost always kept already: no wait to prepare.
        if let Some(found) = self.find(tenant, merchant, reference) {
            return Some(found);
        }
        let deadline = tokio::time::Instant::now() + patience;
        let at = (tenant.to_owned(), merchant.to_owned());
        loop {
            // Listening before looking: a change between the two still wakes it.
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            // Asked before looking: a placement that ends between the two has kept
            // its order before it ended.
            let placing = self.is_placing_at(&at);
            if let Some(found) = self.find(tenant, merchant, reference) {
                return Some(found);
            }
            if !placing {
                return None;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.find(tenant, merchant, reference);
            }
        }
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

    /// Bounds a wait that must end by itself: a test that hangs fails here.
    async fn ends<T>(wait: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("the wait ended by itself")
    }

    const AN_HOUR: Duration = Duration::from_secs(3_600);

    /// What an event naming `ord_1` at `m1` finds, waiting up to an hour, while
    /// `meanwhile` runs 50 ms after it began to look.
    async fn found_while(
        placed: &PlacedOrders,
        meanwhile: impl FnOnce(),
    ) -> Option<(String, Currency)> {
        let later = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            meanwhile();
        };
        let (found, ()) = tokio::join!(
            ends(placed.find_or_wait("acme", "m1", "ord_1", AN_HOUR)),
            later
        );
        found
    }

    #[tokio::test]
    async fn an_event_waits_for_the_order_being_placed_at_its_merchant() {
        let placed = PlacedOrders::default();
        let placing = placed.placing_at("acme", "m1");
        let found = found_while(&placed, || {
            placed.placed("acme", "m1", "ord_1", "order-a", usd());
            drop(placing);
        })
        .await;
        assert_eq!(found, Some(("order-a".into(), usd())));
    }

    #[tokio::test]
    async fn without_a_placement_under_way_at_the_merchant_nothing_is_waited_for() {
        let placed = PlacedOrders::default();
        let _elsewhere = placed.placing_at("acme", "m2");
        let found = ends(placed.find_or_wait("acme", "m1", "ord_1", AN_HOUR)).await;
        assert_eq!(found, None);
    }

    #[tokio::test]
    async fn a_placement_that_ends_without_its_order_ends_the_wait() {
        let placed = PlacedOrders::default();
        let placing = placed.placing_at("acme", "m1");
        let found = found_while(&placed, || drop(placing)).await;
        assert_eq!(found, None);
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
