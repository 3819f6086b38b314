//! Bearer-token authentication: HS256 tokens signed with the configured secret, and
//! OIDC tokens (RS256/ES256) verified against a JWKS.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use shopagent_domain::ids::MandateId;
use tokio::sync::RwLock;

/// What a caller may do. See docs/ARCHITECTURE.md for the authorization matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Shopper,
    Agent,
    Finance,
    Auditor,
    Ops,
    Admin,
}

/// The claims shopagent reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    pub role: Role,
    /// For agents: the mandate they act under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mandate: Option<MandateId>,
    pub exp: i64,
    #[serde(default)]
    pub iat: i64,
}

/// An authenticated caller. Kept with a running request (serialized), so that the
/// server can finish it as its caller if its process dies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub subject: String,
    pub tenant: String,
    pub role: Role,
    pub mandate: Option<MandateId>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("no token verifier is configured")]
    NoVerifier,
}

/// Tenants and subjects become parts of stream ids and keys: keep them plain.
/// Tenant and subject names: 1 to `max` letters, digits or `- _ . @ : |`.
pub(crate) fn valid_name(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':' | b'|')
        })
}

impl TryFrom<Claims> for Principal {
    type Error = AuthError;
    fn try_from(claims: Claims) -> Result<Self, AuthError> {
        if !valid_name(&claims.tenant, 64) {
            return Err(AuthError::Invalid(
                "tenant must be 1 to 64 letters, digits or - _ . @ : |".into(),
            ));
        }
        if !valid_name(&claims.sub, 128) {
            return Err(AuthError::Invalid(
                "sub must be 1 to 128 letters, digits or - _ . @ : |".into(),
            ));
        }
        match (claims.role, claims.mandate) {
            (Role::Agent, None) => {
                return Err(AuthError::Invalid(
                    "an agent token names its mandate".into(),
                ));
            }
            (Role::Agent, Some(_)) | (_, None) => {}
            (_, Some(_)) => {
                return Err(AuthError::Invalid(
                    "only agent tokens name a mandate".into(),
                ));
            }
        }
        Ok(Self {
            subject: claims.sub,
            tenant: claims.tenant,
            role: claims.role,
            mandate: claims.mandate,
        })
    }
}

/// Verifies tokens; issues HS256 tokens for development.
#[derive(Clone)]
pub struct Authenticator {
    secret: Option<(EncodingKey, DecodingKey)>,
    jwks: Option<Arc<JwksCache>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("hs256", &self.secret.is_some())
            .field("jwks", &self.jwks.as_ref().map(|j| j.url.clone()))
            .finish()
    }
}

struct JwksCache {
    url: String,
    client: reqwest::Client,
    keys: RwLock<(Option<JwkSet>, Option<Instant>)>,
}

/// A kid we do not know triggers at most one JWKS refresh per this interval.
const JWKS_REFRESH: Duration = Duration::from_secs(60);

impl Authenticator {
    pub fn new(secret: Option<&[u8]>, jwks_url: Option<String>) -> Self {
        Self {
            secret: secret.map(|s| (EncodingKey::from_secret(s), DecodingKey::from_secret(s))),
            jwks: jwks_url.map(|url| {
                Arc::new(JwksCache {
                    url,
                    client: reqwest::Client::builder()
                        .timeout(Duration::from_secs(5))
                        .build()
                        .unwrap_or_default(),
                    keys: RwLock::new((None, None)),
                })
            }),
        }
    }

    /// The HS256 secret: `SHOPAGENT_JWT_SECRET` when set, otherwise a random secret kept
    /// in `<data_dir>/jwt-secret` (created on first use, readable by the owner only).
    pub fn load_secret(configured: Option<&str>, data_dir: &Path) -> std::io::Result<Vec<u8>> {
        if let Some(secret) = configured.filter(|s| !s.is_empty()) {
            return Ok(secret.as_bytes().to_vec());
        }
        let path = data_dir.join("jwt-secret");
        match std::fs::read_to_string(&path) {
            Ok(secret) if !secret.trim().is_empty() => Ok(secret.trim().as_bytes().to_vec()),
            _ => {
                std::fs::create_dir_all(data_dir)?;
                let secret = format!(
                    "{}{}",
                    uuid::Uuid::new_v4().simple(),
                    uuid::Uuid::new_v4().simple()
                );
                write_private(&path, secret.as_bytes())?;
                Ok(secret.into_bytes())
            }
        }
    }

    /// Signs a development token with the HS256 secret.
    pub fn issue(&self, claims: &Claims) -> Result<String, AuthError> {
        let (encoding, _) = self.secret.as_ref().ok_or(AuthError::NoVerifier)?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = match header.alg {
            Algorithm::HS256 => {
                let (_, decoding) = self.secret.as_ref().ok_or(AuthError::NoVerifier)?;
                decode(token, decoding, Algorithm::HS256)?
            }
            alg @ (Algorithm::RS256 | Algorithm::ES256) => {
                let jwks = self.jwks.as_ref().ok_or(AuthError::NoVerifier)?;
                let key = jwks.key(header.kid.as_deref()).await?;
                decode(token, &key, alg)?
            }
            other => {
                return Err(AuthError::Invalid(format!(
                    "algorithm {other:?} is not accepted"
                )));
            }
        };
        Principal::try_from(claims)
    }
}

fn decode(token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Claims, AuthError> {
    let mut validation = Validation::new(alg);
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "sub"]);
    jsonwebtoken::decode::<Claims>(token, key, &validation)
        .map(|data| data.claims)
        .map_err(|e| AuthError::Invalid(e.to_string()))
}

impl JwksCache {
    async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        if let Some(key) = self.find(kid).await {
            return key;
        }
        let may_refresh = self
            .keys
            .read()
            .await
            .1
            .is_none_or(|at| at.elapsed() >= JWKS_REFRESH);
        if may_refresh {
            self.refresh().await?;
        }
        self.find(kid)
            .await
            .unwrap_or_else(|| Err(AuthError::Invalid("unknown signing key".into())))
    }

    async fn find(&self, kid: Option<&str>) -> Option<Result<DecodingKey, AuthError>> {
        let keys = self.keys.read().await;
        let set = keys.0.as_ref()?;
        let jwk = match kid {
            Some(kid) => set.find(kid)?,
            None => set.keys.first()?,
        };
        Some(DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Invalid(e.to_string())))
    }

    async fn refresh(&self) -> Result<(), AuthError> {
        let fetched = async {
            self.client
                .get(&self.url)
                .send()
                .await?
                .error_for_status()?
                .json::<JwkSet>()
                .await
        }
        .await;
        let mut keys = self.keys.write().await;
        keys.1 = Some(Instant::now());
        match fetched {
            Ok(set) => {
                keys.0 = Some(set);
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, "JWKS refresh failed");
                Err(AuthError::Invalid("signing keys unavailable".into()))
            }
        }
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}
