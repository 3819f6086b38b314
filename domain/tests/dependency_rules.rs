//! The workspace's dependency rules, read from the manifests and the lock file:
//!
//! * `domain` does no I/O: neither it nor anything it pulls in is a runtime, database,
//!   HTTP or broker crate;
//! * dependencies point one way: `api → {commands, projections, connectors} → domain`,
//!   with `projections → commands` for reading the log (ADR 0002).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

const IO_CRATES: &[&str] = &[
    "tokio",
    "sqlx",
    "axum",
    "hyper",
    "reqwest",
    "rdkafka",
    "tower",
    "mio",
    "async-std",
    "cqrs-es",
    "postgres-es",
    "sqlite-es",
    "meilisearch-sdk",
    "tantivy",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("domain lives in the workspace")
        .to_path_buf()
}

fn manifest(member: &str) -> toml::Table {
    let path = workspace_root().join(member).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Names of a manifest's normal and build dependencies (dev-dependencies excluded: tests
/// may use what the crate itself must not).
fn dependencies(member: &str) -> BTreeSet<String> {
    let manifest = manifest(member);
    ["dependencies", "build-dependencies"]
        .iter()
        .filter_map(|section| manifest.get(*section).and_then(|deps| deps.as_table()))
        .flat_map(|deps| deps.keys().cloned())
        .collect()
}

#[test]
fn domain_depends_on_no_io_crate() {
    let deps = dependencies("domain");
    let forbidden: Vec<_> = deps
        .iter()
        .filter(|d| IO_CRATES.contains(&d.as_str()))
        .collect();
    assert!(
        forbidden.is_empty(),
        "domain depends on I/O crates {forbidden:?}"
    );
}

#[test]
fn domain_pulls_in_no_io_crate_transitively() {
    let lock: toml::Table = std::fs::read_to_string(workspace_root().join("Cargo.lock"))
        .expect("Cargo.lock is committed")
        .parse()
        .expect("Cargo.lock parses");
    let packages = lock["package"].as_array().expect("packages");
    let graph: HashMap<&str, Vec<&str>> = packages
        .iter()
        .map(|package| {
            let name = package["name"].as_str().expect("name");
            let deps = package
                .get("dependencies")
                .and_then(|d| d.as_array())
                .map(|deps| {
                    deps.iter()
                        // Entries read "name" or "name version" when versions differ.
                        .filter_map(|d| d.as_str()?.split(' ').next())
                        .collect()
                })
                .unwrap_or_default();
            (name, deps)
        })
        .collect();
    // The lock file does not tell dev-dependencies apart, so start from the manifest's
    // normal dependencies.
    let mut stack: Vec<String> = dependencies("domain").into_iter().collect();
    let mut seen = BTreeSet::new();
    while let Some(name) = stack.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        for dep in graph.get(name.as_str()).into_iter().flatten() {
            stack.push((*dep).to_owned());
        }
    }
    let forbidden: Vec<_> = seen
        .iter()
        .filter(|d| IO_CRATES.contains(&d.as_str()))
        .collect();
    assert!(
        forbidden.is_empty(),
        "domain pulls in I/O crates {forbidden:?} via {seen:?}"
    );
}

#[test]
fn workspace_dependencies_point_one_way() {
    let allowed: &[(&str, &[&str])] = &[
        ("domain", &[]),
        ("connectors", &["shopagent-domain"]),
        ("commands", &["shopagent-domain"]),
        ("projections", &["shopagent-domain", "shopagent-commands"]),
        (
            "api",
            &[
                "shopagent-domain",
                "shopagent-commands",
                "shopagent-projections",
                "shopagent-connectors",
            ],
        ),
    ];
    for (member, may_use) in allowed {
        let internal: Vec<String> = dependencies(member)
            .into_iter()
            .filter(|d| d.starts_with("shopagent"))
            .collect();
        for dep in &internal {
            assert!(
                may_use.contains(&dep.as_str()),
                "{member} must not depend on {dep}"
            );
        }
    }
}

#[test]
fn the_binary_is_called_shopagent_and_lives_in_api() {
    let manifest = manifest("api");
    let bins = manifest["bin"].as_array().expect("[[bin]]");
    assert!(
        bins.iter()
            .any(|bin| bin["name"].as_str() == Some("shopagent"))
    );
}
