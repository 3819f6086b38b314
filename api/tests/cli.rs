//! The `shopagent` binary: configuration errors, migrations, and a clean stop on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::read_until;
use shopagent_commands::test_support::{create_pg_database, drop_pg_database};

/// A data directory for commands whose test names none, so that nothing is written
/// into the working directory (the default `data`).
static SCRATCH: std::sync::LazyLock<tempfile::TempDir> =
    std::sync::LazyLock::new(|| tempfile::tempdir().expect("tempdir"));

fn shopagent(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shopagent"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env("SHOPAGENT_DATA_DIR", SCRATCH.path())
        .env_remove("SHOPAGENT_LISTEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    command
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    shopagent(args, env).output().expect("run shopagent")
}

/// Exit code 1 and exactly one line on standard error, mentioning `expected`.
fn assert_one_line_failure(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {stderr}");
    assert!(lines[0].starts_with("shopagent: "), "{stderr}");
    assert!(lines[0].contains(expected), "{expected:?} not in {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unreachable_database_is_one_clear_error() {
    let output = run(
        &["migrate"],
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/shopagent")],
    );
    assert_one_line_failure(&output, "cannot reach PostgreSQL at 127.0.0.1:1/shopagent");
}

#[test]
fn malformed_database_url_is_one_clear_error() {
    let output = run(&["migrate"], &[("DATABASE_URL", "postgres://u:p@[::1/db")]);
    assert_one_line_failure(&output, "DATABASE_URL is malformed");
    let output = run(&["migrate"], &[("DATABASE_URL", "not a url")]);
    assert_one_line_failure(&output, "DATABASE_URL is malformed");
}

#[test]
fn unsupported_database_scheme_is_one_clear_error() {
    let output = run(&["serve"], &[("DATABASE_URL", "mysql://root@127.0.0.1/db")]);
    assert_one_line_failure(&output, "unsupported scheme `mysql`");
}

#[test]
fn password_never_appears_in_errors() {
    let output = run(
        &["migrate"],
        &[(
            "DATABASE_URL",
            "postgres://admin:hunter2secret@127.0.0.1:1/db",
        )],
    );
    assert_one_line_failure(&output, "cannot reach PostgreSQL");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("hunter2secret"));
}

#[test]
fn unusable_data_dir_is_one_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let data_dir = file.join("data");
    let output = run(
        &["migrate"],
        &[("SHOPAGENT_DATA_DIR", data_dir.to_str().expect("utf-8 path"))],
    );
    assert_one_line_failure(&output, "data directory");
}

#[test]
fn invalid_listen_address_is_rejected_before_anything_starts() {
    let output = run(&["serve"], &[("SHOPAGENT_LISTEN", "nowhere")]);
    assert_eq!(output.status.code(), Some(2), "usage error");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("SHOPAGENT_LISTEN")
            || String::from_utf8_lossy(&output.stderr).contains("--listen")
    );
}

#[test]
fn migrate_creates_the_embedded_store_and_is_repeatable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("nested").join("data");
    let env = [("SHOPAGENT_DATA_DIR", data_dir.to_str().expect("utf-8 path"))];
    for _ in 0..2 {
        let output = run(&["migrate"], &env);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(data_dir.join("shopagent.db").is_file());
}

#[tokio::test]
async fn migrate_applies_to_postgres() {
    let (url, name) = create_pg_database().await;
    let output = run(&["migrate"], &[("DATABASE_URL", &url)]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = run(&["projections", "status"], &[("DATABASE_URL", &url)]);
    assert!(status.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&status.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON line per projection"))
        .collect();
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["aggregate_catalog", "orders_hub", "reconciliation"]);
    assert!(lines.iter().all(|l| l["lag_events"] == 0));
    drop_pg_database(&name).await;
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = shopagent(
        &["serve"],
        &[
            (
                "SHOPAGENT_DATA_DIR",
                dir.path().to_str().expect("utf-8 path"),
            ),
            ("SHOPAGENT_LISTEN", "127.0.0.1:0"),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start shopagent");

    let mut logs = BufReader::new(child.stderr.take().expect("stderr"));
    let address = read_until(&mut logs, "shopagent listening")["address"]
        .as_str()
        .expect("address logged")
        .to_owned();

    let ready = std::net::TcpStream::connect(&address).expect("server accepts connections");
    drop(ready);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(killed.success());
    read_until(&mut logs, "shopagent stopped");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "shopagent did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn the_demo_tells_the_whole_story_and_exits_0() {
    let output = run(&["demo"], &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for step in [
        "autopilot checkout splits the cart",
        "shopagent approves the authorization",
        "the carrier's signed tracking events follow the parcel",
        "the merchant refunds it",
        "finance reconciles the day",
        "Every step did what it should.",
    ] {
        assert!(stdout.contains(step), "{step:?} missing from:\n{stdout}");
    }
    assert!(!stdout.contains('✗'));
}

#[test]
fn the_demo_fails_when_a_step_fails() {
    // Nothing listens there: the first step cannot happen.
    let output = run(
        &["demo", "--url", "http://127.0.0.1:1"],
        &[("SHOPAGENT_JWT_SECRET", "demo-secret")],
    );
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("The demo stopped"), "{stdout}");
}

/// Three consecutive free loopback ports.
fn three_free_ports() -> u16 {
    loop {
        let first = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let rest_free = (1..3).all(|offset| {
            first
                .checked_add(offset)
                .is_some_and(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        });
        if rest_free {
            return first;
        }
    }
}

#[test]
fn the_demo_drives_a_running_server_with_url() {
    use shopagent::demo;
    let dir = tempfile::tempdir().expect("tempdir");
    let first = three_free_ports();
    let issuer = format!("http://127.0.0.1:{first}");
    let carrier = format!("http://127.0.0.1:{}", first + 2);
    let mut server = shopagent(
        &["serve"],
        &[
            (
                "SHOPAGENT_DATA_DIR",
                dir.path().to_str().expect("utf-8 path"),
            ),
            ("SHOPAGENT_LISTEN", "127.0.0.1:0"),
            ("SHOPAGENT_JWT_SECRET", "demo-secret"),
            ("SHOPAGENT_CARD_ISSUER_URL", &issuer),
            ("SHOPAGENT_CARD_ISSUER_KEY", demo::ISSUER_KEY),
            (
                "SHOPAGENT_STRIPE_WEBHOOK_SECRET",
                demo::STRIPE_WEBHOOK_SECRET,
            ),
            ("SHOPAGENT_TRACKING_URL", &carrier),
            ("SHOPAGENT_TRACKING_KEY", demo::TRACKING_KEY),
            (
                "SHOPAGENT_TRACKING_WEBHOOK_SECRET",
                demo::TRACKING_WEBHOOK_SECRET,
            ),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start shopagent");
    let mut logs = BufReader::new(server.stderr.take().expect("stderr"));
    let address = read_until(&mut logs, "shopagent listening")["address"]
        .as_str()
        .expect("address logged")
        .to_owned();
    // Keep draining the server's logs (so it never blocks on a full pipe), and keep them.
    let captured = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut logs, &mut text);
        text
    });

    let output = run(
        &[
            "demo",
            "--url",
            &format!("http://{address}"),
            "--sandbox-port",
            &first.to_string(),
        ],
        &[("SHOPAGENT_JWT_SECRET", "demo-secret")],
    );
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("Every step did what it should."),
        "{stdout}"
    );

    // The whole story went through the server; its logs hold no personal data, no
    // token and no secret.
    let logs = captured.join().expect("log reader");
    for step in ["card authorization decided", "card transaction recorded"] {
        // Written inside a request: the line names its trace and span.
        let entry = logs
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|entry| entry["message"] == step)
            .unwrap_or_else(|| panic!("{step:?} not logged: {logs}"));
        let ids = &entry["openTelemetry"];
        for (id, length) in [("traceId", 32), ("spanId", 16)] {
            let id = ids[id].as_str().unwrap_or_default();
            assert!(
                id.len() == length
                    && id.chars().all(|c| c.is_ascii_hexdigit())
                    && id.chars().any(|c| c != '0'),
                "{step:?} logged without a {length}-digit id: {entry}"
            );
        }
    }
    // Personal data counts where it stands as a word of its own: the same five digits
    // inside a random id or a timestamp's fraction (`…a62701f…`, `.162701Z`) are not a
    // postal code.
    for personal in ["Ada Lovelace", "Analytical Row", "Springfield", "62701"] {
        assert!(
            !appears_as_word(&logs, personal),
            "{personal:?} appears in the server's logs"
        );
    }
    for secret in [
        "eyJ", // the start of every bearer token (a JWT)
        demo::ISSUER_KEY,
        demo::STRIPE_WEBHOOK_SECRET,
        demo::TRACKING_KEY,
        demo::TRACKING_WEBHOOK_SECRET,
        "demo-secret",
    ] {
        assert!(
            !logs.contains(secret),
            "{secret:?} appears in the server's logs"
        );
    }
}

/// Whether `word` occurs in `text` with no letter or digit right before or after it.
fn appears_as_word(text: &str, word: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric();
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

#[test]
fn a_postal_code_is_found_as_a_word_and_not_inside_an_id_or_a_timestamp() {
    for leaked in [
        r#"{"postal_code":"62701"}"#,
        "Springfield, IL 62701",
        "62701",
    ] {
        assert!(appears_as_word(leaked, "62701"), "{leaked}");
    }
    for unrelated in [
        r#"{"traceId":"9f62701ab03c"}"#,
        "2026-11-27T15:00:00.162701Z",
        "627010",
    ] {
        assert!(!appears_as_word(unrelated, "62701"), "{unrelated}");
    }
}

#[tokio::test]
async fn export_writes_a_chain_that_verify_export_checks() {
    use shopagent_commands::{CommandBus, StoreConfig};
    use shopagent_domain::cart::{Cart, CartCommand};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = shopagent::server::open_store(&StoreConfig::new(None, dir.path()))
        .await
        .expect("store");
    let bus = CommandBus::<Cart>::new(store.clone());
    for tenant in ["acme", "acme", "globex"] {
        let id = shopagent_domain::ids::CartId::new();
        let create = CartCommand::Create {
            cart_id: id,
            shopper: "alice".into(),
            mandate_id: None,
            currency: shopagent_domain::money::Currency::parse("USD").expect("USD"),
            at: time::OffsetDateTime::now_utc(),
        };
        bus.execute(
            &format!("{tenant}/{id}"),
            create,
            shopagent_domain::EventMetadata::new(tenant, "test"),
        )
        .await
        .expect("cart");
    }
    store.database().close().await;

    let data_dir = dir.path().to_str().expect("utf-8 path");
    let file = dir.path().join("acme.ndjson");
    let out = file.to_str().expect("utf-8 path");
    let exported = run(
        &["export", "--out", out, "--tenant", "acme"],
        &[("SHOPAGENT_DATA_DIR", data_dir)],
    );
    assert_eq!(
        exported.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    assert!(String::from_utf8_lossy(&exported.stdout).starts_with("2 events written"));
    let verified = run(&["verify-export", out], &[]);
    assert_eq!(verified.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&verified.stdout).contains("2 records, chain intact"));

    // One changed character in the second record: refused, at that line.
    let text = std::fs::read_to_string(&file).expect("read");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[1] = lines[1].replace("alice", "mallory");
    std::fs::write(&file, lines.join("\n") + "\n").expect("write");
    let tampered = run(&["verify-export", out], &[]);
    assert_one_line_failure(&tampered, "line 2: the record was changed");
}

#[test]
fn projections_pause_and_resume_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().to_str().expect("utf-8 path");
    let env = [("SHOPAGENT_DATA_DIR", data_dir)];
    let state = |output: &Output| {
        let status: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("one JSON status");
        status["state"].as_str().unwrap_or_default().to_owned()
    };
    let paused = run(&["projections", "pause", "orders_hub"], &env);
    assert_eq!(state(&paused), "paused");
    let listed = run(&["projections", "status"], &env);
    assert!(
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .any(|l| l.contains(r#""name":"orders_hub""#) && l.contains(r#""state":"paused""#))
    );
    let resumed = run(&["projections", "resume", "orders_hub"], &env);
    assert_eq!(state(&resumed), "running");
    let unknown = run(&["projections", "pause", "no_such"], &env);
    assert_one_line_failure(&unknown, "no projection is named no_such");

    let rebuilt = run(&["projections", "rebuild", "orders_hub"], &env);
    assert_eq!(
        rebuilt.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    assert!(
        String::from_utf8_lossy(&rebuilt.stdout).starts_with("orders_hub rebuilt from 0 events"),
        "{}",
        String::from_utf8_lossy(&rebuilt.stdout)
    );
    let unknown = run(&["projections", "rebuild", "no_such"], &env);
    assert_one_line_failure(&unknown, "no projection is named no_such");
}

#[tokio::test]
async fn reconcile_writes_the_days_report_as_json_and_csv() {
    use shopagent_commands::{CommandBus, StoreConfig};
    use shopagent_domain::ids::{AuthorizationId, CartId, MerchantId, OrderId, PaymentId};
    use shopagent_domain::money::{Currency, Money};
    use shopagent_domain::order::{CheckoutPath, Order, OrderCommand, OrderDraft};
    use shopagent_domain::payment::{CardReference, Payment, PaymentCommand};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = shopagent::server::open_store(&StoreConfig::new(None, dir.path()))
        .await
        .expect("store");
    let now = time::OffsetDateTime::now_utc();
    let usd = |minor| Money::new(minor, Currency::parse("USD").expect("USD"));
    let merchant = MerchantId::parse("acme-outdoor").expect("merchant");
    let meta = || shopagent_domain::EventMetadata::new("acme", "test");
    // One order placed and paid in full, one placed and captured short.
    for captured in [11_300, 9_000] {
        let order_id = OrderId::new();
        let orders = CommandBus::<Order>::new(store.clone());
        let order_stream = format!("acme/{order_id}");
        let draft = OrderDraft {
            cart_id: CartId::new(),
            shopper: "alice".into(),
            mandate_id: None,
            reservation_id: None,
            merchant: merchant.clone(),
            lines: vec![shopagent_domain::order::OrderLine {
                offer_id: shopagent_domain::ids::OfferId::parse("sku:tent").expect("offer"),
                title: "Trail Tent 2P".into(),
                quantity: 1,
                unit_price: usd(11_300),
            }],
            total: usd(11_300),
            path: CheckoutPath::Api,
            path_reason: "test".into(),
        };
        for command in [
            OrderCommand::Create {
                order_id,
                draft,
                at: now,
            },
            OrderCommand::Submit { at: now },
            OrderCommand::MarkPlaced {
                merchant_reference: format!("ord-{captured}"),
                at: now,
            },
        ] {
            orders
                .execute(&order_stream, command, meta())
                .await
                .expect("order");
        }
        let payments = CommandBus::<Payment>::new(store.clone());
        let payment_id = PaymentId::new();
        let authorization_id = AuthorizationId::new();
        for command in [
            PaymentCommand::RequestCard {
                payment_id,
                order_id,
                shopper: "alice".into(),
                mandate_id: None,
                merchant: merchant.clone(),
                cap: usd(11_300),
                at: now,
            },
            PaymentCommand::RecordCardIssued {
                card: CardReference::parse(&format!(
                    "ic_card{}",
                    if captured == 9_000 { "b" } else { "a" }
                ))
                .expect("card"),
                display: None,
                expires_at: now + time::Duration::days(1),
                at: now,
            },
            PaymentCommand::DecideAuthorization {
                authorization_id,
                amount: usd(11_300),
                merchant: merchant.clone(),
                mandate_revoked: false,
                at: now,
            },
            PaymentCommand::Capture {
                authorization_id,
                amount: usd(captured),
                at: now,
            },
        ] {
            payments
                .execute(&format!("acme/{payment_id}"), command, meta())
                .await
                .expect("payment");
        }
    }
    store.database().close().await;

    let data_dir = dir.path().to_str().expect("utf-8 path");
    let today = now.date().to_string();
    let json_report = run(
        &["reconcile", "--date", &today, "--format", "json"],
        &[("SHOPAGENT_DATA_DIR", data_dir)],
    );
    assert_eq!(
        json_report.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&json_report.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&json_report.stdout).expect("a JSON report");
    assert_eq!(report["date"], today.as_str());
    assert_eq!(report["totals"][0]["orders"], 2);
    assert_eq!(report["totals"][0]["captured_minor"], 11_300 + 9_000);
    assert_eq!(report["totals"][0]["exceptions"], 1);
    let statuses: Vec<(&str, Option<&str>)> = report["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| (o["status"].as_str().unwrap_or("?"), o["reason"].as_str()))
        .collect();
    assert_eq!(statuses.len(), 2);
    assert!(statuses.contains(&("matched", None)), "{statuses:?}");
    assert!(
        statuses.contains(&("exception", Some("capture_mismatch"))),
        "{statuses:?}"
    );

    let csv_report = run(
        &["reconcile", "--date", &today, "--format", "csv"],
        &[("SHOPAGENT_DATA_DIR", data_dir)],
    );
    assert_eq!(csv_report.status.code(), Some(0));
    let csv = String::from_utf8_lossy(&csv_report.stdout);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines,
        [
            "tenant,currency,orders,captured_minor,refunded_minor,merchant_refunded_minor,net_minor,exceptions",
            "acme,USD,2,20300,0,0,20300,1",
        ]
    );
    let orders_csv = run(
        &["reconcile", "--date", &today, "--format", "csv", "--orders"],
        &[("SHOPAGENT_DATA_DIR", data_dir)],
    );
    let orders_csv = String::from_utf8_lossy(&orders_csv.stdout);
    assert_eq!(orders_csv.lines().count(), 3, "{orders_csv}");
    assert!(
        orders_csv.contains(",exception,capture_mismatch,"),
        "{orders_csv}"
    );

    let bad_date = run(
        &["reconcile", "--date", "25/11/2026"],
        &[("SHOPAGENT_DATA_DIR", data_dir)],
    );
    assert_one_line_failure(&bad_date, "--date must be YYYY-MM-DD");
}

/// A server's JSON log entries, read on a thread of their own (which also keeps its
/// standard error drained).
struct LogFeed(std::sync::mpsc::Receiver<serde_json::Value>);

impl LogFeed {
    fn of(stderr: std::process::ChildStderr) -> Self {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(entry) = serde_json::from_str(&line)
                    && sender.send(entry).is_err()
                {
                    return;
                }
            }
        });
        Self(receiver)
    }

    /// Waits (at most 30 s) for an entry for which `wanted` holds; returns it.
    fn until(&self, what: &str, wanted: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(entry) if wanted(&entry) => return entry,
                Ok(_) => {}
                Err(error) => panic!("no log entry {what}: {error}"),
            }
        }
    }
}

/// A child process killed when the test ends, passed or not.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lease_entry(message: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |entry| entry["message"] == message && entry["lease"] == "projection.aggregate_catalog"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_takes_over_the_projections_when_the_first_dies() {
    let (url, name) = create_pg_database().await;
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("SHOPAGENT_LISTEN", "127.0.0.1:0"),
        ("SHOPAGENT_JWT_SECRET", "failover-secret"),
    ];
    let serve = || {
        let mut child = shopagent(&["serve"], &env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shopagent");
        let logs = LogFeed::of(child.stderr.take().expect("stderr"));
        (Running(child), logs)
    };
    let (first, first_logs) = serve();
    first_logs.until("of the first server's lease", lease_entry("lease taken"));
    let (second, second_logs) = serve();
    // Listening and standing by come in either order.
    let mut address = None;
    let mut standing_by = false;
    while address.is_none() || !standing_by {
        let entry = second_logs.until("of the second server starting", |e| {
            e["message"] == "shopagent listening"
                || lease_entry("another instance holds this lease; standing by")(e)
        });
        match entry["address"].as_str() {
            Some(listening) => address = Some(listening.to_owned()),
            None => standing_by = true,
        }
    }
    let address = address.unwrap_or_default();

    // The first server dies without a chance to clean up (SIGKILL).
    drop(first);
    let died = Instant::now();
    second_logs.until("of the takeover", lease_entry("lease taken"));
    let takeover = died.elapsed();
    assert!(
        takeover < Duration::from_secs(10),
        "took over in {takeover:?}"
    );

    // The survivor serves, and its catalog follows the log.
    let token = |role: &str| {
        let output = run(
            &[
                "token",
                "--tenant",
                "acme",
                "--subject",
                "ops-1",
                "--role",
                role,
            ],
            &env,
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let (shopper, ops) = (token("shopper"), token("ops"));
    let http = reqwest::Client::new();
    let created = http
        .post(format!("http://{address}/v1/carts"))
        .bearer_auth(&shopper)
        .header("Idempotency-Key", "failover-cart")
        .json(&serde_json::json!({"currency": "USD"}))
        .send()
        .await
        .expect("create a cart");
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed: serde_json::Value = http
            .get(format!("http://{address}/v1/ops/projections"))
            .bearer_auth(&ops)
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json");
        let catalog = common::projection(&listed, "aggregate_catalog");
        if catalog["events_applied"] == 1 && catalog["lag_events"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the catalog never caught up: {catalog}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(second);
    drop_pg_database(&name).await;
}
