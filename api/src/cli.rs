//! Command line and environment configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use shopagent_commands::StoreConfig;

#[derive(Debug, Parser)]
#[command(
    name = "shopagent",
    version,
    about = "Backend for agent-powered shopping"
)]
pub struct Cli {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address the server listens on.
    #[arg(
        long,
        env = "SHOPAGENT_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,
    /// HS256 secret for bearer tokens. Unset: a random secret kept in the data directory.
    #[arg(
        long,
        env = "SHOPAGENT_JWT_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// JWKS URL of an OIDC provider whose RS256/ES256 tokens are accepted too.
    #[arg(long, env = "SHOPAGENT_JWKS_URL", global = true)]
    pub jwks_url: Option<String>,
    /// Signing secret of the card issuer's webhooks (`whsec_…`). Unset: the
    /// `/v1/webhooks/stripe` endpoint answers 404.
    #[arg(
        long,
        env = "SHOPAGENT_STRIPE_WEBHOOK_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub stripe_webhook_secret: Option<String>,
    /// Kafka-protocol brokers (`host:port,…`). Set: every event of the log is published
    /// to a topic per aggregate category. Unset: nothing Kafka-related starts.
    #[arg(long, env = "KAFKA_BROKERS", global = true)]
    pub kafka_brokers: Option<String>,
    /// Prefix of the topic names (`{prefix}orders`, …).
    #[arg(
        long,
        env = "KAFKA_TOPIC_PREFIX",
        global = true,
        default_value = "shopagent."
    )]
    pub kafka_topic_prefix: String,
    /// Partitions of the topics shopagent creates.
    #[arg(
        long,
        env = "KAFKA_TOPIC_PARTITIONS",
        global = true,
        default_value_t = 3
    )]
    pub kafka_topic_partitions: i32,
    /// Days a placed order may wait for its card capture before reconciliation calls it
    /// an exception.
    #[arg(long, env = "SHOPAGENT_CAPTURE_DAYS", global = true, default_value_t = crate::server::DEFAULT_CAPTURE_DAYS)]
    pub capture_days: u16,
    /// Card issuer API (Stripe Issuing shapes), e.g. `https://api.stripe.com`. Set: the
    /// checkout process manager runs and places `api` orders.
    #[arg(long, env = "SHOPAGENT_CARD_ISSUER_URL", global = true)]
    pub card_issuer_url: Option<String>,
    /// Seconds the purchases accepted may wait behind the log (the checkout process's
    /// delay) before autopilot checkouts are refused with 503 and `Retry-After`; 0 never
    /// refuses them. Applies where the checkout process runs.
    #[arg(long, env = "SHOPAGENT_MAX_PURCHASE_DELAY", global = true, default_value_t = crate::server::DEFAULT_MAX_PURCHASE_DELAY.as_secs())]
    pub max_purchase_delay: u64,
    /// Secret key for the card issuer.
    #[arg(
        long,
        env = "SHOPAGENT_CARD_ISSUER_KEY",
        global = true,
        hide_env_values = true
    )]
    pub card_issuer_key: Option<String>,
    /// Cardholder the virtual cards are issued to.
    #[arg(
        long,
        env = "SHOPAGENT_CARD_CARDHOLDER",
        default_value = "ich_shopagent",
        global = true
    )]
    pub card_cardholder: String,
    /// Carrier-tracking API (EasyPost shapes), e.g. `https://api.easypost.com`. Set:
    /// shipped parcels are registered for tracking.
    #[arg(long, env = "SHOPAGENT_TRACKING_URL", global = true)]
    pub tracking_url: Option<String>,
    /// API key for the tracking API.
    #[arg(
        long,
        env = "SHOPAGENT_TRACKING_KEY",
        global = true,
        hide_env_values = true
    )]
    pub tracking_key: Option<String>,
    /// Signing secret of the tracking provider's webhooks. Unset: the
    /// `/v1/webhooks/easypost/{tenant}` endpoint answers 404.
    #[arg(
        long,
        env = "SHOPAGENT_TRACKING_WEBHOOK_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub tracking_webhook_secret: Option<String>,
    /// Meilisearch server for the offers search index, e.g. `http://127.0.0.1:7700`.
    /// Unset: the embedded index in the data directory.
    #[arg(long, env = "MEILISEARCH_URL", global = true)]
    pub meilisearch_url: Option<String>,
    /// API key for Meilisearch (one that may manage the index's settings and
    /// documents).
    #[arg(
        long,
        env = "MEILISEARCH_API_KEY",
        global = true,
        hide_env_values = true
    )]
    pub meilisearch_key: Option<String>,
    /// The Meilisearch index the offers are kept in.
    #[arg(
        long,
        env = "SHOPAGENT_MEILISEARCH_INDEX",
        default_value = shopagent_connectors::search::meilisearch::DEFAULT_INDEX,
        global = true
    )]
    pub meilisearch_index: String,
    /// Log filter, in `tracing` EnvFilter syntax.
    #[arg(long, env = "SHOPAGENT_LOG", default_value = "info", global = true)]
    pub log: String,
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// PostgreSQL URL (`postgres://…`). Unset: the embedded SQLite store.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory of the embedded store.
    #[arg(
        long,
        env = "SHOPAGENT_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Most database connections the process opens.
    #[arg(
        long,
        env = "SHOPAGENT_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub db_max_connections: u32,
}

impl StoreArgs {
    pub fn store_config(&self) -> StoreConfig {
        let mut config = StoreConfig::new(self.database_url.clone(), &self.data_dir);
        config.max_connections = self.db_max_connections.max(1);
        config
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the HTTP server and the projection runners (applies migrations first).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print a bearer token signed with the configured secret (development).
    Token(TokenArgs),
    /// Print the OpenAPI description.
    Openapi,
    /// Write the event log as hash-chained NDJSON (auditors), with a progress bar.
    Export(ExportArgs),
    /// Check an export's hash chain and trailer; exit 1 at the first broken record.
    VerifyExport {
        /// The export file.
        file: PathBuf,
    },
    /// Run the whole purchase story through the public API against sandboxes: exits 0
    /// only if every step did what it should.
    Demo(DemoArgs),
    /// Write one day's reconciliation report (finance): totals per tenant and currency,
    /// or with `--orders` every order of the day with its status and reason.
    Reconcile(ReconcileArgs),
    /// Inspect projections.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Where to write the export.
    #[arg(long)]
    pub out: PathBuf,
    /// Only this tenant's events.
    #[arg(long)]
    pub tenant: Option<String>,
    #[command(flatten)]
    pub query: crate::routes::events::ExportQuery,
}

#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    /// The day, `YYYY-MM-DD` (UTC).
    #[arg(long)]
    pub date: String,
    #[arg(long, value_enum, default_value = "json")]
    pub format: ReportFormat,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// List every order of the day instead of the totals (CSV); JSON holds both.
    #[arg(long)]
    pub orders: bool,
    /// Write here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Csv,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Drive this running server instead of starting one (it must use the sandbox
    /// settings the demo prints, and `SHOPAGENT_JWT_SECRET`).
    #[arg(long)]
    pub url: Option<String>,
    /// First of three ports for the sandboxes (issuer, merchant, carrier); 0: any.
    #[arg(long, default_value_t = 0)]
    pub sandbox_port: u16,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    #[arg(long)]
    pub tenant: String,
    #[arg(long)]
    pub subject: String,
    #[arg(long, value_enum)]
    pub role: crate::auth::Role,
    /// The mandate an agent token acts under.
    #[arg(long)]
    pub mandate: Option<uuid::Uuid>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_seconds: i64,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ProjectionsCommand {
    /// Checkpoint, head, lag and state of every projection, as JSON lines.
    Status,
    /// Stop applying events to a projection, on every instance, until resumed.
    Pause { name: String },
    /// Resume a paused projection from where it stopped.
    Resume { name: String },
    /// Build a new version of a projection's read model beside the live one, then
    /// switch readers to it; with a progress bar. Servers keep serving throughout.
    Rebuild { name: String },
}
