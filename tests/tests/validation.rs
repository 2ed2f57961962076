//! Request validation, table-driven: every write endpoint refuses bad
//! input with a problem document naming the failing field, and writes
//! nothing (every tenant-visible table keeps its row count).

use axum::body::Body;
use axum::http::{Method, Request};
use kubeforge::context::Role;
use kubeforge_tests::{cluster_body, Resp, TestApp};
use serde_json::{json, Value};
use tower::ServiceExt;

const PROBLEM: &str = "application/problem+json";

/// Sends a request with full control of the body's content type.
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Vec<u8>,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
) -> Resp {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"));
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .router
        .clone()
        .oneshot(req.body(Body::from(body)).expect("request"))
        .await
        .expect("infallible router");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&bytes).to_string();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        body,
        text,
    }
}

/// One refused request.
struct Case {
    name: String,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    status: u16,
    code: &'static str,
    /// The field the problem must name; `None`: the problem names none.
    field: Option<String>,
}

/// A well-formed JSON body that fails validation on `field`.
fn invalid(name: &str, body: Value, field: &str) -> Case {
    Case {
        name: name.into(),
        body: serde_json::to_vec(&body).unwrap(),
        content_type: Some("application/json"),
        status: 422,
        code: "validation_failed",
        field: Some(field.into()),
    }
}

/// A JSON body refused with `code`/`status` on `field`.
fn refused(name: &str, body: Value, status: u16, code: &'static str, field: &str) -> Case {
    Case {
        status,
        code,
        ..invalid(name, body, field)
    }
}

/// `base` with `f` applied.
fn with(base: &Value, f: impl FnOnce(&mut Value)) -> Value {
    let mut v = base.clone();
    f(&mut v);
    v
}

/// `base` without the top-level `key`.
fn without(base: &Value, key: &str) -> Value {
    let mut v = base.clone();
    v.as_object_mut().unwrap().remove(key);
    v
}

/// Cases every JSON endpoint shares, derived from one valid body: broken
/// JSON, wrong content types and an oversized body.
fn envelope_cases(valid: &Value) -> Vec<Case> {
    let raw = serde_json::to_vec(valid).unwrap();
    let malformed = |name: &str, body: Vec<u8>, ct: Option<&'static str>| Case {
        name: name.into(),
        body,
        content_type: ct,
        status: 400,
        code: "malformed_body",
        field: None,
    };
    let json = Some("application/json");
    let mut truncated = raw.clone();
    truncated.truncate(raw.len() / 2);
    let mut trailing = raw.clone();
    trailing.extend_from_slice(b" {\"x\": 1}");
    // Valid JSON, only too big: padded with whitespace past 64 KiB.
    let mut oversized = raw.clone();
    oversized.extend(std::iter::repeat_n(b' ', 65 * 1024));
    vec![
        malformed("truncated JSON", truncated, json),
        malformed("not JSON", b"name=web".to_vec(), json),
        malformed("empty body", Vec::new(), json),
        malformed("single quotes", b"{'name': 'web'}".to_vec(), json),
        malformed("trailing data after the JSON value", trailing, json),
        malformed("text/plain content type", raw.clone(), Some("text/plain")),
        malformed(
            "form content type",
            raw.clone(),
            Some("application/x-www-form-urlencoded"),
        ),
        malformed("no content type", raw.clone(), None),
        Case {
            name: "body over 64 KiB".into(),
            body: oversized,
            content_type: json,
            status: 413,
            code: "payload_too_large",
            field: None,
        },
        invalid(
            "unknown top-level field",
            with(valid, |b| b["colour"] = json!("blue")),
            "colour",
        ),
        Case {
            name: "JSON string instead of an object".into(),
            body: b"\"web\"".to_vec(),
            content_type: json,
            status: 422,
            code: "validation_failed",
            field: None,
        },
        Case {
            name: "JSON null instead of an object".into(),
            body: b"null".to_vec(),
            content_type: json,
            status: 422,
            code: "validation_failed",
            field: None,
        },
    ]
}

/// Runs every case against one endpoint; collects all failures, then panics.
async fn run_cases(app: &TestApp, method: Method, path: &str, token: &str, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let before = app.counts().await;
        let key = format!("case-{i}");
        let resp = send(
            app,
            method.clone(),
            path,
            token,
            case.body.clone(),
            case.content_type,
            &[("idempotency-key", key.as_str())],
        )
        .await;
        let after = app.counts().await;
        let mut problems = Vec::new();
        if resp.status.as_u16() != case.status {
            problems.push(format!("status {} (want {})", resp.status, case.status));
        }
        let ct = resp
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if ct != PROBLEM {
            problems.push(format!("content-type {ct:?}"));
        }
        if resp.body["code"] != case.code {
            problems.push(format!("code {} (want {})", resp.body["code"], case.code));
        }
        if resp.body["status"] != case.status {
            problems.push(format!("body status {}", resp.body["status"]));
        }
        if resp.body["retryable"] != false {
            problems.push(format!("retryable {}", resp.body["retryable"]));
        }
        for key in ["type", "title", "detail"] {
            if !resp.body[key].is_string() {
                problems.push(format!("problem has no {key}"));
            }
        }
        match &case.field {
            Some(f) if resp.body["field"] != f.as_str() => {
                problems.push(format!("field {} (want {f:?})", resp.body["field"]))
            }
            None if case.status != 422 && resp.body.get("field").is_some() => {
                problems.push(format!("unexpected field {}", resp.body["field"]))
            }
            _ => {}
        }
        if before != after {
            problems.push(format!("wrote rows: {before:?} -> {after:?}"));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{method} {path} [{}]: {}\n    body: {}",
                case.name,
                problems.join("; "),
                resp.text.chars().take(400).collect::<String>()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Creates a cluster (with pool `default`) and returns its id.
async fn make_cluster(app: &TestApp, token: &str, name: &str) -> String {
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(token),
            Some(cluster_body(name)),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    r.body["cluster"]["id"].as_str().unwrap().to_string()
}

fn pool_cases(prefix: &str, base: &Value, at: impl Fn(&mut Value) -> &mut Value) -> Vec<Case> {
    let p = |f: &str| {
        if prefix.is_empty() {
            f.to_string()
        } else {
            format!("{prefix}.{f}")
        }
    };
    let m = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(at(&mut v));
        v
    };
    vec![
        invalid(
            "pool: unknown field",
            m(&|b| b["colour"] = json!("red")),
            &p("colour"),
        ),
        invalid(
            "pool: unknown autoscaling field",
            m(&|b| b["autoscaling"] = json!({"min": 1, "max": 3, "colour": 1})),
            &p("autoscaling.colour"),
        ),
        invalid(
            "pool: unknown taint field",
            m(&|b| b["taints"] = json!([{"key": "k", "effect": "NoSchedule", "colour": 1}])),
            &p("taints[0].colour"),
        ),
        invalid(
            "pool: uppercase name",
            m(&|b| b["name"] = json!("Default")),
            &p("name"),
        ),
        invalid(
            "pool: empty name",
            m(&|b| b["name"] = json!("")),
            &p("name"),
        ),
        invalid(
            "pool: name too long",
            m(&|b| b["name"] = json!("a".repeat(21))),
            &p("name"),
        ),
        invalid(
            "pool: name with dot",
            m(&|b| b["name"] = json!("a.b")),
            &p("name"),
        ),
        invalid(
            "pool: name not a string",
            m(&|b| b["name"] = json!(7)),
            &p("name"),
        ),
        invalid(
            "pool: machine type",
            m(&|b| b["machine_type"] = json!("huge")),
            &p("machine_type"),
        ),
        invalid(
            "pool: an EC2 machine type on lab",
            m(&|b| b["machine_type"] = json!("g4dn.xlarge")),
            &p("machine_type"),
        ),
        invalid(
            "pool: alternatives on lab",
            m(&|b| b["alternative_machine_types"] = json!(["large"])),
            &p("alternative_machine_types"),
        ),
        invalid(
            "pool: an alternative that is the machine type",
            m(&|b| b["alternative_machine_types"] = json!(["small"])),
            &p("alternative_machine_types[0]"),
        ),
        invalid(
            "pool: an alternative smaller than the machine type",
            m(&|b| {
                b["machine_type"] = json!("medium");
                b["alternative_machine_types"] = json!(["large", "small"]);
            }),
            &p("alternative_machine_types[1]"),
        ),
        invalid(
            "pool: an unknown alternative",
            m(&|b| b["alternative_machine_types"] = json!(["medium", "huge"])),
            &p("alternative_machine_types[1]"),
        ),
        invalid(
            "pool: five alternatives",
            m(&|b| {
                b["alternative_machine_types"] = json!([
                    "m5.large",
                    "m5.xlarge",
                    "m6i.large",
                    "m6i.xlarge",
                    "r5.large"
                ])
            }),
            &p("alternative_machine_types"),
        ),
        invalid(
            "pool: alternatives not a list",
            m(&|b| b["alternative_machine_types"] = json!("large")),
            &p("alternative_machine_types"),
        ),
        invalid(
            "pool: size above max",
            m(&|b| b["size"] = json!(101)),
            &p("size"),
        ),
        invalid(
            "pool: size a string",
            m(&|b| b["size"] = json!("three")),
            &p("size"),
        ),
        invalid(
            "pool: size negative",
            m(&|b| b["size"] = json!(-1)),
            &p("size"),
        ),
        invalid(
            "pool: size fractional",
            m(&|b| b["size"] = json!(1.5)),
            &p("size"),
        ),
        invalid(
            "pool: size huge",
            m(&|b| b["size"] = json!(1u64 << 40)),
            &p("size"),
        ),
        invalid(
            "pool: size above autoscaling max",
            m(&|b| {
                b["size"] = json!(9);
                b["autoscaling"] = json!({"min": 1, "max": 5});
            }),
            &p("size"),
        ),
        invalid(
            "pool: size below autoscaling min",
            m(&|b| {
                b["size"] = json!(1);
                b["autoscaling"] = json!({"min": 2, "max": 5});
            }),
            &p("size"),
        ),
        invalid(
            "pool: autoscaling min > max",
            m(&|b| {
                b.as_object_mut().unwrap().remove("size");
                b["autoscaling"] = json!({"min": 6, "max": 5});
            }),
            &p("autoscaling.min"),
        ),
        invalid(
            "pool: autoscaling max 0",
            m(&|b| {
                b["size"] = json!(0);
                b["autoscaling"] = json!({"min": 0, "max": 0});
            }),
            &p("autoscaling.max"),
        ),
        invalid(
            "pool: autoscaling max above limit",
            m(&|b| b["autoscaling"] = json!({"min": 1, "max": 101})),
            &p("autoscaling.max"),
        ),
        invalid(
            "pool: autoscaling min a string",
            m(&|b| b["autoscaling"] = json!({"min": "one", "max": 3})),
            &p("autoscaling.min"),
        ),
        invalid(
            "pool: autoscaling priority a string",
            m(&|b| b["autoscaling"] = json!({"min": 1, "max": 3, "priority": "high"})),
            &p("autoscaling.priority"),
        ),
        invalid(
            "pool: autoscaling priority beyond i32",
            m(&|b| b["autoscaling"] = json!({"min": 1, "max": 3, "priority": 1u64 << 32})),
            &p("autoscaling.priority"),
        ),
        invalid(
            "pool: label key with space",
            m(&|b| b["labels"] = json!({"bad key": "v"})),
            &p("labels.bad key"),
        ),
        invalid(
            // The renderer refused this after the join's token existed;
            // now the API refuses it first (one rule for both).
            "pool: label key prefix not a DNS subdomain",
            m(&|b| b["labels"] = json!({"-bad.example/tier": "web"})),
            &p("labels.-bad.example/tier"),
        ),
        invalid(
            "pool: taint key prefix not a DNS subdomain",
            m(&|b| b["taints"] = json!([{"key": "bad-.example/x", "effect": "NoSchedule"}])),
            &p("taints[0].key"),
        ),
        invalid(
            "pool: taint key under Kubeforge's prefix",
            m(&|b| {
                b["taints"] = json!([{"key": "kubeforge.io/dedicated", "effect": "NoSchedule"}])
            }),
            &p("taints[0].key"),
        ),
        invalid(
            "pool: label key name part over 63 characters",
            m(&|b| b["labels"] = json!({format!("example.com/{}", "k".repeat(64)): "v"})),
            &p(&format!("labels.example.com/{}", "k".repeat(64))),
        ),
        invalid(
            "pool: taint key prefix over 253 characters",
            m(
                &|b| b["taints"] = json!([{"key": format!("{}/x", vec!["a".repeat(63); 5].join(".")), "effect": "NoSchedule"}]),
            ),
            &p("taints[0].key"),
        ),
        invalid(
            "pool: label value invalid",
            m(&|b| b["labels"] = json!({"tier": "-x-"})),
            &p("labels.tier"),
        ),
        invalid(
            "pool: reserved label prefix",
            m(&|b| b["labels"] = json!({"kubeforge.io/owner": "me"})),
            &p("labels.kubeforge.io/owner"),
        ),
        invalid(
            "pool: label value not a string",
            m(&|b| b["labels"] = json!({"tier": 3})),
            &p("labels.tier"),
        ),
        invalid(
            "pool: labels an array",
            m(&|b| b["labels"] = json!(["a"])),
            &p("labels"),
        ),
        invalid(
            "pool: taint key invalid",
            m(&|b| b["taints"] = json!([{"key": "bad key", "effect": "NoSchedule"}])),
            &p("taints[0].key"),
        ),
        invalid(
            "pool: taint value invalid",
            m(&|b| {
                b["taints"] = json!([
                    {"key": "ok", "effect": "NoSchedule"},
                    {"key": "dedicated", "value": "gpu!", "effect": "NoExecute"}
                ])
            }),
            &p("taints[1].value"),
        ),
        invalid(
            "pool: taint effect unknown",
            m(&|b| b["taints"] = json!([{"key": "k", "effect": "Sometimes"}])),
            &p("taints[0].effect"),
        ),
        invalid(
            "pool: taint without effect",
            m(&|b| b["taints"] = json!([{"key": "k"}])),
            &p("taints[0].effect"),
        ),
        invalid(
            "pool: too many taints",
            m(&|b| {
                b["taints"] = (0..33)
                    .map(|i| json!({"key": format!("k{i}"), "effect": "NoSchedule"}))
                    .collect()
            }),
            &p("taints"),
        ),
        invalid(
            "pool: taints an object",
            m(&|b| b["taints"] = json!({})),
            &p("taints"),
        ),
        invalid(
            "pool: label reserved for the pool name",
            m(&|b| b["labels"] = json!({"kubeforge.io/node-pool": "other"})),
            &p("labels.kubeforge.io/node-pool"),
        ),
        invalid(
            "pool: kubernetes.io label",
            m(&|b| b["labels"] = json!({"tier": "web", "kubernetes.io/hostname": "x"})),
            &p("labels.kubernetes.io/hostname"),
        ),
        invalid(
            "pool: node-role label",
            m(&|b| b["labels"] = json!({"node-role.kubernetes.io/worker": ""})),
            &p("labels.node-role.kubernetes.io/worker"),
        ),
        invalid(
            "pool: k8s.io label",
            m(&|b| b["labels"] = json!({"k8s.io/x": "y"})),
            &p("labels.k8s.io/x"),
        ),
        invalid(
            "pool: drain timeout above an hour",
            m(&|b| b["drain_timeout_seconds"] = json!(3601)),
            &p("drain_timeout_seconds"),
        ),
        invalid(
            "pool: drain timeout negative",
            m(&|b| b["drain_timeout_seconds"] = json!(-1)),
            &p("drain_timeout_seconds"),
        ),
        invalid(
            "pool: drain timeout a string",
            m(&|b| b["drain_timeout_seconds"] = json!("5m")),
            &p("drain_timeout_seconds"),
        ),
        invalid(
            "pool: repair threshold too short",
            m(&|b| b["auto_repair"] = json!({"enabled": true, "after_seconds": 9})),
            &p("auto_repair.after_seconds"),
        ),
        invalid(
            "pool: repair threshold above a day, repair off",
            m(&|b| b["auto_repair"] = json!({"enabled": false, "after_seconds": 86_401})),
            &p("auto_repair.after_seconds"),
        ),
        invalid(
            "pool: auto_repair enabled a string",
            m(&|b| b["auto_repair"] = json!({"enabled": "yes"})),
            &p("auto_repair.enabled"),
        ),
        invalid(
            "pool: unknown auto_repair field",
            m(&|b| b["auto_repair"] = json!({"after": 60})),
            &p("auto_repair.after"),
        ),
        invalid(
            "pool: auto_repair a boolean",
            m(&|b| b["auto_repair"] = json!(true)),
            &p("auto_repair"),
        ),
    ]
}

/// Bad autoscaler settings, each under `"autoscaler"` of a body made by
/// `wrap`; every one names its field.
fn autoscaler_cases(wrap: impl Fn(Value) -> Value) -> Vec<Case> {
    let a = |name: &str, settings: Value, field: &str| {
        invalid(
            &format!("autoscaler: {name}"),
            wrap(settings),
            &format!("autoscaler.{field}"),
        )
    };
    vec![
        a("unknown field", json!({"colour": 1}), "colour"),
        a("unknown mode", json!({"mode": "auto"}), "mode"),
        a("mode a number", json!({"mode": 1}), "mode"),
        a(
            "unknown expander",
            json!({"expander": "random"}),
            "expander",
        ),
        a(
            "threshold 0",
            json!({"scale_down_utilization_threshold": 0}),
            "scale_down_utilization_threshold",
        ),
        a(
            "threshold above 1",
            json!({"scale_down_utilization_threshold": 1.5}),
            "scale_down_utilization_threshold",
        ),
        a(
            "threshold a string",
            json!({"scale_down_utilization_threshold": "half"}),
            "scale_down_utilization_threshold",
        ),
        a(
            "unneeded below 10 s",
            json!({"scale_down_unneeded_seconds": 9}),
            "scale_down_unneeded_seconds",
        ),
        a(
            "unneeded above a day",
            json!({"scale_down_unneeded_seconds": 86_401}),
            "scale_down_unneeded_seconds",
        ),
        a(
            "unneeded negative",
            json!({"scale_down_unneeded_seconds": -1}),
            "scale_down_unneeded_seconds",
        ),
        a(
            "batch idle above 60 s",
            json!({"batch_idle_seconds": 61, "batch_max_seconds": 120}),
            "batch_idle_seconds",
        ),
        a(
            "batch idle above the current batch max",
            json!({"batch_idle_seconds": 11}),
            "batch_idle_seconds",
        ),
        a(
            "batch max below batch idle",
            json!({"batch_idle_seconds": 5, "batch_max_seconds": 4}),
            "batch_max_seconds",
        ),
        a(
            "batch max above 300 s",
            json!({"batch_max_seconds": 301}),
            "batch_max_seconds",
        ),
        a(
            "no nodes per scale-up",
            json!({"max_nodes_per_scale_up": 0}),
            "max_nodes_per_scale_up",
        ),
        a(
            "too many nodes per scale-up",
            json!({"max_nodes_per_scale_up": 1001}),
            "max_nodes_per_scale_up",
        ),
        invalid("autoscaler: an array", wrap(json!(["off"])), "autoscaler"),
    ]
}

#[tokio::test]
async fn cluster_create_refuses_bad_requests_and_writes_nothing() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Editor);
    let base = cluster_body("web-prod");
    let b = |f: &dyn Fn(&mut Value)| with(&base, f);
    let mut cases = envelope_cases(&base);
    cases.extend([
        // unknown fields, at every depth
        invalid(
            "unknown network field",
            b(&|v| v["network"]["colour"] = json!("x")),
            "network.colour",
        ),
        invalid(
            "unknown control plane field",
            b(&|v| v["control_plane"]["colour"] = json!("x")),
            "control_plane.colour",
        ),
        invalid(
            "unknown provider field",
            b(&|v| v["provider"]["colour"] = json!("x")),
            "provider.colour",
        ),
        // missing required fields
        invalid("missing name", without(&base, "name"), "name"),
        invalid(
            "missing kubernetes_version",
            without(&base, "kubernetes_version"),
            "kubernetes_version",
        ),
        invalid("missing provider", without(&base, "provider"), "provider"),
        invalid(
            "provider without kind",
            b(&|v| v["provider"] = json!({})),
            "provider.kind",
        ),
        invalid(
            "unknown provider kind",
            b(&|v| v["provider"] = json!({"kind": "gcp"})),
            "provider.kind",
        ),
        invalid(
            "aws provider with empty region",
            b(&|v| {
                v["provider"] = json!({"kind": "aws", "region": "", "subnet_id": "s", "ami": "a"})
            }),
            "provider.region",
        ),
        invalid(
            "aws provider without ami",
            b(&|v| v["provider"] = json!({"kind": "aws", "region": "r", "subnet_id": "s"})),
            "provider.ami",
        ),
        Case {
            name: "duplicate key".into(),
            body: br#"{"name": "a", "name": "b", "kubernetes_version": "1.20.2", "provider": {"kind": "lab"}}"#.to_vec(),
            content_type: Some("application/json"),
            status: 422,
            code: "validation_failed",
            field: Some("name".into()),
        },
        // name
        invalid(
            "uppercase name",
            b(&|v| v["name"] = json!("Web-Prod")),
            "name",
        ),
        invalid(
            "underscore in name",
            b(&|v| v["name"] = json!("web_prod")),
            "name",
        ),
        invalid("empty name", b(&|v| v["name"] = json!("")), "name"),
        invalid(
            "name starting with '-'",
            b(&|v| v["name"] = json!("-web")),
            "name",
        ),
        invalid(
            "name ending with '-'",
            b(&|v| v["name"] = json!("web-")),
            "name",
        ),
        invalid(
            "name too long",
            b(&|v| v["name"] = json!("a".repeat(31))),
            "name",
        ),
        invalid("name not ASCII", b(&|v| v["name"] = json!("wéb")), "name"),
        invalid("name a number", b(&|v| v["name"] = json!(42)), "name"),
        invalid("name null", b(&|v| v["name"] = Value::Null), "name"),
        // version
        invalid(
            "unsupported version",
            b(&|v| v["kubernetes_version"] = json!("1.99.0")),
            "kubernetes_version",
        ),
        invalid(
            "empty version",
            b(&|v| v["kubernetes_version"] = json!("")),
            "kubernetes_version",
        ),
        invalid(
            "version a number",
            b(&|v| v["kubernetes_version"] = json!(1.2)),
            "kubernetes_version",
        ),
        // control plane
        invalid(
            "2 control plane replicas",
            b(&|v| v["control_plane"]["replicas"] = json!(2)),
            "control_plane.replicas",
        ),
        invalid(
            "0 control plane replicas",
            b(&|v| v["control_plane"]["replicas"] = json!(0)),
            "control_plane.replicas",
        ),
        invalid(
            "5 control plane replicas",
            b(&|v| v["control_plane"]["replicas"] = json!(5)),
            "control_plane.replicas",
        ),
        invalid(
            "replicas a string",
            b(&|v| v["control_plane"]["replicas"] = json!("three")),
            "control_plane.replicas",
        ),
        invalid(
            "control plane machine type",
            b(&|v| v["control_plane"]["machine_type"] = json!("huge")),
            "control_plane.machine_type",
        ),
        invalid(
            "control plane on an EC2 machine type on lab",
            b(&|v| v["control_plane"]["machine_type"] = json!("m5.large")),
            "control_plane.machine_type",
        ),
        // network
        invalid(
            "pod CIDR not a CIDR",
            b(&|v| v["network"]["pod_cidr"] = json!("nonsense")),
            "network.pod_cidr",
        ),
        invalid(
            "pod CIDR without prefix",
            b(&|v| v["network"]["pod_cidr"] = json!("10.244.0.0")),
            "network.pod_cidr",
        ),
        invalid(
            "pod CIDR bad octet",
            b(&|v| v["network"]["pod_cidr"] = json!("10.300.0.0/16")),
            "network.pod_cidr",
        ),
        invalid(
            "pod CIDR prefix 33",
            b(&|v| v["network"]["pod_cidr"] = json!("10.0.0.0/33")),
            "network.pod_cidr",
        ),
        invalid(
            "pod CIDR IPv6",
            b(&|v| v["network"]["pod_cidr"] = json!("fd00::/48")),
            "network.pod_cidr",
        ),
        invalid(
            "pod CIDR host bits set",
            b(&|v| v["network"]["pod_cidr"] = json!("10.244.1.0/16")),
            "network.pod_cidr",
        ),
        invalid(
            "pod CIDR too small",
            b(&|v| v["network"]["pod_cidr"] = json!("10.244.0.0/24")),
            "network.pod_cidr",
        ),
        invalid(
            "pod CIDR /21",
            b(&|v| v["network"]["pod_cidr"] = json!("10.244.0.0/21")),
            "network.pod_cidr",
        ),
        invalid(
            "pod CIDR loopback",
            b(&|v| v["network"]["pod_cidr"] = json!("127.0.0.0/16")),
            "network.pod_cidr",
        ),
        invalid(
            "pod CIDR multicast",
            b(&|v| v["network"]["pod_cidr"] = json!("224.0.0.0/16")),
            "network.pod_cidr",
        ),
        invalid(
            "pod CIDR whose first address is fine, holding loopback",
            b(&|v| v["network"]["pod_cidr"] = json!("64.0.0.0/2")),
            "network.pod_cidr",
        ),
        invalid(
            "pod CIDR half the address space, holding link-local",
            b(&|v| v["network"]["pod_cidr"] = json!("128.0.0.0/1")),
            "network.pod_cidr",
        ),
        invalid(
            "service CIDR holding 169.254.169.254",
            b(&|v| v["network"]["service_cidr"] = json!("169.248.0.0/13")),
            "network.service_cidr",
        ),
        invalid(
            "pod CIDR over the lab subnet",
            b(&|v| v["network"]["pod_cidr"] = json!("10.64.0.0/12")),
            "network.pod_cidr",
        ),
        invalid(
            "service CIDR over the lab subnet",
            b(&|v| v["network"]["service_cidr"] = json!("10.77.0.0/24")),
            "network.service_cidr",
        ),
        invalid(
            "pod CIDR a number",
            b(&|v| v["network"]["pod_cidr"] = json!(10)),
            "network.pod_cidr",
        ),
        invalid(
            "service CIDR not a CIDR",
            b(&|v| v["network"]["service_cidr"] = json!("10.96.0.0/x")),
            "network.service_cidr",
        ),
        invalid(
            "service CIDR host bits set",
            b(&|v| v["network"]["service_cidr"] = json!("10.96.0.1/12")),
            "network.service_cidr",
        ),
        invalid(
            "service CIDR too small",
            b(&|v| v["network"]["service_cidr"] = json!("10.96.0.0/28")),
            "network.service_cidr",
        ),
        invalid(
            "service CIDR too large",
            b(&|v| v["network"]["service_cidr"] = json!("10.0.0.0/8")),
            "network.service_cidr",
        ),
        invalid(
            "service CIDR inside the pod CIDR",
            b(&|v| {
                v["network"]["pod_cidr"] = json!("10.0.0.0/8");
                v["network"]["service_cidr"] = json!("10.96.0.0/12");
            }),
            "network.service_cidr",
        ),
        invalid(
            "pod CIDR inside the service CIDR",
            b(&|v| {
                v["network"]["pod_cidr"] = json!("10.100.0.0/16");
                v["network"]["service_cidr"] = json!("10.96.0.0/12");
            }),
            "network.service_cidr",
        ),
        invalid(
            "identical CIDRs",
            b(&|v| {
                v["network"]["pod_cidr"] = json!("10.96.0.0/16");
                v["network"]["service_cidr"] = json!("10.96.0.0/16");
            }),
            "network.service_cidr",
        ),
        // node pools as a list
        invalid(
            "duplicate pool names",
            b(&|v| v["node_pools"] = json!([{"name": "a", "size": 1}, {"name": "a", "size": 1}])),
            "node_pools[1].name",
        ),
        invalid(
            "too many pools",
            b(&|v| {
                v["node_pools"] = (0..17)
                    .map(|i| json!({"name": format!("p{i}"), "size": 1}))
                    .collect()
            }),
            "node_pools",
        ),
        invalid(
            "pools an object",
            b(&|v| v["node_pools"] = json!({"name": "a"})),
            "node_pools",
        ),
        invalid(
            "second pool invalid",
            b(&|v| v["node_pools"] = json!([{"name": "a", "size": 1}, {"name": "b", "size": -1}])),
            "node_pools[1].size",
        ),
        // cluster labels
        invalid(
            "label key with space",
            b(&|v| v["labels"] = json!({"my team": "web"})),
            "labels.my team",
        ),
        invalid(
            "label key too long",
            b(&|v| v["labels"] = json!({"k".repeat(64): "v"})),
            &format!("labels.{}", "k".repeat(64)),
        ),
        invalid(
            "label key bad prefix",
            b(&|v| v["labels"] = json!({"Example.com/team": "web"})),
            "labels.Example.com/team",
        ),
        invalid(
            "label value with space",
            b(&|v| v["labels"] = json!({"team": "web team"})),
            "labels.team",
        ),
        invalid(
            "label value too long",
            b(&|v| v["labels"] = json!({"team": "w".repeat(64)})),
            "labels.team",
        ),
        invalid(
            "reserved label",
            b(&|v| v["labels"] = json!({"kubeforge.io/x": "y"})),
            "labels.kubeforge.io/x",
        ),
        invalid(
            "too many labels",
            b(&|v| v["labels"] = (0..65).map(|i| (format!("k{i}"), json!("v"))).collect()),
            "labels",
        ),
        invalid(
            "labels a string",
            b(&|v| v["labels"] = json!("team=web")),
            "labels",
        ),
        invalid(
            "deletion_protection a string",
            b(&|v| v["deletion_protection"] = json!("yes")),
            "deletion_protection",
        ),
        // quota: the default quota is 50 nodes
        refused(
            "pools above the node quota",
            b(
                &|v| {
                    v["node_pools"] = json!([{"name": "a", "size": 30}, {"name": "b", "size": 30}])
                },
            ),
            422,
            "quota_exceeded",
            "node_pools",
        ),
    ]);
    cases.extend(pool_cases("node_pools[0]", &base, |v| {
        &mut v["node_pools"][0]
    }));
    cases.extend(autoscaler_cases(|a| {
        with(&base, |v| v["autoscaler"] = a.clone())
    }));
    // The test double answers the lab's network, as the lab provider does.
    app.provider.set_networks(vec![lab_network()]);
    run_cases(&app, Method::POST, "/v1/clusters", &token, cases).await;
    assert_eq!(app.count("clusters").await, 0);
}

#[tokio::test]
async fn node_pool_create_refuses_bad_requests_and_writes_nothing() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Editor);
    make_cluster(&app, &token, "web").await;
    let base =
        json!({"name": "extra", "machine_type": "small", "size": 2, "labels": {}, "taints": []});
    let mut cases = envelope_cases(&base);
    cases.extend(pool_cases("", &base, |v| v));
    cases.extend([
        invalid("missing name", json!({"size": 1}), "name"),
        refused(
            "duplicate pool name",
            json!({"name": "default", "size": 1}),
            409,
            "conflict",
            "",
        ),
        refused(
            "above the node quota",
            json!({"name": "big", "size": 49}),
            422,
            "quota_exceeded",
            "size",
        ),
        refused(
            "autoscaling max above the node quota",
            json!({"name": "big", "autoscaling": {"min": 1, "max": 60}}),
            422,
            "quota_exceeded",
            "size",
        ),
    ]);
    // A conflict names no field.
    for c in &mut cases {
        if c.code == "conflict" {
            c.field = None;
        }
    }
    run_cases(
        &app,
        Method::POST,
        "/v1/clusters/web/node-pools",
        &token,
        cases,
    )
    .await;

    let missing = app
        .call(
            Method::POST,
            "/v1/clusters/nope/node-pools",
            Some(&token),
            Some(base.clone()),
            &[],
        )
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["code"], "not_found");
}

#[tokio::test]
async fn cluster_update_refuses_bad_requests_and_writes_nothing() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Editor);
    make_cluster(&app, &token, "web").await;
    let base = json!({"labels": {"team": "api"}, "deletion_protection": true});
    let mut cases = envelope_cases(&base);
    cases.extend([
        invalid("name cannot change", json!({"name": "other"}), "name"),
        invalid(
            "network cannot change",
            json!({"network": {"pod_cidr": "10.0.0.0/16"}}),
            "network",
        ),
        invalid(
            "kubernetes_version cannot change",
            json!({"kubernetes_version": "1.20.2"}),
            "kubernetes_version",
        ),
        invalid(
            "label key with space",
            json!({"labels": {"my team": "web"}}),
            "labels.my team",
        ),
        invalid(
            "label value invalid",
            json!({"labels": {"team": "web!"}}),
            "labels.team",
        ),
        invalid(
            "reserved label",
            json!({"labels": {"kubeforge.io/x": "y"}}),
            "labels.kubeforge.io/x",
        ),
        invalid("labels an array", json!({"labels": ["team"]}), "labels"),
        invalid(
            "label value a number",
            json!({"labels": {"team": 1}}),
            "labels.team",
        ),
        invalid(
            "deletion_protection a string",
            json!({"deletion_protection": "yes"}),
            "deletion_protection",
        ),
        invalid(
            "deletion_protection a number",
            json!({"deletion_protection": 1}),
            "deletion_protection",
        ),
    ]);
    // The labels are valid: a bad setting refuses the whole PATCH.
    cases.extend(autoscaler_cases(
        |a| json!({"labels": {"team": "api"}, "autoscaler": a}),
    ));
    run_cases(&app, Method::PATCH, "/v1/clusters/web", &token, cases).await;
    let c = app
        .call(Method::GET, "/v1/clusters/web", Some(&token), None, &[])
        .await;
    assert_eq!(c.body["generation"], 1);
    assert_eq!(c.body["labels"], json!({"team": "web"}));
    assert_eq!(c.body["deletion_protection"], false);
    assert_eq!(c.body["autoscaler"]["mode"], "builtin");
    assert_eq!(c.body["autoscaler"]["batch_idle_seconds"], 1);
}

#[tokio::test]
async fn node_pool_update_refuses_bad_requests_and_writes_nothing() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Editor);
    make_cluster(&app, &token, "web").await;
    let base = json!({"size": 3});
    let mut cases = envelope_cases(&base);
    cases.extend([
        invalid("empty patch", json!({}), "size"),
        invalid("name cannot change", json!({"name": "other"}), "name"),
        invalid("labels cannot change", json!({"labels": {}}), "labels"),
        invalid("size above max", json!({"size": 101}), "size"),
        invalid("size a string", json!({"size": "three"}), "size"),
        invalid("size negative", json!({"size": -1}), "size"),
        invalid(
            "null size, bad autoscaling",
            json!({"size": null, "autoscaling": {"min": 1, "max": 3, "x": 1}}),
            "autoscaling.x",
        ),
        invalid(
            "autoscaling min > max",
            json!({"autoscaling": {"min": 6, "max": 5}}),
            "autoscaling.min",
        ),
        invalid(
            "autoscaling max 0",
            json!({"autoscaling": {"min": 0, "max": 0}}),
            "autoscaling.max",
        ),
        invalid(
            "autoscaling missing max",
            json!({"autoscaling": {"min": 1}}),
            "autoscaling.max",
        ),
        invalid(
            "autoscaling a number",
            json!({"autoscaling": 3}),
            "autoscaling",
        ),
        invalid(
            "unknown autoscaling field",
            json!({"autoscaling": {"min": 1, "max": 3, "colour": 1}}),
            "autoscaling.colour",
        ),
        invalid(
            "size outside the new autoscaling bounds",
            json!({"size": 9, "autoscaling": {"min": 1, "max": 5}}),
            "size",
        ),
        invalid(
            "size below the new autoscaling bounds",
            json!({"size": 1, "autoscaling": {"min": 2, "max": 5}}),
            "size",
        ),
        refused(
            "size above the node quota",
            json!({"size": 100}),
            422,
            "quota_exceeded",
            "size",
        ),
        invalid(
            "drain timeout above an hour",
            json!({"drain_timeout_seconds": 3601}),
            "drain_timeout_seconds",
        ),
        invalid(
            "drain timeout negative, with a valid size",
            json!({"size": 3, "drain_timeout_seconds": -5}),
            "drain_timeout_seconds",
        ),
        invalid(
            "drain timeout a string",
            json!({"drain_timeout_seconds": "300"}),
            "drain_timeout_seconds",
        ),
        invalid(
            "repair threshold too short",
            json!({"auto_repair": {"after_seconds": 5}}),
            "auto_repair.after_seconds",
        ),
        invalid(
            "repair threshold above a day, with a valid size",
            json!({"size": 3, "auto_repair": {"enabled": true, "after_seconds": 86_401}}),
            "auto_repair.after_seconds",
        ),
        invalid(
            "unknown auto_repair field",
            json!({"auto_repair": {"enabled": false, "colour": 1}}),
            "auto_repair.colour",
        ),
        invalid(
            "alternatives on lab",
            json!({"alternative_machine_types": ["medium"]}),
            "alternative_machine_types",
        ),
        invalid(
            "an alternative smaller than the pool's type, with a valid size",
            json!({"size": 3, "alternative_machine_types": ["medium", "small"]}),
            "alternative_machine_types[1]",
        ),
    ]);
    run_cases(
        &app,
        Method::PATCH,
        "/v1/clusters/web/node-pools/default",
        &token,
        cases,
    )
    .await;
    let p = app
        .call(
            Method::GET,
            "/v1/clusters/web/node-pools/default",
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert_eq!(p.body["size"], 2);
    assert_eq!(p.body["autoscaling"], Value::Null);
    assert_eq!(p.body["drain_timeout_seconds"], 300);
    assert_eq!(
        p.body["auto_repair"],
        json!({"enabled": true, "after_seconds": 300})
    );
    assert_eq!(p.body["generation"], 1);
}

#[tokio::test]
async fn kubeconfig_refuses_bad_requests_and_writes_nothing() {
    let app = TestApp::new().await;
    // An admin: requests without a role ask for an admin kubeconfig.
    let token = app.token("acme", Role::Admin);
    make_cluster(&app, &token, "web").await;
    let base = json!({"role": "viewer", "ttl_seconds": 3600});
    let mut cases = envelope_cases(&base);
    cases.extend([
        invalid("role root", json!({"role": "root"}), "role"),
        invalid("role empty", json!({"role": ""}), "role"),
        invalid("role a number", json!({"role": 1}), "role"),
        invalid("ttl 10 seconds", json!({"ttl_seconds": 10}), "ttl_seconds"),
        invalid("ttl zero", json!({"ttl_seconds": 0}), "ttl_seconds"),
        invalid(
            "ttl above a day",
            json!({"ttl_seconds": 86_401}),
            "ttl_seconds",
        ),
        invalid("ttl negative", json!({"ttl_seconds": -1}), "ttl_seconds"),
        invalid("ttl a string", json!({"ttl_seconds": "1h"}), "ttl_seconds"),
    ]);
    run_cases(
        &app,
        Method::POST,
        "/v1/clusters/web/kubeconfig",
        &token,
        cases,
    )
    .await;
}

#[tokio::test]
async fn quota_put_refuses_bad_requests_and_writes_nothing() {
    let app = TestApp::new().await;
    let admin = app.token("platform", Role::PlatformAdmin);
    let base = json!({"max_clusters": 3, "max_nodes": 20, "max_cpus": 400});
    let mut cases = envelope_cases(&base);
    cases.extend([
        invalid("missing max_nodes", json!({"max_clusters": 3}), "max_nodes"),
        invalid(
            "negative max_clusters",
            json!({"max_clusters": -1, "max_nodes": 20, "max_cpus": 400}),
            "max_clusters",
        ),
        invalid(
            "huge max_clusters",
            json!({"max_clusters": 10_001, "max_nodes": 20, "max_cpus": 400}),
            "max_clusters",
        ),
        invalid(
            "negative max_nodes",
            json!({"max_clusters": 3, "max_nodes": -5, "max_cpus": 400}),
            "max_nodes",
        ),
        invalid(
            "huge max_nodes",
            json!({"max_clusters": 3, "max_nodes": 100_001, "max_cpus": 400}),
            "max_nodes",
        ),
        invalid(
            "max_nodes overflows i32",
            json!({"max_clusters": 3, "max_nodes": 3_000_000_000u64, "max_cpus": 400}),
            "max_nodes",
        ),
        invalid(
            "max_clusters a string",
            json!({"max_clusters": "ten", "max_nodes": 20, "max_cpus": 400}),
            "max_clusters",
        ),
        invalid(
            "missing max_cpus",
            json!({"max_clusters": 3, "max_nodes": 20}),
            "max_cpus",
        ),
        invalid(
            "negative max_cpus",
            json!({"max_clusters": 3, "max_nodes": 20, "max_cpus": -1}),
            "max_cpus",
        ),
        invalid(
            "huge max_cpus",
            json!({"max_clusters": 3, "max_nodes": 20, "max_cpus": 1_000_001}),
            "max_cpus",
        ),
    ]);
    run_cases(&app, Method::PUT, "/v1/tenants/acme/quota", &admin, cases).await;

    // A bad tenant id in the path.
    run_cases(
        &app,
        Method::PUT,
        "/v1/tenants/Not_A_Tenant/quota",
        &admin,
        vec![invalid("invalid tenant", base.clone(), "tenant")],
    )
    .await;

    // Only a platform admin may set quotas.
    let editor = app.token("acme", Role::Admin);
    let r = app
        .call(
            Method::PUT,
            "/v1/tenants/acme/quota",
            Some(&editor),
            Some(base),
            &[],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.body["code"], "forbidden");
    assert_eq!(app.count("tenants").await, 0);
}

/// The lab's network as the lab provider answers it (default subnet).
fn lab_network() -> kubeforge::providers::ProviderNetwork {
    kubeforge::providers::ProviderNetwork {
        provider: "lab".into(),
        range: "10.77.0.0/24".parse().unwrap(),
        gateway: Some(std::net::Ipv4Addr::new(10, 77, 0, 1)),
    }
}

fn host_body() -> Value {
    json!({
        "address": "192.0.2.10",
        "port": 22,
        "user": "root",
        "credentials": {"password": "hunter2-secret"},
        "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIECs8RC9oOFHzT7eV0hhVjweTNpUKq72quyZrEZ+4sYV",
        "labels": {"rack": "r1"}
    })
}

#[tokio::test]
async fn host_create_refuses_bad_requests_and_writes_nothing() {
    let app = TestApp::new().await;
    let admin = app.token("platform", Role::PlatformAdmin);
    let base = host_body();
    let b = |f: &dyn Fn(&mut Value)| with(&base, f);
    let mut cases = envelope_cases(&base);
    cases.extend([
        invalid(
            "address not an IP",
            b(&|v| v["address"] = json!("host.example")),
            "address",
        ),
        invalid(
            "address with port",
            b(&|v| v["address"] = json!("192.0.2.10:22")),
            "address",
        ),
        invalid("missing address", without(&base, "address"), "address"),
        invalid(
            "host key truncated (type only)",
            b(&|v| v["host_key"] = json!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5")),
            "host_key",
        ),
        invalid(
            "host key blob of another type",
            b(&|v| v["host_key"] = json!("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIECs8RC9oOFHzT7eV0hhVjweTNpUKq72quyZrEZ+4sYV")),
            "host_key",
        ),
        invalid(
            "host key comment with a NUL",
            b(&|v| v["host_key"] = json!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIECs8RC9oOFHzT7eV0hhVjweTNpUKq72quyZrEZ+4sYV a\u{0}b")),
            "host_key",
        ),
        invalid(
            "password with a NUL",
            b(&|v| v["credentials"] = json!({"password": "hunter2\u{0}"})),
            "credentials.password",
        ),
        invalid(
            "private key with a NUL",
            b(&|v| v["credentials"] = json!({"private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\u{0}"})),
            "credentials.private_key",
        ),
        invalid("port 0", b(&|v| v["port"] = json!(0)), "port"),
        invalid(
            "port above 65535",
            b(&|v| v["port"] = json!(70_000)),
            "port",
        ),
        invalid("port a string", b(&|v| v["port"] = json!("22")), "port"),
        invalid(
            "user with shell characters",
            b(&|v| v["user"] = json!("root; rm -rf /")),
            "user",
        ),
        invalid("empty user", b(&|v| v["user"] = json!("")), "user"),
        invalid(
            "host key garbage",
            b(&|v| v["host_key"] = json!("garbage")),
            "host_key",
        ),
        invalid(
            "host key unknown type",
            b(&|v| v["host_key"] = json!("ssh-foo AAAA")),
            "host_key",
        ),
        invalid(
            "host key not base64",
            b(&|v| v["host_key"] = json!("ssh-ed25519 !!!")),
            "host_key",
        ),
        invalid(
            "private key not a key",
            b(&|v| v["credentials"] = json!({"private_key": "nope"})),
            "credentials.private_key",
        ),
        invalid(
            "empty password",
            b(&|v| v["credentials"] = json!({"password": ""})),
            "credentials.password",
        ),
        invalid(
            "unknown credential kind",
            b(&|v| v["credentials"] = json!({"token": "x"})),
            "credentials",
        ),
        invalid(
            "credentials a string",
            b(&|v| v["credentials"] = json!("hunter2")),
            "credentials",
        ),
        invalid(
            "label key with space",
            b(&|v| v["labels"] = json!({"my rack": "r1"})),
            "labels.my rack",
        ),
        invalid(
            "label value invalid",
            b(&|v| v["labels"] = json!({"rack": "r 1"})),
            "labels.rack",
        ),
    ]);
    // Addresses that are no other machine's: the service's own host, the
    // cloud metadata service, everyone.
    for address in [
        "127.0.0.1",
        "127.0.1.1",
        "0.0.0.0",
        "169.254.169.254",
        "169.254.0.7",
        "224.0.0.251",
        "255.255.255.255",
        "240.0.0.9",
        "::1",
        "::",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        // The lab gateway (the test double answers the lab's network).
        "10.77.0.1",
    ] {
        cases.push(invalid(
            &format!("address {address}"),
            b(&|v| v["address"] = json!(address)),
            "address",
        ));
    }
    app.provider.set_networks(vec![lab_network()]);
    run_cases(&app, Method::POST, "/v1/hosts", &admin, cases).await;
    // A lab machine's address on the same network is a host like any other.
    let r = app
        .call(
            Method::POST,
            "/v1/hosts",
            Some(&admin),
            Some(b(&|v| v["address"] = json!("10.77.0.20"))),
            &[],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // Only a platform admin may register hosts.
    let tenant_admin = app.token("acme", Role::Admin);
    let r = app
        .call(
            Method::POST,
            "/v1/hosts",
            Some(&tenant_admin),
            Some(host_body()),
            &[],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    // Only the lab machine's registration above wrote a row.
    assert_eq!(app.count("hosts").await, 1);
}

#[tokio::test]
async fn cluster_quota_is_enforced_and_refusal_writes_nothing() {
    let app = TestApp::new().await;
    let admin = app.token("platform", Role::PlatformAdmin);
    let token = app.token("small-co", Role::Editor);
    let q = app
        .call(
            Method::PUT,
            "/v1/tenants/small-co/quota",
            Some(&admin),
            Some(json!({"max_clusters": 1, "max_nodes": 50, "max_cpus": 400})),
            &[],
        )
        .await;
    assert_eq!(q.status, 200, "{}", q.text);
    assert_eq!(q.body["max_clusters"], 1);
    assert_eq!(q.body["clusters"], 0);

    make_cluster(&app, &token, "first").await;
    let before = app.counts().await;
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&token),
            Some(cluster_body("second")),
            &[("idempotency-key", "second-try")],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.headers["content-type"], PROBLEM);
    assert_eq!(r.body["code"], "quota_exceeded");
    assert_eq!(r.body["field"], "name");
    assert_eq!(r.body["retryable"], false);
    assert_eq!(app.counts().await, before);

    let q = app
        .call(
            Method::GET,
            "/v1/tenants/small-co/quota",
            Some(&admin),
            None,
            &[],
        )
        .await;
    assert_eq!(q.body["clusters"], 1);
    assert_eq!(q.body["nodes"], 2);

    // Other tenants keep the default quota.
    let other = app.token("big-co", Role::Editor);
    make_cluster(&app, &other, "first").await;
    make_cluster(&app, &other, "second").await;

    // Raising the quota lets the same request (and key) through.
    let q = app
        .call(
            Method::PUT,
            "/v1/tenants/small-co/quota",
            Some(&admin),
            Some(json!({"max_clusters": 2, "max_nodes": 50, "max_cpus": 400})),
            &[],
        )
        .await;
    assert_eq!(q.status, 200, "{}", q.text);
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&token),
            Some(cluster_body("second")),
            &[("idempotency-key", "second-try")],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
}

#[tokio::test]
async fn cpu_quota_weighs_nodes_and_control_planes_by_machine_type() {
    let app = TestApp::new().await;
    let admin = app.token("platform", Role::PlatformAdmin);
    let token = app.token("small-co", Role::Editor);
    let q = app
        .call(
            Method::PUT,
            "/v1/tenants/small-co/quota",
            Some(&admin),
            Some(json!({"max_clusters": 5, "max_nodes": 50, "max_cpus": 6})),
            &[],
        )
        .await;
    assert_eq!(q.status, 200, "{}", q.text);
    assert_eq!(
        (&q.body["max_cpus"], &q.body["cpus"]),
        (&json!(6), &json!(0))
    );

    // A small control plane and two small workers: 3 vCPUs.
    make_cluster(&app, &token, "web").await;
    let before = app.counts().await;
    // One large node (4 vCPUs) would make 7.
    let r = app
        .call(
            Method::POST,
            "/v1/clusters/web/node-pools",
            Some(&token),
            Some(json!({"name": "big", "machine_type": "large", "size": 1})),
            &[],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["code"], "quota_exceeded");
    assert_eq!(r.body["field"], "size");
    assert!(r.text.contains("vCPU"), "{}", r.text);
    // Growing a small pool by 4 nodes is as many vCPUs too many.
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/web/node-pools/default",
            Some(&token),
            Some(json!({"size": 6})),
            &[],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(
        (&r.body["code"], &r.body["field"]),
        (&json!("quota_exceeded"), &json!("size"))
    );
    // A control plane of three large members alone is 12.
    let mut body = cluster_body("ha");
    body["control_plane"] = json!({"replicas": 3, "machine_type": "large"});
    body["node_pools"] = json!([]);
    let r = app
        .call(Method::POST, "/v1/clusters", Some(&token), Some(body), &[])
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(
        (&r.body["code"], &r.body["field"]),
        (&json!("quota_exceeded"), &json!("control_plane"))
    );
    // A medium pool with a small control plane: 3 + 1 + 2 * 2 = 8.
    let mut body = cluster_body("two");
    body["node_pools"] = json!([{"name": "m", "machine_type": "medium", "size": 2}]);
    let r = app
        .call(Method::POST, "/v1/clusters", Some(&token), Some(body), &[])
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(
        (&r.body["code"], &r.body["field"]),
        (&json!("quota_exceeded"), &json!("node_pools"))
    );
    assert_eq!(app.counts().await, before);

    // What fits still goes: one more small node makes 4.
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/web/node-pools/default",
            Some(&token),
            Some(json!({"size": 3})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let q = app
        .call(
            Method::GET,
            "/v1/tenants/small-co/quota",
            Some(&admin),
            None,
            &[],
        )
        .await;
    assert_eq!((&q.body["nodes"], &q.body["cpus"]), (&json!(3), &json!(4)));
}

/// A refusal as the references test wants it: a 4xx problem naming
/// `field`, never a 500, and nothing written.
async fn assert_refused_naming(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
    status: u16,
    field: &str,
) {
    let before = app.counts().await;
    let r = app.call(method.clone(), path, Some(token), body, &[]).await;
    assert_eq!(r.status.as_u16(), status, "{method} {path}: {}", r.text);
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some(PROBLEM),
        "{method} {path}"
    );
    assert_eq!(r.body["field"], field, "{method} {path}: {}", r.text);
    assert_eq!(app.counts().await, before, "{method} {path} wrote rows");
}

/// NUL bytes (and other bytes no name holds) in a path segment, a query
/// value or a token's claims are refused before any query, naming the
/// field: Postgres refuses a NUL in text, which was a 500.
#[tokio::test]
async fn nul_bytes_in_paths_queries_and_tokens_are_refused_naming_the_field() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Admin);
    let platform = app.token("platform", Role::PlatformAdmin);
    make_cluster(&app, &token, "web").await;
    let pool_body = json!({"size": 2});
    let cases: Vec<(Method, String, Option<Value>, &str)> = vec![
        (Method::GET, "/v1/clusters/%00".into(), None, "cluster"),
        (Method::GET, "/v1/clusters/web%00".into(), None, "cluster"),
        (Method::GET, "/v1/clusters/%FF".into(), None, "cluster"),
        (Method::GET, "/v1/clusters/Web".into(), None, "cluster"),
        (
            Method::DELETE,
            "/v1/clusters/web%00".into(),
            None,
            "cluster",
        ),
        (
            Method::PATCH,
            "/v1/clusters/%00".into(),
            Some(json!({"deletion_protection": true})),
            "cluster",
        ),
        (
            Method::GET,
            "/v1/clusters/%00/node-pools".into(),
            None,
            "cluster",
        ),
        (
            Method::GET,
            "/v1/clusters/web/node-pools/%00".into(),
            None,
            "pool",
        ),
        (
            Method::GET,
            "/v1/clusters/web/node-pools/default%00x".into(),
            None,
            "pool",
        ),
        (
            Method::PATCH,
            "/v1/clusters/web/node-pools/%00".into(),
            Some(pool_body),
            "pool",
        ),
        (
            Method::DELETE,
            "/v1/clusters/web/node-pools/%00".into(),
            None,
            "pool",
        ),
        (
            Method::GET,
            "/v1/clusters/%00/machines".into(),
            None,
            "cluster",
        ),
        (
            Method::GET,
            "/v1/clusters/%00/operations".into(),
            None,
            "cluster",
        ),
        (
            Method::GET,
            "/v1/clusters/%00/events".into(),
            None,
            "cluster",
        ),
        (
            Method::POST,
            "/v1/clusters/%00/kubeconfig".into(),
            Some(json!({})),
            "cluster",
        ),
        (
            Method::GET,
            "/v1/clusters/%00/autoscaler".into(),
            None,
            "cluster",
        ),
        (Method::GET, "/v1/operations/%00".into(), None, "operation"),
        (Method::GET, "/v1/clusters?label=%00".into(), None, "label"),
        (
            Method::GET,
            "/v1/clusters?label=team%3D%00".into(),
            None,
            "label",
        ),
        (
            Method::GET,
            "/v1/clusters?label=te%00am%3Dweb".into(),
            None,
            "label",
        ),
        (Method::GET, "/v1/clusters?phase=%00".into(), None, "phase"),
        (
            Method::GET,
            "/v1/clusters?page_token=%00".into(),
            None,
            "page_token",
        ),
        (
            Method::GET,
            "/v1/clusters/web/events?page_token=%00".into(),
            None,
            "page_token",
        ),
    ];
    for (method, path, body, field) in cases {
        assert_refused_naming(&app, method, &path, &token, body, 422, field).await;
    }
    for (method, path, field) in [
        (Method::DELETE, "/v1/hosts/%00", "host"),
        (Method::GET, "/v1/tenants/ac%00me/quota", "tenant"),
    ] {
        assert_refused_naming(&app, method, path, &platform, None, 422, field).await;
    }

    // A token signed with the service's key whose subject holds a NUL: 401
    // naming the claim, on a read and on a write.
    let now = chrono::Utc::now().timestamp();
    let claims = |sub: &str, tenant: &str| {
        json!({"sub": sub, "tenant": tenant, "role": "admin", "iss": "kubeforge",
               "aud": "kubeforge-api", "iat": now, "nbf": now, "exp": now + 600,
               "jti": "validation-test"})
    };
    let sign = |c: Value| {
        jsonwebtoken::encode(
            &app.app.auth.header(),
            &c,
            &jsonwebtoken::EncodingKey::from_secret(&[7u8; 32]),
        )
        .unwrap()
    };
    let nul_sub = sign(claims("ali\u{0}ce", "acme"));
    let nul_tenant = sign(claims("alice", "ac\u{0}me"));
    for (tok, field) in [(&nul_sub, "token.sub"), (&nul_tenant, "token.tenant")] {
        assert_refused_naming(&app, Method::GET, "/v1/clusters", tok, None, 401, field).await;
        assert_refused_naming(
            &app,
            Method::POST,
            "/v1/clusters",
            tok,
            Some(cluster_body("other")),
            401,
            field,
        )
        .await;
        assert_refused_naming(&app, Method::GET, "/v1/clusters/web", tok, None, 401, field).await;
    }
    // The same token with a plain subject works: the key was right.
    let ok = sign(claims("alice", "acme"));
    let r = app
        .call(Method::GET, "/v1/clusters/web", Some(&ok), None, &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}
