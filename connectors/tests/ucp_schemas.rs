//! What both sides of a UCP checkout send, validated against the spec's own JSON Schemas
//! (`shared/specs/ucp/2026-01-11/source`): the connector's requests, the sandbox
//! merchant's answers, its discovery profile and its order-event webhooks.
//!
//! Request bodies are checked against the request form of a schema: UCP marks fields
//! with `ucp_request` (`omit`, `optional`, `required`, or one of those per operation),
//! and the platform must send exactly what that form allows.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::order;
use jsonschema::{Resource, Validator};
use serde_json::{Value, json};
use shopagent_connectors::Sandbox;
use shopagent_connectors::sandbox_merchant::SandboxMerchant;
use shopagent_connectors::ucp::{UcpConfig, UcpMerchant};
use shopagent_domain::ports::MerchantGateway;

fn spec_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/specs/ucp/2026-01-11/source")
}

fn json_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("spec folder (shared/ beside the repository)") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            json_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "json") {
            found.push(path);
        }
    }
}

/// Rewrites a schema into the form a request for `operation` must take.
fn request_form(schema: &mut Value, operation: &str) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Object(properties)) = map.get_mut("properties") {
                let mut required_now = Vec::new();
                let mut optional_now = Vec::new();
                for (name, property) in properties.iter_mut() {
                    let mode = match property.get("ucp_request") {
                        Some(Value::String(mode)) => Some(mode.clone()),
                        Some(Value::Object(per_op)) => per_op
                            .get(operation)
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        _ => None,
                    };
                    match mode.as_deref() {
                        Some("omit") => {
                            *property = Value::Bool(false);
                            optional_now.push(name.clone());
                        }
                        Some("optional") => optional_now.push(name.clone()),
                        Some("required") => required_now.push(name.clone()),
                        _ => {}
                    }
                }
                let mut required: Vec<Value> = map
                    .get("required")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                required.retain(|r| !optional_now.iter().any(|o| r == o));
                for name in required_now {
                    if !required.iter().any(|r| r == &name) {
                        required.push(Value::String(name));
                    }
                }
                map.insert("required".into(), Value::Array(required));
            }
            for value in map.values_mut() {
                request_form(value, operation);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| request_form(v, operation)),
        _ => {}
    }
}

/// A validator for `root#pointer`, every spec file registered (in its request form for
/// `operation`, if given).
fn validator(root: &str, operation: Option<&str>) -> Validator {
    let base = spec_root();
    let mut files = Vec::new();
    json_files(&base, &mut files);
    let mut options = jsonschema::options().should_validate_formats(true);
    for file in files {
        let mut contents: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
        if let Some(operation) = operation {
            request_form(&mut contents, operation);
        }
        let relative = file.strip_prefix(&base).expect("inside").to_string_lossy();
        // The spec's own `$id`, its place in the tree, and that place under `schemas/`:
        // the discovery profile's relative references (`../schemas/…`) resolve there.
        let mut uris = vec![
            format!("https://ucp.dev/{relative}"),
            format!("https://ucp.dev/schemas/{relative}"),
        ];
        uris.extend(contents["$id"].as_str().map(str::to_owned));
        for uri in uris {
            options = options.with_resource(
                uri,
                Resource::from_contents(contents.clone()).expect("resource"),
            );
        }
    }
    options
        .build(&json!({"$ref": root}))
        .unwrap_or_else(|e| panic!("schema {root}: {e}"))
}

fn assert_valid(validator: &Validator, instance: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} violates the UCP schema: {errors:#?}\n{instance:#}"
    );
}

const CHECKOUT: &str = "https://ucp.dev/schemas/shopping/fulfillment.json#/$defs/checkout";

#[tokio::test]
async fn the_connector_and_the_sandbox_send_what_the_ucp_schemas_allow() {
    let sandbox = SandboxMerchant::new();
    let (endpoint, _server) = sandbox.spawn().await.expect("sandbox");

    // The platform's webhook endpoint, recording what arrives.
    let received = Arc::new(Mutex::new(Vec::<Value>::new()));
    let sink = received.clone();
    let receiver = axum::Router::new().route(
        "/webhooks",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().expect("lock").push(body);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let webhook_url = format!("http://{}/webhooks", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    sandbox.deliver_webhooks_to(webhook_url);

    let client = UcpMerchant::new(
        UcpConfig {
            endpoint: endpoint.clone(),
            agent_profile: "https://shopagent.invalid/profile".into(),
        },
        reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client"),
    );
    let reference = client.place_order(&order("order/1")).await.expect("placed");
    sandbox.ship(&reference, "UPS", "1Z999").expect("ship");
    sandbox.deliver(&reference).expect("deliver");
    let rma = sandbox.accept_return(&reference).expect("return");
    sandbox.receive_return(&reference, &rma).expect("received");
    sandbox.refund(&reference, 10_000).expect("refund");

    let create_request = validator(CHECKOUT, Some("create"));
    let update_request = validator(CHECKOUT, Some("update"));
    let complete_request = validator("https://ucp.dev/schemas/shopping/payment_data.json", None);
    let checkout_response = validator(CHECKOUT, None);
    let exchanges = sandbox.exchanges();
    assert_eq!(
        exchanges.iter().map(|e| e.operation).collect::<Vec<_>>(),
        ["create", "update", "complete"]
    );
    for exchange in &exchanges {
        let request_schema = match exchange.operation {
            "create" => &create_request,
            "update" => &update_request,
            _ => &complete_request,
        };
        assert_valid(
            request_schema,
            &exchange.request,
            &format!("{} request", exchange.operation),
        );
        assert_valid(
            &checkout_response,
            &exchange.response,
            &format!("{} response", exchange.operation),
        );
    }

    let profile: Value = reqwest::get(format!("{endpoint}/.well-known/ucp"))
        .await
        .expect("profile")
        .json()
        .await
        .expect("json");
    assert_valid(
        &validator("https://ucp.dev/schemas/discovery/profile.json", None),
        &profile,
        "discovery profile",
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().expect("lock").len() < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = received.lock().expect("lock").clone();
    assert_eq!(
        events.len(),
        6,
        "created, shipped, delivered, return, received, refund"
    );
    let order_schema = validator("https://ucp.dev/schemas/shopping/order.json", None);
    for event in &events {
        assert_valid(&order_schema, event, "order event");
        assert!(event["event_id"].is_string() && event["created_time"].is_string());
    }
    let last = events.last().expect("last");
    assert_eq!(last["adjustments"][1]["amount"], 10_000);
}
