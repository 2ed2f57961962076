//! The OpenAPI document as a contract clients can generate from.
//!
//! - The served document passes a maintained validator,
//!   openapi-spec-validator (PyPI, installed by `scripts/python-tools`),
//!   run as a separate process on the document fetched from the app.
//! - Every operation has a tag, an SDK-friendly snake_case operation id,
//!   its 2xx schema and problem+json errors; query parameters are in the
//!   query; lists declare their envelope.
//! - Live responses (create cluster, get operation, list clusters, list
//!   node pools, errors) validate against the schema the document
//!   declares for their status and content type, checked by the Python
//!   `jsonschema` package (JSON Schema 2020-12, the dialect of OpenAPI
//!   3.1) from the same virtualenv.

use axum::http::Method;
use kubeforge::context::Role;
use kubeforge_tests::{cluster_body, Resp, TestApp};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::Stdio;

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

async fn document(app: &TestApp) -> Value {
    let r = app
        .call(Method::GET, "/v1/openapi.json", None, None, &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

fn temp_json(prefix: &str, v: &Value) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{prefix}-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn document_passes_openapi_spec_validator() {
    let validator = kubeforge_tests::python::tool("openapi-spec-validator");
    let app = TestApp::new().await;
    let doc = document(&app).await;
    let path = temp_json("kubeforge-openapi", &doc);
    let out = tokio::process::Command::new(&validator)
        .args(["--schema", "3.1", "--validation-errors", "all"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("openapi-spec-validator ran");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "the OpenAPI document is invalid:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `(path, method, operation)` for every operation of the document.
fn operations(doc: &Value) -> Vec<(&str, &str, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                out.push((path.as_str(), m, op));
            }
        }
    }
    out
}

/// Follows a `#/components/...` reference, or returns `v` itself.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("unresolved {r}")),
        None => v,
    }
}

#[tokio::test]
async fn operations_are_tagged_named_and_typed() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    let tags: BTreeSet<&str> = [
        "clusters",
        "node-pools",
        "operations",
        "events",
        "machines",
        "hosts",
        "quotas",
        "credentials",
        "tokens",
        "autoscaler",
        "machine-types",
        "service",
    ]
    .into();
    let declared: BTreeSet<&str> = doc["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(declared, tags);

    let mut ids = BTreeSet::new();
    for (path, method, op) in operations(&doc) {
        let what = format!("{method} {path}");
        let op_tags: Vec<&str> = op["tags"]
            .as_array()
            .unwrap_or_else(|| panic!("{what} has no tags"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(op_tags.len(), 1, "{what}: {op_tags:?}");
        assert!(tags.contains(op_tags[0]), "{what}: {op_tags:?}");

        let id = op["operationId"].as_str().unwrap_or_default();
        let verb = id.split('_').next().unwrap_or_default();
        assert!(
            ["list", "get", "create", "update", "delete", "put", "revoke"].contains(&verb)
                && id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && id.contains('_'),
            "{what}: operationId {id:?} is not a snake_case verb_noun"
        );
        assert!(ids.insert(id), "{what}: operationId {id} is not unique");
        // A one-line summary: the docstring of a generated client's
        // function and the heading of the operation on `/docs`.
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{what} has no summary"
        );

        // Parameters: path ones are in the template and required; the
        // rest are optional.
        for p in op["parameters"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap();
            match p["in"].as_str().unwrap() {
                "path" => {
                    assert!(path.contains(&format!("{{{name}}}")), "{what}: {p}");
                    assert_eq!(p["required"], true, "{what}: {p}");
                }
                "query" | "header" => {
                    assert_ne!(p["required"], true, "{what}: {p} should be optional")
                }
                other => panic!("{what}: parameter in {other}"),
            }
        }

        // Exactly one success, with a schema unless it is a 204.
        let responses = op["responses"].as_object().expect("responses");
        let ok: Vec<_> = responses
            .iter()
            .filter(|(s, _)| s.starts_with('2'))
            .collect();
        assert_eq!(ok.len(), 1, "{what}: {:?}", responses.keys());
        let (status, resp) = ok[0];
        let resp = resolve(&doc, resp);
        if status != "204" {
            let content = resp["content"].as_object().expect("2xx content");
            assert!(
                content.values().all(|c| c.get("schema").is_some()),
                "{what}: {status} without a schema"
            );
        }
        if ["post", "put", "patch"].contains(&method)
            && !path.ends_with("/revoke")
            && path != "/v1/tokens/revoke"
        {
            assert!(
                op["requestBody"]["content"]["application/json"]["schema"].is_object(),
                "{what} declares no request body"
            );
        }

        // Errors are problem documents.
        if path.starts_with("/v1/") && path != "/v1/openapi.json" {
            for class in ["4XX", "5XX"] {
                assert!(responses.contains_key(class), "{what} lacks {class}");
            }
            for (s, r) in responses.iter().filter(|(s, _)| !s.starts_with('2')) {
                let r = resolve(&doc, r);
                let content = r["content"].as_object().unwrap();
                assert_eq!(
                    content.keys().collect::<Vec<_>>(),
                    ["application/problem+json"],
                    "{what} {s}"
                );
                assert_eq!(
                    content["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{what} {s}"
                );
            }
        }

        // Lists declare their envelope: a page, or the whole list.
        if id.starts_with("list_") {
            let schema = &resp["content"]["application/json"]["schema"];
            let schema = resolve(&doc, schema);
            let items = &schema["properties"]["items"];
            assert_eq!(items["type"], "array", "{what}: {schema}");
            // The item type by reference: one type per resource in a
            // generated client, not a copy per envelope.
            assert!(items["items"]["$ref"].is_string(), "{what}: {schema}");
        }
    }
}

/// The JSON pointer (`#/...`) of the schema `doc` declares for `r` as the
/// answer of `method path`, checking the content type on the way.
fn declared_schema(doc: &Value, path: &str, method: &str, r: &Resp) -> String {
    let esc = |s: &str| s.replace('~', "~0").replace('/', "~1");
    let responses = &doc["paths"][path][method]["responses"];
    let status = r.status.as_u16().to_string();
    let class = format!("{}XX", &status[..1]);
    let (key, resp) = [status.as_str(), class.as_str()]
        .into_iter()
        .find_map(|k| responses.get(k).map(|v| (k, v)))
        .unwrap_or_else(|| panic!("{method} {path} declares no {status}"));
    let base = match resp.get("$ref").and_then(Value::as_str) {
        Some(r) => r.to_string(),
        None => format!("#/paths/{}/{method}/responses/{}", esc(path), esc(key)),
    };
    let ctype = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let resp = doc.pointer(base.trim_start_matches('#')).unwrap();
    assert!(
        resp["content"].get(&ctype).is_some(),
        "{method} {path} {status}: {ctype} is not declared in {resp}"
    );
    format!("{base}/content/{}/schema", esc(&ctype))
}

const CHECK: &str = r#"
import json, sys
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
data = json.load(open(sys.argv[1]))
doc = Resource.from_contents(data["doc"], default_specification=DRAFT202012)
registry = Registry().with_resource("urn:kubeforge:openapi", doc)
failed = 0
for case in data["cases"]:
    schema = {"$ref": "urn:kubeforge:openapi" + case["schema"]}
    v = Draft202012Validator(schema, registry=registry)
    for e in v.iter_errors(case["body"]):
        failed += 1
        print(f"{case['what']}: {e.json_path}: {e.message}")
    print(f"checked {case['what']} against {case['schema']}")
sys.exit(1 if failed else 0)
"#;

#[tokio::test]
async fn live_responses_match_their_declared_schemas() {
    let python = kubeforge_tests::python::tool("python");
    let app = TestApp::new().await;
    let doc = document(&app).await;
    let token = app.token("contract", Role::Admin);
    let t = Some(token.as_str());
    let mut cases = Vec::new();
    let mut case = |what: &str, path: &str, method: &str, r: &Resp| {
        let schema = declared_schema(&doc, path, method, r);
        cases.push(json!({"what": what, "schema": schema, "body": r.body}));
    };

    let created = app
        .call(
            Method::POST,
            "/v1/clusters",
            t,
            Some(cluster_body("web")),
            &[],
        )
        .await;
    assert_eq!(created.status, 202, "{}", created.text);
    case("create cluster", "/v1/clusters", "post", &created);
    let op = created.body["operation"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let r = app
        .call(Method::GET, &format!("/v1/operations/{op}"), t, None, &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    case("get operation", "/v1/operations/{operation}", "get", &r);

    let r = app
        .call(
            Method::GET,
            "/v1/clusters?label=team%3Dweb&limit=1",
            t,
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1, "{}", r.text);
    case("list clusters", "/v1/clusters", "get", &r);

    let r = app
        .call(Method::GET, "/v1/clusters/web/node-pools", t, None, &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    case(
        "list node pools",
        "/v1/clusters/{cluster}/node-pools",
        "get",
        &r,
    );

    let r = app
        .call(Method::GET, "/v1/clusters/missing", t, None, &[])
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    case("get a missing cluster", "/v1/clusters/{cluster}", "get", &r);

    let mut bad = cluster_body("bad");
    bad["network"]["pod_cidr"] = json!("10.244.0.0/99");
    let r = app
        .call(Method::POST, "/v1/clusters", t, Some(bad), &[])
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    case("create an invalid cluster", "/v1/clusters", "post", &r);

    let r = app.call(Method::GET, "/v1/clusters", None, None, &[]).await;
    assert_eq!(r.status, 401, "{}", r.text);
    case("list clusters without a token", "/v1/clusters", "get", &r);

    let input = temp_json("kubeforge-contract", &json!({"doc": doc, "cases": cases}));
    let out = tokio::process::Command::new(&python)
        .args(["-c", CHECK])
        .arg(&input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("python ran");
    let _ = std::fs::remove_file(&input);
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        out.status.success(),
        "responses differ from the document:\n{report}"
    );
}

/// `GET /docs`: the reference page for people, from the served document,
/// without a token and without any asset from the network.
#[tokio::test]
async fn docs_page_shows_every_operation_with_no_external_asset() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    let r = app.call(Method::GET, "/docs", None, None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let header = |name: &str| {
        r.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        header("content-type").starts_with("text/html"),
        "{:?}",
        r.headers
    );
    // Nothing may be fetched: no script at all, styles only inline.
    let csp = header("content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let page = &r.text;
    assert!(page.starts_with("<!DOCTYPE html>"), "{page:.200}");
    assert!(!page.contains("<script"), "the page has a script");

    let ops = operations(&doc);
    assert!(ops.len() >= 25, "{}", ops.len());
    for (path, method, op) in &ops {
        let id = op["operationId"].as_str().unwrap();
        assert!(
            page.contains(&format!("id=\"op-{id}\"")),
            "{method} {path}: {id} has no section"
        );
        // Paths are shown escaped; this API's paths need no escaping.
        assert!(page.contains(path), "{path} is not on the page");
        let summary = kubeforge::api::docs::escape(op["summary"].as_str().unwrap());
        assert!(
            page.contains(&summary),
            "{id}: {summary} is not on the page"
        );
    }
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        assert!(
            page.contains(&format!("id=\"schema-{name}\"")),
            "schema {name} is not on the page"
        );
    }
    for tag in doc["tags"].as_array().unwrap() {
        let name = tag["name"].as_str().unwrap();
        assert!(page.contains(&format!("id=\"tag-{name}\"")), "tag {name}");
    }
    // Parameters, request bodies and responses are shown.
    assert!(page.contains("<code>page_token</code>"));
    assert!(page.contains("href=\"#schema-CreateClusterRequest\""));
    assert!(page.contains("application/problem+json"));

    // No attribute points off the host: every src= and href= is a
    // fragment or a path on this server.
    let lower = page.to_lowercase();
    for attr in ["src=", "href="] {
        for (i, _) in lower.match_indices(attr) {
            let value = lower[i + attr.len()..].trim_start_matches(['"', '\'']);
            assert!(
                value.starts_with('#') || value.starts_with("/v1/"),
                "{attr} points to {:.80}",
                value
            );
            assert!(
                !value.starts_with("http:")
                    && !value.starts_with("https:")
                    && !value.starts_with("//")
            );
        }
    }
    assert!(lower.contains("href=\"/v1/openapi.json\""));
}
