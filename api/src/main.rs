use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use shopagent::auth::{Authenticator, Claims, Principal};
use shopagent::cli::{Cli, Command, ProjectionsCommand};
use shopagent::server::{Server, open_store, projections};
use shopagent::telemetry::{self, TelemetryConfig};
use shopagent_commands::export::Redactor;
use shopagent_connectors::easypost::{EasyPostConfig, EasyPostTracking};
use shopagent_connectors::search::{
    EmbeddedGenerations, EmbeddedIndex, MeilisearchGenerations, MeilisearchIndex,
};
use shopagent_connectors::stripe_issuing::{StripeIssuing, StripeIssuingConfig};
use shopagent_domain::ids::MandateId;
use shopagent_domain::ports::{CardIssuer, IndexGenerations, OfferIndex, TrackingProvider};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The server allocates and frees many small buffers per request on every worker
/// thread: with jemalloc's thread caches the server takes 13–16 % less CPU per command
/// than with glibc's allocator, and its decay gives freed pages back within seconds
/// (`docs/PERFORMANCE.md`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its story on stdout; routine logs would drown it.
    let demo = matches!(cli.command, Some(Command::Demo(_)));
    let log_filter = if demo && cli.log == "info" {
        "warn"
    } else {
        &cli.log
    };
    let telemetry = match telemetry::init(&TelemetryConfig::from_env(log_filter)) {
        Ok(telemetry) => telemetry,
        Err(error) => return fail(&error),
    };
    let outcome = run(cli).await;
    // The exporter blocks on its last HTTP request; not on a runtime worker.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// One line an operator can act on; the cause chain is joined with ": ".
fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("shopagent: {error:#}");
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.store.store_config();
    let authenticator = || -> anyhow::Result<Authenticator> {
        let secret = Authenticator::load_secret(cli.jwt_secret.as_deref(), &cli.store.data_dir)
            .context("cannot read or create the token secret in the data directory")?;
        Ok(Authenticator::new(Some(&secret), cli.jwks_url.clone()))
    };
    match cli.command.clone().unwrap_or(Command::Serve) {
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&shopagent::openapi::document())?
            );
            Ok(())
        }
        Command::Token(args) => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let claims = Claims {
                sub: args.subject,
                tenant: args.tenant,
                role: args.role,
                mandate: args.mandate.map(MandateId),
                exp: now + args.ttl_seconds.max(1),
                iat: now,
            };
            Principal::try_from(claims.clone())?;
            println!("{}", authenticator()?.issue(&claims)?);
            Ok(())
        }
        Command::Serve => {
            let issuer = match &cli.card_issuer_url {
                Some(url) => {
                    let config = StripeIssuingConfig {
                        base_url: url.clone(),
                        api_key: cli.card_issuer_key.clone().context(
                            "SHOPAGENT_CARD_ISSUER_KEY is required with SHOPAGENT_CARD_ISSUER_URL",
                        )?,
                        cardholder: cli.card_cardholder.clone(),
                        timeout: std::time::Duration::from_secs(10),
                    };
                    Some(Arc::new(StripeIssuing::new(config)?) as Arc<dyn CardIssuer>)
                }
                None => None,
            };
            let tracking = match &cli.tracking_url {
                Some(url) => {
                    let config = EasyPostConfig {
                        base_url: url.clone(),
                        api_key: cli.tracking_key.clone().context(
                            "SHOPAGENT_TRACKING_KEY is required with SHOPAGENT_TRACKING_URL",
                        )?,
                        timeout: std::time::Duration::from_secs(10),
                    };
                    Some(Arc::new(EasyPostTracking::new(config)?) as Arc<dyn TrackingProvider>)
                }
                None => None,
            };
            let secret = Authenticator::load_secret(cli.jwt_secret.as_deref(), &cli.store.data_dir)
                .context("cannot read or create the token secret in the data directory")?;
            let (index, generations) = offer_index(&cli).await?;
            let server = Server::build(&config, authenticator()?, cli.listen)
                .await?
                .with_pseudonym_key(shopagent::server::pseudonym_key(&secret))
                .with_capture_days(cli.capture_days)
                .with_stripe_webhook_secret(cli.stripe_webhook_secret.clone())
                .with_tracking_webhook_secret(cli.tracking_webhook_secret.clone())
                .with_card_issuer(issuer)
                .with_max_purchase_delay(
                    (cli.max_purchase_delay > 0)
                        .then(|| std::time::Duration::from_secs(cli.max_purchase_delay)),
                )
                .with_tracking(tracking)
                .with_event_stream(event_stream(&cli)?)
                .with_offer_index(index, generations);
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone())?);
            server.run(shutdown).await
        }
        Command::Export(args) => {
            let store = open_store(&config).await?;
            let secret = Authenticator::load_secret(cli.jwt_secret.as_deref(), &cli.store.data_dir)
                .context("cannot read or create the token secret in the data directory")?;
            let redactor = args
                .query
                .redact
                .then(|| Redactor::new(&shopagent::server::pseudonym_key(&secret)));
            let written = export_to_file(
                &store,
                args.query.filter(args.tenant.clone()),
                redactor,
                &args.out,
            )
            .await;
            store.close().await;
            let (records, head) = written?;
            println!(
                "{records} events written to {}; head hash {head}",
                args.out.display()
            );
            Ok(())
        }
        Command::VerifyExport { file } => {
            let opened = std::fs::File::open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let lines = std::io::BufRead::lines(std::io::BufReader::new(opened));
            match shopagent_commands::export::verify(lines) {
                Ok(verified) => {
                    println!(
                        "{}: {} records, chain intact, head hash {}",
                        file.display(),
                        verified.records,
                        verified.head_hash
                    );
                    Ok(())
                }
                Err(broken) => anyhow::bail!("{}: {broken}", file.display()),
            }
        }
        Command::Demo(args) => {
            let options = shopagent::demo::DemoOptions {
                url: args.url,
                sandbox_port: args.sandbox_port,
                jwt_secret: cli.jwt_secret.clone(),
            };
            if shopagent::demo::run(options).await? {
                Ok(())
            } else {
                anyhow::bail!("the demo failed")
            }
        }
        Command::Reconcile(args) => {
            let date = shopagent::routes::reconciliation::parse_day(&args.date)
                .context("--date must be YYYY-MM-DD")?;
            let store = open_store(&config).await?;
            let report = shopagent::report::day_report(
                &store,
                args.tenant.as_deref(),
                date,
                cli.capture_days,
            )
            .await;
            store.close().await;
            let report = report?;
            match &args.out {
                Some(path) => {
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    shopagent::report::write_report(&report, args.format, args.orders, file)
                }
                None => shopagent::report::write_report(
                    &report,
                    args.format,
                    args.orders,
                    std::io::stdout().lock(),
                ),
            }
        }
        Command::Migrate => {
            let store = open_store(&config).await?;
            store.close().await;
            tracing::info!(store = store.backend().as_str(), "migrations applied");
            Ok(())
        }
        Command::Projections {
            command: ProjectionsCommand::Pause { name },
        } => pause_projection(&config, &name, true).await,
        Command::Projections {
            command: ProjectionsCommand::Resume { name },
        } => pause_projection(&config, &name, false).await,
        Command::Projections {
            command: ProjectionsCommand::Rebuild { name },
        } => rebuild_projection(&config, &name).await,
        Command::Projections {
            command: ProjectionsCommand::Status,
        } => {
            let store = open_store(&config).await?;
            for projection in projections() {
                let status = shopagent_projections::status(&store, projection.name()).await?;
                println!("{}", serde_json::to_string(&status)?);
            }
            store.close().await;
            Ok(())
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT. The handlers are installed before this
/// returns, so a signal that arrives as soon as the server listens is not lost to the
/// default action (which would end the process without a clean stop).
fn cancel_on_signal(shutdown: CancellationToken) -> anyhow::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    let (mut terminate, mut interrupt) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        )
    };
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested; finishing in-flight work");
        shutdown.cancel();
    })
}

/// Writes an export to `out` with a progress bar on standard error; returns the record
/// count and the head hash.
/// The Kafka event stream `KAFKA_BROKERS` names, if any.
fn event_stream(
    cli: &Cli,
) -> anyhow::Result<Option<(Arc<shopagent_connectors::kafka::KafkaStream>, String)>> {
    let Some(brokers) = cli.kafka_brokers.as_deref().filter(|b| !b.is_empty()) else {
        return Ok(None);
    };
    let mut config = shopagent_connectors::kafka::KafkaConfig::new(brokers);
    config.partitions = cli.kafka_topic_partitions.max(1);
    let stream = shopagent_connectors::kafka::KafkaStream::new(config)
        .context("cannot configure the Kafka producer")?;
    Ok(Some((Arc::new(stream), cli.kafka_topic_prefix.clone())))
}

/// A progress bar with rate and time left, on standard error.
fn progress_bar(len: u64, unit: &str) -> indicatif::ProgressBar {
    let progress = indicatif::ProgressBar::new(len);
    progress.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {unit}  {{per_sec}}  eta {{eta}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress
}

/// Rebuilds projection `name` beside its live read model, showing progress by log
/// position.
async fn rebuild_projection(
    config: &shopagent_commands::StoreConfig,
    name: &str,
) -> anyhow::Result<()> {
    let projection = projections()
        .into_iter()
        .find(|p| p.name() == name)
        .with_context(|| format!("no projection is named {name}"))?;
    let store = open_store(config).await?;
    let progress = progress_bar(store.head_position().await?.max(0) as u64, "positions");
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone())?);
    let rebuilt = shopagent_projections::Rebuild::new(store.clone(), projection)
        .run(&shutdown, |step| {
            progress.set_length(step.head.max(0) as u64);
            progress.set_position(step.position.max(0) as u64);
        })
        .await;
    progress.finish_and_clear();
    store.close().await;
    let rebuilt = rebuilt?;
    println!(
        "{name} rebuilt from {} events up to position {} and switched",
        rebuilt.applied, rebuilt.position
    );
    Ok(())
}

async fn export_to_file(
    store: &shopagent_commands::Store,
    filter: shopagent_commands::export::ExportFilter,
    redactor: Option<Redactor>,
    out: &std::path::Path,
) -> anyhow::Result<(u64, String)> {
    use std::io::Write;
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut file = std::io::BufWriter::new(file);
    let mut exporter =
        shopagent_commands::export::Exporter::start(store.clone(), filter, redactor).await?;
    let progress = progress_bar(exporter.end_position().max(0) as u64, "events");
    let mut last = String::new();
    while let Some(page) = exporter.next_lines().await? {
        for line in page {
            writeln!(file, "{line}")?;
            progress.inc(1);
            last = line;
        }
    }
    file.flush()?;
    progress.finish_and_clear();
    let trailer: serde_json::Value = serde_json::from_str(&last)?;
    let records = trailer["trailer"]["count"].as_u64().unwrap_or(0);
    let head = trailer["trailer"]["head_hash"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok((records, head))
}

/// Pauses or resumes a projection of this build; prints its status.
async fn pause_projection(
    config: &shopagent_commands::StoreConfig,
    name: &str,
    paused: bool,
) -> anyhow::Result<()> {
    let Some(projection) = projections().into_iter().find(|p| p.name() == name) else {
        anyhow::bail!("no projection is named {name}");
    };
    let store = open_store(config).await?;
    shopagent_projections::set_paused(&store, projection.name(), paused).await?;
    let status = shopagent_projections::status(&store, projection.name()).await?;
    println!("{}", serde_json::to_string(&status)?);
    store.close().await;
    Ok(())
}

/// The offers index and where its rebuilds go: on the Meilisearch server when one is
/// configured (its settings applied now), else the live generation under
/// `<data dir>/search`. Another process holding that (a second instance on the same
/// data directory) leaves this one an index of its own in memory, built from the log.
async fn offer_index(
    cli: &Cli,
) -> anyhow::Result<(Arc<dyn OfferIndex>, Arc<dyn IndexGenerations>)> {
    if let Some(url) = &cli.meilisearch_url {
        let key = cli.meilisearch_key.as_deref();
        let index = MeilisearchIndex::new(url, key, &cli.meilisearch_index)?;
        index
            .configure()
            .await
            .context("cannot apply the offers index settings on Meilisearch")?;
        let generations = MeilisearchGenerations::new(url, key, &cli.meilisearch_index)?;
        return Ok((Arc::new(index), Arc::new(generations)));
    }
    let directory = cli.store.data_dir.join("search");
    Ok(match EmbeddedGenerations::open(&directory) {
        Ok((index, generations)) => (Arc::new(index), Arc::new(generations)),
        Err(error) => {
            tracing::warn!(%error, directory = %directory.display(), "search index in use or unreadable; indexing in memory");
            (
                Arc::new(EmbeddedIndex::in_memory()?),
                Arc::new(EmbeddedGenerations::in_memory()),
            )
        }
    })
}
