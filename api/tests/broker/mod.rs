//! A real Kafka-protocol broker for tests: `tansu`, on a free loopback port, keeping
//! its data in a SQLite file so that a restart loses nothing. `infra/scripts/test`
//! installs it on demand; `TANSU_BIN` names it, else `~/.cache/shopagent/tansu/bin/tansu`.
//! Without it a test is skipped, except under `CI=true`, where that is a failure.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct Broker {
    bin: PathBuf,
    port: u16,
    data: TempDir,
    child: Option<Child>,
}

fn binary() -> Option<PathBuf> {
    let named = std::env::var_os("TANSU_BIN").map(PathBuf::from);
    let cached = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/shopagent/tansu/bin/tansu"));
    named.or(cached).filter(|path| path.is_file())
}

impl Broker {
    /// A running broker, or `None` (the test is skipped) when tansu is not installed
    /// outside CI.
    pub fn start() -> Option<Self> {
        let Some(bin) = binary() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "no tansu broker: run infra/scripts/test, which installs it, or set TANSU_BIN"
            );
            eprintln!("skipped: no tansu broker (infra/scripts/test installs it)");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut broker = Self {
            bin,
            port,
            data: tempfile::tempdir().expect("broker data directory"),
            child: None,
        };
        broker.restart();
        Some(broker)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (again), on the same port and data; returns once it listens.
    pub fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // tansu resolves a SQLite path against its working directory.
        let storage = "sqlite://tansu.db";
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                storage,
            ])
            .current_dir(self.data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the broker (SIGKILL): an outage, not a clean stop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
