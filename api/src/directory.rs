//! Where the checkout process finds each merchant's connector: the capability registry.
//! A UCP merchant's `api_endpoint` is its business URL; discovery (`/.well-known/ucp`)
//! finds the REST endpoint and settles the version.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shopagent_commands::CommandBus;
use shopagent_connectors::ucp::DiscoveringUcpMerchant;
use shopagent_domain::ids::MerchantId;
use shopagent_domain::merchant::{Merchant, Protocol};
use shopagent_domain::ports::{MerchantDirectory, MerchantGateway};

use crate::routes::merchants::merchant_stream_in;

/// Builds a gateway from the merchant's registry entry: its protocol and API endpoint.
///
/// A gateway is kept per merchant and reused while its registry entry names the same
/// endpoint, for at most [`RegistryDirectory::REDISCOVER_AFTER`]: building one for each
/// call discovered the business again and opened a connection for the profile and
/// another for the call. Every gateway shares one HTTP client, so calls to a merchant
/// reuse its open connections.
#[derive(Debug)]
pub struct RegistryDirectory {
    merchants: Arc<CommandBus<Merchant>>,
    /// Our platform profile URI, sent to UCP merchants.
    agent_profile: String,
    http: reqwest::Client,
    /// Each merchant's gateway, by its registry stream.
    kept: Kept<DiscoveringUcpMerchant>,
}

/// Values kept per key for a while: a value is answered only while it is younger than
/// `max_age`.
#[derive(Debug)]
struct Kept<V: ?Sized> {
    max_age: Duration,
    entries: std::sync::Mutex<HashMap<String, (Instant, Arc<V>)>>,
}

impl<V: ?Sized> Kept<V> {
    fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            entries: std::sync::Mutex::default(),
        }
    }

    /// The value kept for `key`, if it is young enough and `usable` accepts it.
    fn get(&self, key: &str, usable: impl FnOnce(&V) -> bool) -> Option<Arc<V>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .filter(|(at, value)| at.elapsed() < self.max_age && usable(value))
            .map(|(_, value)| Arc::clone(value))
    }

    /// Keeps `value` for `key` from now, in place of what was kept.
    fn keep(&self, key: String, value: Arc<V>) {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, (Instant::now(), value));
    }
}

impl RegistryDirectory {
    /// How long a merchant's discovered profile is trusted: a business that moves its
    /// REST endpoint is found there within this time, without a change to its registry
    /// entry.
    pub const REDISCOVER_AFTER: Duration = Duration::from_secs(300);

    /// A directory of the merchants `merchants` registers; each merchant call is bounded
    /// by `timeout`.
    pub fn new(
        merchants: Arc<CommandBus<Merchant>>,
        agent_profile: String,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            merchants,
            agent_profile,
            http: reqwest::Client::builder().timeout(timeout).build()?,
            kept: Kept::new(Self::REDISCOVER_AFTER),
        })
    }

    /// The gateway to the UCP business at `business_url` for the merchant `stream`:
    /// the kept one, unless it was built for another URL or long ago.
    fn ucp_gateway(&self, stream: String, business_url: String) -> Arc<DiscoveringUcpMerchant> {
        if let Some(kept) = self
            .kept
            .get(&stream, |gateway| gateway.business_url() == business_url)
        {
            return kept;
        }
        let gateway = Arc::new(DiscoveringUcpMerchant::new(
            business_url,
            self.agent_profile.clone(),
            self.http.clone(),
        ));
        self.kept.keep(stream, Arc::clone(&gateway));
        gateway
    }
}

#[async_trait::async_trait]
impl MerchantDirectory for RegistryDirectory {
    async fn gateway(
        &self,
        tenant: &str,
        merchant: &MerchantId,
    ) -> Option<Arc<dyn MerchantGateway>> {
        let stream = merchant_stream_in(tenant, merchant);
        // Read fresh: an entry's protocol and endpoint change.
        let (registered, _) = self.merchants.load(&stream).await.ok()?;
        let profile = registered.profile?;
        match (profile.protocol, profile.api_endpoint) {
            // The registry holds the business URL; its profile names the REST endpoint.
            (Some(Protocol::Ucp), Some(business_url)) => {
                Some(self.ucp_gateway(stream, business_url))
            }
            // Other protocols get their connectors in later work.
            _ => None,
        }
    }
}

/// The webhook signing keys of UCP businesses, read from their `/.well-known/ucp`
/// profiles and kept for a while. A signature naming a key the cached profile lacks
/// refreshes it once (the business may have rotated its keys).
#[derive(Debug)]
pub struct UcpSigningKeys {
    http: reqwest::Client,
    /// Each business's keys, by its URL.
    cached: Kept<[SigningKey]>,
}

use shopagent_connectors::ucp::webhook::SigningKey;

impl UcpSigningKeys {
    /// Keys read within `timeout` and kept for `max_age`.
    pub fn new(timeout: Duration, max_age: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(timeout).build()?,
            cached: Kept::new(max_age),
        })
    }

    /// The keys of the business at `business_url`; `fresh` skips the cache.
    pub async fn keys(
        &self,
        business_url: &str,
        fresh: bool,
    ) -> Result<Arc<[SigningKey]>, shopagent_connectors::ucp::DiscoveryError> {
        if let Some(keys) = self.cached.get(business_url, |_| !fresh) {
            return Ok(keys);
        }
        let found = shopagent_connectors::ucp::discover(&self.http, business_url).await?;
        let keys: Arc<[SigningKey]> = found.signing_keys.into();
        self.cached.keep(business_url.to_owned(), Arc::clone(&keys));
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use shopagent_commands::test_support::TestStore;
    use shopagent_domain::EventMetadata;
    use shopagent_domain::merchant::{MerchantCommand, MerchantProfile};
    use shopagent_domain::order::CheckoutPath;
    use time::OffsetDateTime;

    use super::*;

    fn ucp_profile(business_url: &str) -> MerchantProfile {
        MerchantProfile {
            name: "Acme".into(),
            protocol: Some(Protocol::Ucp),
            api_endpoint: Some(business_url.into()),
            deeplink_base: None,
            headless_domain: None,
            paths: [CheckoutPath::Api].into(),
            card_acceptor_ids: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_merchants_gateway_is_kept_until_its_registry_entry_names_another_endpoint() {
        let test = TestStore::sqlite().await;
        let merchants = Arc::new(CommandBus::<Merchant>::new(test.store.clone()));
        let acme = MerchantId::parse("acme").expect("a merchant id");
        let stream = merchant_stream_in("t1", &acme);
        let command = |command| {
            let merchants = Arc::clone(&merchants);
            let stream = stream.clone();
            async move {
                merchants
                    .execute(&stream, command, EventMetadata::new("t1", "ops"))
                    .await
                    .expect("the registry takes the command");
            }
        };
        command(MerchantCommand::Register {
            merchant: acme.clone(),
            profile: ucp_profile("http://127.0.0.1:1/old"),
            at: OffsetDateTime::now_utc(),
        })
        .await;
        let directory = RegistryDirectory::new(
            Arc::clone(&merchants),
            "agent".into(),
            Duration::from_secs(1),
        )
        .expect("an HTTP client");

        let first = directory.gateway("t1", &acme).await.expect("a gateway");
        let again = directory.gateway("t1", &acme).await.expect("a gateway");
        assert!(Arc::ptr_eq(&first, &again), "the gateway is kept");

        command(MerchantCommand::UpdateProfile {
            profile: ucp_profile("http://127.0.0.1:1/new"),
            at: OffsetDateTime::now_utc(),
        })
        .await;
        let moved = directory.gateway("t1", &acme).await.expect("a gateway");
        assert!(
            !Arc::ptr_eq(&first, &moved),
            "a new endpoint, a new gateway"
        );
        let kept = directory.kept.get(&stream, |_| true).expect("kept");
        assert_eq!(kept.business_url(), "http://127.0.0.1:1/new");
    }
}
