//! Where the checkout process finds each merchant's connector: the capability registry.
//! A UCP merchant's `api_endpoint` is its business URL; discovery (`/.well-known/ucp`)
//! finds the REST endpoint and settles the version.

use std::sync::Arc;
use std::time::Duration;

use shopagent_commands::CommandBus;
use shopagent_connectors::ucp::DiscoveringUcpMerchant;
use shopagent_domain::ids::MerchantId;
use shopagent_domain::merchant::{Merchant, Protocol};
use shopagent_domain::ports::{MerchantDirectory, MerchantGateway};

use crate::routes::merchants::merchant_stream_in;

/// Builds a gateway from the merchant's registry entry: its protocol and API endpoint.
#[derive(Debug)]
pub struct RegistryDirectory {
    pub merchants: Arc<CommandBus<Merchant>>,
    /// Our platform profile URI, sent to UCP merchants.
    pub agent_profile: String,
    pub timeout: Duration,
}

#[async_trait::async_trait]
impl MerchantDirectory for RegistryDirectory {
    async fn gateway(
        &self,
        tenant: &str,
        merchant: &MerchantId,
    ) -> Option<Arc<dyn MerchantGateway>> {
        let (registered, _) = self
            .merchants
            .load(&merchant_stream_in(tenant, merchant))
            .await
            .ok()?;
        let profile = registered.profile?;
        match (profile.protocol, profile.api_endpoint) {
            // The registry holds the business URL; its profile names the REST endpoint.
            (Some(Protocol::Ucp), Some(business_url)) => Some(Arc::new(
                DiscoveringUcpMerchant::new(business_url, self.agent_profile.clone(), self.timeout),
            )),
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
    timeout: Duration,
    max_age: Duration,
    cached: std::sync::Mutex<std::collections::HashMap<String, CachedKeys>>,
}

use shopagent_connectors::ucp::webhook::SigningKey;

/// A business's keys and when they were read.
type CachedKeys = (std::time::Instant, Arc<[SigningKey]>);

impl UcpSigningKeys {
    pub fn new(timeout: Duration, max_age: Duration) -> Self {
        Self {
            timeout,
            max_age,
            cached: std::sync::Mutex::default(),
        }
    }

    /// The keys of the business at `business_url`; `fresh` skips the cache.
    pub async fn keys(
        &self,
        business_url: &str,
        fresh: bool,
    ) -> Result<Arc<[SigningKey]>, shopagent_connectors::ucp::DiscoveryError> {
        let cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(business_url)
            .filter(|(at, _)| !fresh && at.elapsed() < self.max_age)
            .map(|(_, keys)| keys.clone());
        if let Some(keys) = cached {
            return Ok(keys);
        }
        let found = shopagent_connectors::ucp::discover(business_url, self.timeout).await?;
        let keys: Arc<[SigningKey]> = found.signing_keys.into();
        self.cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                business_url.to_owned(),
                (std::time::Instant::now(), keys.clone()),
            );
        Ok(keys)
    }
}
