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
