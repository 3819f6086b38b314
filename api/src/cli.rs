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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server and the projection runners (applies migrations first).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Inspect projections.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Checkpoint, head and lag of every projection, as JSON lines.
    Status,
}
