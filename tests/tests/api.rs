//! API behaviours: entity tags and If-Match, deletion protection,
//! lookups, list pagination and filters, events, operations, kubeconfig,
//! service endpoints, request ids, hosts, autoscaler settings and status,
//! autoscaler credentials (the externalgrpc endpoint's PKI, the route and
//! the CLI), machine types and the OpenAPI document.

use axum::http::Method;
use kubeforge::context::Role;
use kubeforge_tests::{cluster_body, Resp, TestApp};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

const PROBLEM: &str = "application/problem+json";

fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Asserts `r` is a problem document with `status` and `code`.
#[track_caller]
fn assert_problem(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text);
    assert_eq!(header(r, "content-type"), PROBLEM, "{}", r.text);
    assert_eq!(r.body["code"], code, "{}", r.text);
    assert_eq!(r.body["status"], status, "{}", r.text);
}

async fn create(app: &TestApp, token: &str, body: Value) -> Value {
    let r = app
        .call(Method::POST, "/v1/clusters", Some(token), Some(body), &[])
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    r.body
}

async fn get(app: &TestApp, token: &str, path: &str) -> Resp {
    app.call(Method::GET, path, Some(token), None, &[]).await
}

#[tokio::test]
async fn get_returns_etag_and_if_match_guards_patch_and_delete() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Editor);
    create(&app, &token, cluster_body("web")).await;

    let c = get(&app, &token, "/v1/clusters/web").await;
    assert_eq!(c.status, 200, "{}", c.text);
    let etag = c.body["etag"].as_str().expect("etag in body").to_string();
    assert!(!etag.is_empty());
    assert_eq!(header(&c, "etag"), etag);
    assert_eq!(c.body["generation"], 1);

    // The current etag: accepted, generation bumped, a new etag.
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/web",
            Some(&token),
            Some(json!({"labels": {"team": "api"}})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["cluster"]["generation"], 2);
    assert_eq!(r.body["cluster"]["labels"], json!({"team": "api"}));
    assert_eq!(r.body["operation"]["type"], "cluster_update");
    let new_etag = r.body["cluster"]["etag"].as_str().unwrap().to_string();
    assert_ne!(new_etag, etag);
    let c = get(&app, &token, "/v1/clusters/web").await;
    assert_eq!(header(&c, "etag"), new_etag);
    assert_eq!(c.body["generation"], 2);

    // The old etag is stale now: 412, nothing changes.
    let before = app.counts().await;
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/web",
            Some(&token),
            Some(json!({"labels": {"team": "db"}})),
            &[("if-match", &etag)],
        )
        .await;
    assert_problem(&r, 412, "precondition_failed");
    let r = app
        .call(
            Method::DELETE,
            "/v1/clusters/web",
            Some(&token),
            None,
            &[("if-match", &etag)],
        )
        .await;
    assert_problem(&r, 412, "precondition_failed");
    assert_eq!(app.counts().await, before);
    let c = get(&app, &token, "/v1/clusters/web").await;
    assert_eq!(c.body["generation"], 2);
    assert_eq!(c.body["labels"], json!({"team": "api"}));
    assert_eq!(header(&c, "etag"), new_etag);

    // Node pools carry etags too.
    let p = get(&app, &token, "/v1/clusters/web/node-pools/default").await;
    assert_eq!(p.status, 200, "{}", p.text);
    let pool_etag = p.body["etag"].as_str().unwrap().to_string();
    assert_eq!(header(&p, "etag"), pool_etag);
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/web/node-pools/default",
            Some(&token),
            Some(json!({"size": 3})),
            &[("if-match", "\"stale\"")],
        )
        .await;
    assert_problem(&r, 412, "precondition_failed");
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/web/node-pools/default",
            Some(&token),
            Some(json!({"size": 3})),
            &[("if-match", &pool_etag)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["node_pool"]["size"], 3);
    assert_eq!(r.body["node_pool"]["generation"], 2);

    // The current etag deletes.
    let r = app
        .call(
            Method::DELETE,
            "/v1/clusters/web",
            Some(&token),
            None,
            &[("if-match", &new_etag)],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["operation"]["type"], "cluster_delete");
}

#[tokio::test]
async fn node_pool_drain_and_repair_settings_are_created_and_patched() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Editor);
    let mut body = cluster_body("web");
    body["node_pools"][0]["drain_timeout_seconds"] = json!(60);
    body["node_pools"][0]["auto_repair"] = json!({"after_seconds": 120});
    create(&app, &token, body).await;
    let p = get(&app, &token, "/v1/clusters/web/node-pools/default").await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert_eq!(p.body["drain_timeout_seconds"], 60);
    assert_eq!(
        p.body["auto_repair"],
        json!({"enabled": true, "after_seconds": 120})
    );

    // A pool created on its own gets the defaults.
    let r = app
        .call(
            Method::POST,
            "/v1/clusters/web/node-pools",
            Some(&token),
            Some(json!({"name": "batch", "size": 1})),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["node_pool"]["drain_timeout_seconds"], 300);
    assert_eq!(
        r.body["node_pool"]["auto_repair"],
        json!({"enabled": true, "after_seconds": 300})
    );

    // Changing only the drain timeout is an update like a resize: a new
    // generation, an operation, the reconcile queued; If-Match holds.
    let etag = p.body["etag"].as_str().unwrap().to_string();
    let jobs = app.count("jobs").await;
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/web/node-pools/default",
            Some(&token),
            Some(json!({"drain_timeout_seconds": 0})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let pool = &r.body["node_pool"];
    assert_eq!(pool["drain_timeout_seconds"], 0);
    assert_eq!(pool["size"], 2);
    assert_eq!(pool["auto_repair"]["after_seconds"], 120);
    assert_eq!(pool["generation"], 2);
    assert_ne!(pool["etag"], etag.as_str());
    assert_eq!(r.body["operation"]["type"], "node_pool_update");
    assert!(app.count("jobs").await >= jobs.max(1));
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/web/node-pools/default",
            Some(&token),
            Some(json!({"auto_repair": {"enabled": false}})),
            &[("if-match", &etag)],
        )
        .await;
    assert_problem(&r, 412, "precondition_failed");

    // auto_repair is replaced as a whole: left-out fields take defaults.
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/web/node-pools/default",
            Some(&token),
            Some(json!({"auto_repair": {"enabled": false}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let pool = &r.body["node_pool"];
    assert_eq!(
        pool["auto_repair"],
        json!({"enabled": false, "after_seconds": 300})
    );
    assert_eq!(pool["drain_timeout_seconds"], 0);
    assert_eq!(pool["generation"], 3);
    let events = get(&app, &token, "/v1/clusters/web/events").await;
    let messages: Vec<&str> = events.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "NodePoolUpdateRequested")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].contains("auto-repair after 120s -> off"),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("drain timeout 60s -> 0s"),
        "{messages:?}"
    );
}

#[tokio::test]
async fn node_pool_reports_node_states_from_observations() {
    use kubeforge::store::{event, machine};
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Editor);
    let created = create(&app, &token, cluster_body("web")).await;
    let cluster_id: uuid::Uuid = created["cluster"]["id"].as_str().unwrap().parse().unwrap();
    let p = get(&app, &token, "/v1/clusters/web/node-pools/default").await;
    let pool_id: uuid::Uuid = p.body["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(p.body["ready_nodes"], 0);

    // Four worker machines, as the engine would record and observe them.
    let mut ids = Vec::new();
    for i in 0..4 {
        let id = uuid::Uuid::now_v7();
        let name = format!("web-default-{i}");
        machine::insert_pending(
            &app.pool,
            machine::NewMachine {
                id,
                tenant: "acme",
                cluster_id,
                node_pool_id: Some(pool_id),
                role: kubeforge_cluster::pools::MachineRole::Worker,
                name: &name,
                provider: "lab",
                machine_type: kubeforge_cluster::MachineType::SMALL,
            },
        )
        .await
        .unwrap();
        ids.push(id);
    }
    for id in &ids[1..] {
        machine::set_running(&app.pool, *id, "p", Some("10.0.0.9"), None)
            .await
            .unwrap();
    }
    // [0] pending; [1] running, not yet seen; [2] Ready; [3] NotReady, then drained.
    machine::observe_node(&app.pool, ids[2], Some("ready"), None)
        .await
        .unwrap();
    machine::mark_joined(&app.pool, ids[2], None).await.unwrap();
    machine::observe_node(
        &app.pool,
        ids[3],
        Some("not_ready"),
        Some("KubeletNotReady"),
    )
    .await
    .unwrap();
    let since = |id: uuid::Uuid| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_as::<
                _,
                (
                    Option<chrono::DateTime<chrono::Utc>>,
                    Option<String>,
                    Option<chrono::DateTime<chrono::Utc>>,
                ),
            >(
                "SELECT unhealthy_since, unhealthy_reason, joined_at FROM machines WHERE id = $1"
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (first, reason, _) = since(ids[3]).await;
    assert_eq!(reason.as_deref(), Some("KubeletNotReady"));
    // Still unhealthy: the clock keeps running, the reason follows.
    machine::observe_node(&app.pool, ids[3], Some("missing"), Some("NodeGone"))
        .await
        .unwrap();
    let (again, reason, _) = since(ids[3]).await;
    assert_eq!((again, reason.as_deref()), (first, Some("NodeGone")));
    let joined = since(ids[2]).await.2;
    assert!(joined.is_some());
    machine::mark_joined(&app.pool, ids[2], None).await.unwrap();
    assert_eq!(since(ids[2]).await.2, joined, "the first join counts");

    let p = get(&app, &token, "/v1/clusters/web/node-pools/default").await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert_eq!(p.body["ready_nodes"], 1, "{}", p.text);
    let nodes = p.body["nodes"].as_array().unwrap();
    let states: Vec<(&str, &str)> = nodes
        .iter()
        .map(|n| {
            (
                n["state"].as_str().unwrap(),
                n["machine_state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("provisioning", "pending"),
            ("joining", "running"),
            ("ready", "running"),
            ("missing", "running"),
        ]
    );
    assert_eq!(nodes[3]["unhealthy_reason"], "NodeGone");
    assert!(nodes[3]["unhealthy_since"].is_string());
    assert!(nodes[2]["unhealthy_since"].is_null());

    // Removing [3]: draining, with the reason; a repeated call keeps the clock.
    machine::start_drain(&app.pool, ids[3], "unhealthy for 300s: NodeGone")
        .await
        .unwrap();
    let started: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT drain_started_at FROM machines WHERE id = $1")
            .bind(ids[3])
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(started.is_some());
    machine::start_drain(&app.pool, ids[3], "scale down")
        .await
        .unwrap();
    let again: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT drain_started_at FROM machines WHERE id = $1")
            .bind(ids[3])
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(again, started);
    // Healthy again (say, the Node came back while draining): the clock stops.
    machine::observe_node(&app.pool, ids[3], None, None)
        .await
        .unwrap();
    // And [2] stops being Ready.
    machine::observe_node(
        &app.pool,
        ids[2],
        Some("not_ready"),
        Some("KubeletNotReady"),
    )
    .await
    .unwrap();
    let p = get(&app, &token, "/v1/clusters/web/node-pools/default").await;
    assert_eq!(p.body["ready_nodes"], 0, "{}", p.text);
    let n = &p.body["nodes"][3];
    assert_eq!(
        (&n["state"], &n["machine_state"]),
        (&json!("draining"), &json!("draining"))
    );
    assert!(n["unhealthy_since"].is_null() && n["unhealthy_reason"].is_null());
    let m = get(&app, &token, "/v1/clusters/web/machines").await;
    let m3 = m.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == ids[3].to_string())
        .unwrap()
        .clone();
    assert_eq!(m3["state"], "draining");
    assert_eq!(m3["last_error"], "scale down");

    // What repair rate limits count: events by reason, per pool or cluster, since a time.
    let t0 = chrono::Utc::now() - chrono::Duration::seconds(1);
    for pool in [Some(pool_id), Some(pool_id), None] {
        event::record(
            &app.pool,
            event::NewEvent {
                tenant: "acme",
                cluster_id,
                node_pool_id: pool,
                operation_id: None,
                warning: true,
                reason: "NodeRepaired",
                message: "replaced",
            },
        )
        .await
        .unwrap();
    }
    let count = |pool: Option<uuid::Uuid>, reason: &'static str, since| {
        let db = app.pool.clone();
        async move {
            event::count_since(&db, cluster_id, pool, reason, since)
                .await
                .unwrap()
        }
    };
    assert_eq!(count(Some(pool_id), "NodeRepaired", t0).await, 2);
    assert_eq!(count(None, "NodeRepaired", t0).await, 3);
    assert_eq!(count(None, "NodeDrained", t0).await, 0);
    let later = chrono::Utc::now() + chrono::Duration::seconds(60);
    assert_eq!(count(None, "NodeRepaired", later).await, 0);
    assert_eq!(
        count(Some(uuid::Uuid::now_v7()), "NodeRepaired", t0).await,
        0
    );
}

#[tokio::test]
async fn deletion_protection_blocks_delete_until_lifted() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Editor);
    let mut body = cluster_body("guarded");
    body["deletion_protection"] = json!(true);
    let created = create(&app, &token, body).await;
    assert_eq!(created["cluster"]["deletion_protection"], true);

    let before = app.counts().await;
    let r = app
        .call(
            Method::DELETE,
            "/v1/clusters/guarded",
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_problem(&r, 409, "deletion_protected");
    assert_eq!(r.body["retryable"], false);
    assert_eq!(app.counts().await, before);

    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/guarded",
            Some(&token),
            Some(json!({"deletion_protection": false})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["cluster"]["deletion_protection"], false);

    let r = app
        .call(
            Method::DELETE,
            "/v1/clusters/guarded",
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let op = r.body["operation"].clone();
    assert_eq!(op["type"], "cluster_delete");
    assert!(op["id"].is_string());

    // Deleting again answers with the delete already in flight.
    let ops_before = app.count("operations").await;
    let r = app
        .call(
            Method::DELETE,
            "/v1/clusters/guarded",
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["operation"]["id"], op["id"]);
    assert_eq!(app.count("operations").await, ops_before);

    // A cluster being deleted takes no more changes.
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/guarded",
            Some(&token),
            Some(json!({"labels": {}})),
            &[],
        )
        .await;
    assert_problem(&r, 409, "conflict");
}

#[tokio::test]
async fn clusters_are_found_by_id_and_by_name_within_the_tenant() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Viewer);
    let editor = app.token("acme", Role::Editor);
    let created = create(&app, &editor, cluster_body("web")).await;
    let id = created["cluster"]["id"].as_str().unwrap();

    let by_id = get(&app, &token, &format!("/v1/clusters/{id}")).await;
    let by_name = get(&app, &token, "/v1/clusters/web").await;
    assert_eq!(by_id.status, 200, "{}", by_id.text);
    assert_eq!(by_name.status, 200, "{}", by_name.text);
    assert_eq!(by_id.body["id"], id);
    assert_eq!(by_name.body["id"], id);
    assert_eq!(by_id.body["name"], "web");
    assert_eq!(by_id.body["tenant"], "acme");
    assert_eq!(by_id.body["phase"], "provisioning");
    for key in [
        "kubernetes_version",
        "provider",
        "control_plane",
        "network",
        "labels",
        "deletion_protection",
        "conditions",
        "endpoint",
        "certificates",
        "generation",
        "observed_generation",
        "etag",
        "created_at",
        "updated_at",
    ] {
        assert!(by_id.body.get(key).is_some(), "cluster has no {key}");
    }

    for missing in [
        "/v1/clusters/nope".to_string(),
        format!("/v1/clusters/{}", uuid::Uuid::now_v7()),
    ] {
        let r = get(&app, &token, &missing).await;
        assert_problem(&r, 404, "not_found");
    }
    // Another tenant sees neither.
    let other = app.token("globex", Role::Admin);
    for path in [format!("/v1/clusters/{id}"), "/v1/clusters/web".into()] {
        let r = get(&app, &other, &path).await;
        assert_problem(&r, 404, "not_found");
    }
}

/// Follows `next_page_token` from `first`, returning each page's names.
async fn pages(app: &TestApp, token: &str, first: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut url = first.to_string();
    loop {
        let r = get(app, token, &url).await;
        assert_eq!(r.status, 200, "{url}: {}", r.text);
        out.push(
            r.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect(),
        );
        match r.body["next_page_token"].as_str() {
            Some(t) => {
                assert!(out.len() < 20, "pagination does not end");
                let sep = if first.contains('?') { '&' } else { '?' };
                url = format!("{first}{sep}page_token={t}");
            }
            None => {
                assert_eq!(r.body["next_page_token"], Value::Null);
                return out;
            }
        }
    }
}

#[tokio::test]
async fn cluster_list_paginates_in_creation_order() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Editor);
    let names = ["zeta", "alpha", "mid", "beta", "omega"];
    for n in names {
        create(&app, &token, cluster_body(n)).await;
    }
    // Another tenant's clusters never show up.
    create(
        &app,
        &app.token("globex", Role::Editor),
        cluster_body("alpha"),
    )
    .await;

    let got = pages(&app, &token, "/v1/clusters?limit=2").await;
    assert_eq!(
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![2, 2, 1],
        "{got:?}"
    );
    let flat: Vec<String> = got.into_iter().flatten().collect();
    assert_eq!(flat, names);
    let unique: BTreeSet<&String> = flat.iter().collect();
    assert_eq!(unique.len(), 5);

    // A page exactly as large as what is left has no next token.
    assert_eq!(pages(&app, &token, "/v1/clusters?limit=5").await.len(), 1);
    assert_eq!(
        pages(&app, &token, "/v1/clusters").await,
        vec![names.map(String::from).to_vec()]
    );

    // Bad paging input names its field.
    let bad_token = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("not-a-uuid")
    };
    for (query, field) in [
        ("page_token=%21%21%21", "page_token"),
        (&format!("page_token={bad_token}") as &str, "page_token"),
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("limit=201", "limit"),
        ("phase=running", "phase"),
        ("limit=ten", "limit"),
        ("colour=blue", "colour"),
    ] {
        let r = get(&app, &token, &format!("/v1/clusters?{query}")).await;
        assert_problem(&r, 422, "validation_failed");
        assert_eq!(r.body["field"], field, "{query}: {}", r.text);
    }
}

#[tokio::test]
async fn cluster_list_filters_by_phase_and_label() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Editor);
    for (name, labels) in [
        ("a", json!({"team": "web"})),
        ("b", json!({"team": "api"})),
        ("c", json!({"team": "web", "env": "prod"})),
        ("d", json!({})),
    ] {
        let mut body = cluster_body(name);
        body["labels"] = labels;
        create(&app, &token, body).await;
    }
    let names = |r: &Resp| -> Vec<String> {
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    for (query, want) in [
        ("label=team=web", vec!["a", "c"]),
        ("label=team%3Dweb", vec!["a", "c"]),
        ("label=team=api", vec!["b"]),
        ("label=team", vec!["a", "b", "c"]),
        ("label=env", vec!["c"]),
        ("label=env=dev", vec![]),
        ("label=nope", vec![]),
        ("phase=provisioning", vec!["a", "b", "c", "d"]),
        ("phase=ready", vec![]),
        ("phase=provisioning&label=team=web&limit=1", vec!["a"]),
    ] {
        let r = get(&app, &token, &format!("/v1/clusters?{query}")).await;
        assert_eq!(names(&r), want, "{query}");
    }
    // Paging keeps the filter.
    assert_eq!(
        pages(&app, &token, "/v1/clusters?label=team=web&limit=1").await,
        vec![vec!["a".to_string()], vec!["c".to_string()]]
    );

    // A delete request moves the cluster to `deleting`.
    let r = app
        .call(Method::DELETE, "/v1/clusters/d", Some(&token), None, &[])
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let r = get(&app, &token, "/v1/clusters?phase=deleting").await;
    assert_eq!(names(&r), ["d"]);
    let r = get(&app, &token, "/v1/clusters?phase=provisioning").await;
    assert_eq!(names(&r), ["a", "b", "c"]);
}

#[tokio::test]
async fn events_are_newest_first_and_paginate() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Editor);
    create(&app, &token, cluster_body("web")).await;
    for i in 0..4 {
        let r = app
            .call(
                Method::PATCH,
                "/v1/clusters/web",
                Some(&token),
                Some(json!({"labels": {"rev": format!("r{i}")}})),
                &[],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let all = get(&app, &token, "/v1/clusters/web/events").await;
    assert_eq!(all.status, 200, "{}", all.text);
    let all = all.body["items"].as_array().unwrap().clone();
    assert_eq!(all.len(), 5, "{all:?}");
    let ids: Vec<i64> = all.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {ids:?}"
    );
    assert_eq!(all[0]["reason"], "UpdateRequested");
    assert_eq!(all[4]["reason"], "CreateRequested");
    for e in &all {
        for key in ["id", "cluster", "type", "reason", "message", "created_at"] {
            assert!(e.get(key).is_some(), "event has no {key}: {e}");
        }
        assert_eq!(e["type"], "Normal");
    }

    let mut paged = Vec::new();
    let mut url = "/v1/clusters/web/events?limit=2".to_string();
    let mut sizes = Vec::new();
    loop {
        let r = get(&app, &token, &url).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let items = r.body["items"].as_array().unwrap();
        sizes.push(items.len());
        paged.extend(items.iter().map(|e| e["id"].as_i64().unwrap()));
        match r.body["next_page_token"].as_str() {
            Some(t) => url = format!("/v1/clusters/web/events?limit=2&page_token={t}"),
            None => break,
        }
    }
    assert_eq!(sizes, vec![2, 2, 1]);
    assert_eq!(paged, ids);

    for (query, field) in [("limit=0", "limit"), ("page_token=%21%21", "page_token")] {
        let r = get(&app, &token, &format!("/v1/clusters/web/events?{query}")).await;
        assert_problem(&r, 422, "validation_failed");
        assert_eq!(r.body["field"], field);
    }
    let r = get(&app, &token, "/v1/clusters/nope/events").await;
    assert_problem(&r, 404, "not_found");
}

const STEP_KEYS: [&str; 5] = ["name", "state", "started_at", "finished_at", "error"];

#[track_caller]
fn assert_operation_shape(op: &Value) {
    for key in [
        "id",
        "cluster",
        "type",
        "state",
        "steps",
        "error",
        "created_at",
        "finished_at",
    ] {
        assert!(op.get(key).is_some(), "operation has no {key}: {op}");
    }
    let state = op["state"].as_str().unwrap();
    assert!(
        ["pending", "running", "succeeded", "failed"].contains(&state),
        "{state}"
    );
    for step in op["steps"].as_array().expect("steps") {
        for key in STEP_KEYS {
            assert!(step.get(key).is_some(), "step has no {key}: {step}");
        }
        assert!(step["name"].is_string());
        let s = step["state"].as_str().unwrap();
        assert!(
            ["pending", "running", "succeeded", "failed"].contains(&s),
            "{s}"
        );
    }
}

#[tokio::test]
async fn operations_are_listed_per_cluster_with_steps() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Editor);
    let web = create(&app, &token, cluster_body("web")).await;
    create(&app, &token, cluster_body("other")).await;
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/web",
            Some(&token),
            Some(json!({"labels": {}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let r = get(&app, &token, "/v1/clusters/web/operations").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ops = r.body["items"].as_array().unwrap();
    let types: Vec<&str> = ops.iter().map(|o| o["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["cluster_update", "cluster_create"]);
    for o in ops {
        assert_eq!(o["cluster"], web["cluster"]["id"]);
        assert_operation_shape(o);
    }

    let create_op = &web["operation"];
    assert_operation_shape(create_op);
    let id = create_op["id"].as_str().unwrap();
    let r = get(&app, &token, &format!("/v1/operations/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_operation_shape(&r.body);
    assert_eq!(r.body["id"], id);
    assert_eq!(r.body["type"], "cluster_create");
    assert_eq!(r.body["error"], Value::Null);
    let steps: Vec<&str> = r.body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(!steps.is_empty());
    for s in r.body["steps"].as_array().unwrap() {
        assert_eq!(s["state"], "pending");
        assert_eq!(s["started_at"], Value::Null);
        assert_eq!(s["finished_at"], Value::Null);
        assert_eq!(s["error"], Value::Null);
    }

    // The engine moves the operation along; the shape holds.
    app.settle().await;
    let r = get(&app, &token, &format!("/v1/operations/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_operation_shape(&r.body);
    let first = &r.body["steps"][0];
    assert_ne!(first["state"], "pending", "{}", r.text);
    assert!(first["started_at"].is_string(), "{}", r.text);

    // Unknown or foreign operations are 404.
    for path in [
        "/v1/operations/not-a-uuid".to_string(),
        format!("/v1/operations/{}", uuid::Uuid::now_v7()),
    ] {
        let r = get(&app, &token, &path).await;
        assert_problem(&r, 404, "not_found");
    }
    let r = get(
        &app,
        &app.token("globex", Role::Admin),
        &format!("/v1/operations/{id}"),
    )
    .await;
    assert_problem(&r, 404, "not_found");
}

#[tokio::test]
async fn kubeconfig_before_ready_is_cluster_not_ready() {
    let app = TestApp::new().await;
    let editor = app.token("acme", Role::Editor);
    let admin = app.token("acme", Role::Admin);
    let viewer = app.token("acme", Role::Viewer);
    create(&app, &editor, cluster_body("web")).await;
    let path = "/v1/clusters/web/kubeconfig";

    for (token, body) in [
        (&admin, json!({"role": "admin", "ttl_seconds": 3600})),
        (&admin, json!({})),
        (&editor, json!({"role": "editor", "ttl_seconds": 3600})),
        (&viewer, json!({"role": "viewer", "ttl_seconds": 600})),
    ] {
        let r = app
            .call(Method::POST, path, Some(token), Some(body.clone()), &[])
            .await;
        assert_problem(&r, 409, "cluster_not_ready");
        assert_eq!(r.body["retryable"], true, "{body}");
    }

    let r = app
        .call(
            Method::POST,
            path,
            Some(&editor),
            Some(json!({"role": "root"})),
            &[],
        )
        .await;
    assert_problem(&r, 422, "validation_failed");
    assert_eq!(r.body["field"], "role");
    let r = app
        .call(
            Method::POST,
            path,
            Some(&admin),
            Some(json!({"role": "admin", "ttl_seconds": 10})),
            &[],
        )
        .await;
    assert_problem(&r, 422, "validation_failed");
    assert_eq!(r.body["field"], "ttl_seconds");

    // A viewer may not ask for an admin kubeconfig.
    let r = app
        .call(
            Method::POST,
            path,
            Some(&viewer),
            Some(json!({"role": "admin"})),
            &[],
        )
        .await;
    assert_problem(&r, 403, "forbidden");

    let r = app
        .call(
            Method::POST,
            "/v1/clusters/nope/kubeconfig",
            Some(&admin),
            Some(json!({})),
            &[],
        )
        .await;
    assert_problem(&r, 404, "not_found");
}

#[tokio::test]
async fn service_endpoints_answer() {
    let app = TestApp::new().await;
    let r = app.call(Method::GET, "/healthz", None, None, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text, "ok");
    let r = app.call(Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.text, "ok");

    let token = app.token("acme", Role::Viewer);
    let r = get(&app, &token, "/v1/clusters").await;
    assert_eq!(r.status, 200);
    let r = app.call(Method::GET, "/metrics", None, None, &[]).await;
    assert_eq!(r.status, 200);
    assert!(header(&r, "content-type").starts_with("text/plain"));
    let line = r
        .text
        .lines()
        .find(|l| {
            l.starts_with("kubeforge_http_requests_total{") && l.contains("route=\"/v1/clusters\"")
        })
        .unwrap_or_else(|| panic!("no request counter for /v1/clusters:\n{}", r.text));
    assert!(line.contains("method=\"GET\""), "{line}");
    assert!(line.contains("status=\"200\""), "{line}");
    assert!(
        r.text
            .lines()
            .any(|l| l.starts_with("kubeforge_job_queue_depth{") && l.contains("state=\"queued\"")),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Editor);
    let mut seen = BTreeSet::new();
    for (method, path, token, body) in [
        (Method::GET, "/healthz", None, None),
        (Method::GET, "/v1/clusters", Some(&token), None),
        (Method::GET, "/v1/clusters", None, None),
        (Method::GET, "/v1/clusters/nope", Some(&token), None),
        (Method::GET, "/no/such/route", None, None),
        (
            Method::POST,
            "/v1/clusters",
            Some(&token),
            Some(json!({"name": "Bad"})),
        ),
        (
            Method::POST,
            "/v1/clusters",
            Some(&token),
            Some(cluster_body("web")),
        ),
    ] {
        let r = app
            .call(method.clone(), path, token.map(String::as_str), body, &[])
            .await;
        let id = header(&r, "x-request-id");
        assert!(
            !id.is_empty(),
            "{method} {path} ({}) has no x-request-id",
            r.status
        );
        assert!(seen.insert(id.to_string()), "request id {id} reused");
    }
    for (path, token) in [
        ("/healthz", None),
        ("/v1/clusters", Some(token.as_str())),
        ("/nope", None),
    ] {
        let r = app
            .call(
                Method::GET,
                path,
                token,
                None,
                &[("x-request-id", "req-from-client-42")],
            )
            .await;
        assert_eq!(header(&r, "x-request-id"), "req-from-client-42", "{path}");
    }
}

#[tokio::test]
async fn unknown_routes_are_problem_404s() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Editor);
    for (path, token) in [
        ("/nope", None),
        ("/v1", Some(token.as_str())),
        ("/v2/clusters", Some(token.as_str())),
        ("/v1/clusters/web/unknown", Some(token.as_str())),
    ] {
        let r = app.call(Method::GET, path, token, None, &[]).await;
        assert_problem(&r, 404, "not_found");
        assert_eq!(r.body["retryable"], false);
    }
    // A real route with the wrong method is 405.
    let r = app
        .call(Method::PUT, "/v1/clusters", Some(&token), None, &[])
        .await;
    assert_problem(&r, 405, "method_not_allowed");
    // An array where an object belongs is refused, not read as defaults.
    let r = app
        .call_raw(
            Method::POST,
            "/v1/clusters",
            Some(&token),
            Some(b"[]".to_vec()),
            &[],
        )
        .await;
    assert_problem(&r, 422, "validation_failed");
    assert_eq!(app.count("clusters").await, 0);
    // No token on a real route is 401, not 404.
    let r = app.call(Method::GET, "/v1/clusters", None, None, &[]).await;
    assert_problem(&r, 401, "unauthenticated");
}

#[tokio::test]
async fn hosts_take_labels_and_capacity_and_refuse_bad_quantities() {
    let app = TestApp::new().await;
    let admin = app.token("platform", Role::PlatformAdmin);
    let mut body = host_body("192.0.2.20", 22, "pw");
    body["labels"] = json!({"gpu": "true", "zone": "a"});
    body["capacity"] = json!({"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"});
    let r = app
        .call(Method::POST, "/v1/hosts", Some(&admin), Some(body), &[])
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let host = &r.body["host"];
    assert_eq!(host["labels"], json!({"gpu": "true", "zone": "a"}));
    assert_eq!(
        host["capacity"],
        json!({"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"})
    );
    assert_eq!(host["capacity_source"], "declared");
    assert_eq!(host["problem"], Value::Null);

    // Without a capacity: unknown until the provider measures it.
    let r = app
        .call(
            Method::POST,
            "/v1/hosts",
            Some(&admin),
            Some(host_body("192.0.2.21", 22, "pw")),
            &[],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    let r = get(&app, &admin, "/v1/hosts").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let declared = items.iter().find(|h| h["address"] == "192.0.2.20").unwrap();
    assert_eq!(declared["capacity"]["memory"], "32Gi");
    assert_eq!(declared["capacity"]["cpu"], "8");
    let unknown = items.iter().find(|h| h["address"] == "192.0.2.21").unwrap();
    assert_eq!(unknown["capacity"], Value::Null);
    assert_eq!(unknown["capacity_source"], Value::Null);
    assert_eq!(unknown["problem"], Value::Null);

    // Bad capacities: 422 naming the resource, nothing stored.
    let before = app.count("hosts").await;
    for (capacity, field) in [
        (json!({"cpu": "8"}), "capacity.memory"),
        (json!({"memory": "1Gi"}), "capacity.cpu"),
        (json!({"cpu": "eight", "memory": "1Gi"}), "capacity.cpu"),
        (json!({"cpu": "2", "memory": "1.5"}), "capacity.memory"),
        (
            json!({"cpu": "2", "memory": "1Gi", "nvidia.com/gpu": "0.5"}),
            "capacity.nvidia.com/gpu",
        ),
        (
            json!({"cpu": "2", "memory": "1Gi", "gpu": "1"}),
            "capacity.gpu",
        ),
        (
            json!({"cpu": "2", "memory": "1Gi", "kubernetes.io/x": "1"}),
            "capacity.kubernetes.io/x",
        ),
    ] {
        let mut body = host_body("192.0.2.22", 22, "pw");
        body["capacity"] = capacity.clone();
        let r = app
            .call(Method::POST, "/v1/hosts", Some(&admin), Some(body), &[])
            .await;
        assert_problem(&r, 422, "validation_failed");
        assert_eq!(r.body["field"], field, "{capacity}: {}", r.text);
    }
    assert_eq!(app.count("hosts").await, before);
}

fn pool_body(name: &str, selector: Value) -> Value {
    json!({"name": name, "machine_type": "small", "size": 1, "host_selector": selector})
}

#[tokio::test]
async fn host_selector_is_for_ssh_clusters_only() {
    // A lab cluster: a selector could never match, so it is refused.
    let app = TestApp::new().await;
    let tok = app.token("acme", Role::Admin);
    create(&app, &tok, cluster_body("labby")).await;
    let r = app
        .call(
            Method::POST,
            "/v1/clusters/labby/node-pools",
            Some(&tok),
            Some(pool_body("gpu", json!({"gpu": "true"}))),
            &[],
        )
        .await;
    assert_problem(&r, 422, "validation_failed");
    assert_eq!(r.body["field"], "host_selector", "{}", r.text);
    let mut body = cluster_body("labby2");
    body["node_pools"][0]["host_selector"] = json!({"gpu": "true"});
    let r = app
        .call(Method::POST, "/v1/clusters", Some(&tok), Some(body), &[])
        .await;
    assert_problem(&r, 422, "validation_failed");
    assert_eq!(r.body["field"], "node_pools[0].host_selector", "{}", r.text);
    // An empty selector means any host: fine anywhere.
    let r = app
        .call(
            Method::POST,
            "/v1/clusters/labby/node-pools",
            Some(&tok),
            Some(pool_body("any", json!({}))),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/labby/node-pools/any",
            Some(&tok),
            Some(json!({"host_selector": {"gpu": "true"}})),
            &[],
        )
        .await;
    assert_problem(&r, 422, "validation_failed");
    assert_eq!(r.body["field"], "host_selector", "{}", r.text);

    // An ssh cluster (the double serves the kind): stored and shown.
    let app = TestApp::with_double_kind(
        "ssh",
        kubeforge::app::Config {
            rate_limits: kubeforge::ratelimit::RateLimits::UNLIMITED,
            ..Default::default()
        },
    )
    .await;
    let tok = app.token("acme", Role::Admin);
    let mut body = cluster_body("byo");
    body["provider"] = json!({"kind": "ssh"});
    body["node_pools"][0]["host_selector"] = json!({"gpu": "false"});
    create(&app, &tok, body).await;
    let r = get(&app, &tok, "/v1/clusters/byo/node-pools/default").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["host_selector"], json!({"gpu": "false"}));
    let r = app
        .call(
            Method::POST,
            "/v1/clusters/byo/node-pools",
            Some(&tok),
            Some(pool_body("gpu", json!({"gpu": "true", "zone": "a"}))),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(
        r.body["node_pool"]["host_selector"],
        json!({"gpu": "true", "zone": "a"})
    );
    // Validated like labels.
    let r = app
        .call(
            Method::POST,
            "/v1/clusters/byo/node-pools",
            Some(&tok),
            Some(pool_body("bad", json!({"-gpu": "true"}))),
            &[],
        )
        .await;
    assert_problem(&r, 422, "validation_failed");
    assert!(
        r.body["field"]
            .as_str()
            .unwrap()
            .starts_with("host_selector"),
        "{}",
        r.text
    );
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/byo/node-pools/gpu",
            Some(&tok),
            Some(json!({"host_selector": {"gpu": "true"}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["node_pool"]["host_selector"], json!({"gpu": "true"}));
    let r = get(&app, &tok, "/v1/clusters/byo/node-pools/gpu").await;
    assert_eq!(r.body["host_selector"], json!({"gpu": "true"}));
}

fn host_body(address: &str, port: u16, password: &str) -> Value {
    json!({
        "address": address,
        "port": port,
        "user": "root",
        "credentials": {"password": password},
        "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIECs8RC9oOFHzT7eV0hhVjweTNpUKq72quyZrEZ+4sYV",
        "labels": {"rack": "r1"}
    })
}

#[tokio::test]
async fn hosts_are_registered_listed_and_removed_without_leaking_credentials() {
    let app = TestApp::new().await;
    let admin = app.token("platform", Role::PlatformAdmin);
    let password = "Tr0ub4dor-and-3-horses";
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-very-secret\n-----END OPENSSH PRIVATE KEY-----\n";

    let r = app
        .call(
            Method::POST,
            "/v1/hosts",
            Some(&admin),
            Some(host_body("192.0.2.10", 22, password)),
            &[],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let host = &r.body["host"];
    assert!(host["id"].is_string());
    assert_eq!(host["address"], "192.0.2.10");
    assert_eq!(host["port"], 22);
    assert_eq!(host["credential_kind"], "password");
    assert!(host.get("credentials").is_none(), "{}", r.text);
    assert!(!r.text.contains(password), "password in the response");
    let first = host["id"].as_str().unwrap().to_string();

    let mut with_key = host_body("192.0.2.11", 2222, "unused");
    with_key["credentials"] = json!({"private_key": key});
    let r = app
        .call(Method::POST, "/v1/hosts", Some(&admin), Some(with_key), &[])
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["host"]["credential_kind"], "private_key");
    assert!(!r.text.contains("very-secret"));

    // The same address and port again: 409; another port is another host.
    let before = app.counts().await;
    let r = app
        .call(
            Method::POST,
            "/v1/hosts",
            Some(&admin),
            Some(host_body("192.0.2.10", 22, "other")),
            &[],
        )
        .await;
    assert_problem(&r, 409, "conflict");
    assert_eq!(app.counts().await, before);
    let r = app
        .call(
            Method::POST,
            "/v1/hosts",
            Some(&admin),
            Some(host_body("192.0.2.10", 2200, "other")),
            &[],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    let r = get(&app, &admin, "/v1/hosts").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(!r.text.contains(password) && !r.text.contains("very-secret"));
    assert!(items.iter().all(|h| h.get("credentials").is_none()));

    // At rest the credentials are sealed, not plain text.
    let rows: Vec<(String, Vec<u8>, String)> =
        sqlx::query_as("SELECT address, credential_sealed, hosts::text FROM hosts")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 3);
    for secret in [password.as_bytes(), b"very-secret".as_slice()] {
        let hex_secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        for (address, sealed, row) in &rows {
            assert!(!sealed.is_empty());
            assert!(
                !sealed.windows(secret.len()).any(|w| w == secret),
                "{address}: credential stored in plain text"
            );
            assert!(!row.contains(std::str::from_utf8(secret).unwrap()));
            assert!(
                !row.contains(&hex_secret),
                "{address}: credential in a column"
            );
        }
    }

    // Tenants may not see or change hosts.
    let tenant_admin = app.token("acme", Role::Admin);
    let r = get(&app, &tenant_admin, "/v1/hosts").await;
    assert_problem(&r, 403, "forbidden");
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/hosts/{first}"),
            Some(&tenant_admin),
            None,
            &[],
        )
        .await;
    assert_problem(&r, 403, "forbidden");

    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/hosts/{first}"),
            Some(&admin),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(r.text.is_empty());
    let r = get(&app, &admin, "/v1/hosts").await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2);
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/hosts/{first}"),
            Some(&admin),
            None,
            &[],
        )
        .await;
    assert_problem(&r, 404, "not_found");
}

/// The autoscaler settings of a cluster that never named any.
fn default_autoscaler() -> Value {
    json!({"mode": "builtin", "expander": "least-waste",
           "scale_down_utilization_threshold": 0.5, "scale_down_unneeded_seconds": 600,
           "batch_idle_seconds": 1, "batch_max_seconds": 10, "max_nodes_per_scale_up": 10})
}

#[tokio::test]
async fn autoscaler_settings_default_fill_in_and_merge_on_patch() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Editor);

    // None given: every default, in the answer and on GET.
    let created = create(&app, &token, cluster_body("web")).await;
    assert_eq!(created["cluster"]["autoscaler"], default_autoscaler());
    let c = get(&app, &token, "/v1/clusters/web").await;
    assert_eq!(c.body["autoscaler"], default_autoscaler());

    // A partial object: the rest are defaults.
    let mut body = cluster_body("db");
    body["autoscaler"] =
        json!({"mode": "off", "batch_max_seconds": 30, "scale_down_unneeded_seconds": 10});
    let created = create(&app, &token, body).await;
    let mut want = default_autoscaler();
    want["mode"] = json!("off");
    want["batch_max_seconds"] = json!(30);
    want["scale_down_unneeded_seconds"] = json!(10);
    assert_eq!(created["cluster"]["autoscaler"], want);

    // PATCH merges onto the current settings, as an update like any other.
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/db",
            Some(&token),
            Some(
                json!({"autoscaler": {"expander": "priority", "batch_idle_seconds": 20,
                                       "scale_down_utilization_threshold": 0.75}}),
            ),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    want["expander"] = json!("priority");
    want["batch_idle_seconds"] = json!(20);
    want["scale_down_utilization_threshold"] = json!(0.75);
    assert_eq!(r.body["cluster"]["autoscaler"], want);
    assert_eq!(r.body["cluster"]["generation"], 2);
    assert_eq!(r.body["operation"]["type"], "cluster_update");
    // Another PATCH without the settings keeps them.
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/db",
            Some(&token),
            Some(json!({"labels": {"team": "db"}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["cluster"]["autoscaler"], want);
    let c = get(&app, &token, "/v1/clusters/db").await;
    assert_eq!(c.body["autoscaler"], want);
    // `external` hands the pools to an upstream cluster-autoscaler (the
    // gRPC provider); `builtin` may come back.
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/db",
            Some(&token),
            Some(json!({"autoscaler": {"mode": "external"}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["cluster"]["autoscaler"]["mode"], "external");
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/db",
            Some(&token),
            Some(json!({"autoscaler": {"mode": "builtin"}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["cluster"]["autoscaler"]["mode"], "builtin");

    // A row from before the settings (`{}`) reads as the defaults; a stored
    // value out of bounds is an internal error, not a guess.
    sqlx::query("UPDATE clusters SET autoscaler = '{}' WHERE name = 'web'")
        .execute(&app.pool)
        .await
        .unwrap();
    let c = get(&app, &token, "/v1/clusters/web").await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.body["autoscaler"], default_autoscaler());
    for corrupt in [
        r#"{"mode": "banana"}"#,
        r#"{"batch_idle_seconds": 30, "batch_max_seconds": 5}"#,
        r#"{"scale_down_unneeded_seconds": "soon"}"#,
    ] {
        sqlx::query("UPDATE clusters SET autoscaler = $1::jsonb WHERE name = 'web'")
            .bind(corrupt)
            .execute(&app.pool)
            .await
            .unwrap();
        let c = get(&app, &token, "/v1/clusters/web").await;
        assert_problem(&c, 500, "internal");
        assert!(
            !c.text.contains("banana"),
            "internal detail leaked: {}",
            c.text
        );
    }
}

#[tokio::test]
async fn node_pool_priority_defaults_to_zero_and_is_patched() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Editor);
    let mut body = cluster_body("web");
    body["node_pools"] = json!([
        {"name": "default", "autoscaling": {"min": 1, "max": 3}},
        {"name": "gpu", "machine_type": "large", "autoscaling": {"min": 0, "max": 2, "priority": 10}}
    ]);
    create(&app, &token, body).await;
    let p = get(&app, &token, "/v1/clusters/web/node-pools/default").await;
    assert_eq!(
        p.body["autoscaling"],
        json!({"min": 1, "max": 3, "priority": 0})
    );
    let p = get(&app, &token, "/v1/clusters/web/node-pools/gpu").await;
    assert_eq!(
        p.body["autoscaling"],
        json!({"min": 0, "max": 2, "priority": 10})
    );
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/web/node-pools/default",
            Some(&token),
            Some(json!({"autoscaling": {"min": 1, "max": 4, "priority": -5}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body["node_pool"]["autoscaling"],
        json!({"min": 1, "max": 4, "priority": -5})
    );
    // Autoscaling off and on again: the priority is the one given, or 0.
    for (patch, want) in [
        (json!({"autoscaling": null}), Value::Null),
        (
            json!({"autoscaling": {"min": 1, "max": 2}}),
            json!({"min": 1, "max": 2, "priority": 0}),
        ),
    ] {
        let r = app
            .call(
                Method::PATCH,
                "/v1/clusters/web/node-pools/default",
                Some(&token),
                Some(patch),
                &[],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["node_pool"]["autoscaling"], want);
    }
}

#[tokio::test]
async fn machine_types_are_listed_for_any_caller() {
    let app = TestApp::new().await;
    let generic = json!([
        {"name": "small", "cpu": 1, "memory_mib": 2048, "gpus": 0, "gpu_model": null, "pods": 110,
         "allocatable": {"cpu_millis": 900, "memory_mib": 1692, "pods": 110},
         "providers": ["lab", "ssh", "aws"], "ec2_instance_type": "t3.small"},
        {"name": "medium", "cpu": 2, "memory_mib": 4096, "gpus": 0, "gpu_model": null, "pods": 110,
         "allocatable": {"cpu_millis": 1900, "memory_mib": 3740, "pods": 110},
         "providers": ["lab", "ssh", "aws"], "ec2_instance_type": "t3.medium"},
        {"name": "large", "cpu": 4, "memory_mib": 8192, "gpus": 0, "gpu_model": null, "pods": 110,
         "allocatable": {"cpu_millis": 3900, "memory_mib": 7836, "pods": 110},
         "providers": ["lab", "ssh", "aws"], "ec2_instance_type": "t3.xlarge"}
    ]);
    for (tenant, role) in [
        ("acme", Role::Viewer),
        ("acme", Role::Admin),
        ("ops", Role::PlatformAdmin),
    ] {
        let r = get(&app, &app.token(tenant, role), "/v1/machine-types").await;
        assert_eq!(r.status, 200, "{}", r.text);
        let items = r.body["items"].as_array().unwrap();
        assert_eq!(items.len(), 20, "{}", r.text);
        assert_eq!(json!(items[..3]), generic);
    }
    let viewer = app.token("acme", Role::Viewer);
    // The lab and ssh providers offer the generic sizes only.
    for kind in ["lab", "ssh"] {
        let r = get(&app, &viewer, &format!("/v1/machine-types?provider={kind}")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["items"], generic, "{kind}");
    }
    let r = get(&app, &viewer, "/v1/machine-types?provider=aws").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 20);
    let g4 = items.iter().find(|t| t["name"] == "g4dn.xlarge").unwrap();
    assert_eq!(
        g4,
        &json!({"name": "g4dn.xlarge", "cpu": 4, "memory_mib": 16384, "gpus": 1,
                "gpu_model": "NVIDIA T4", "pods": 110,
                "allocatable": {"cpu_millis": 3900, "memory_mib": 16028, "pods": 110},
                "providers": ["aws"], "ec2_instance_type": "g4dn.xlarge"})
    );
    for t in items {
        assert!(
            t["providers"].as_array().unwrap().contains(&json!("aws")),
            "{t}"
        );
        assert!(t["ec2_instance_type"].is_string(), "{t}");
    }
    for bad in [
        "/v1/machine-types?provider=gce",
        "/v1/machine-types?kind=aws",
    ] {
        let r = get(&app, &viewer, bad).await;
        assert_problem(&r, 422, "validation_failed");
        assert_eq!(
            r.body["field"],
            if bad.contains("kind") {
                "kind"
            } else {
                "provider"
            },
            "{}",
            r.text
        );
    }
    let r = app
        .call(Method::GET, "/v1/machine-types", None, None, &[])
        .await;
    assert_problem(&r, 401, "unauthenticated");
}

#[tokio::test]
async fn autoscaler_status_from_pools_and_snapshot() {
    use kubeforge::store::{autoscaler, machine};
    use kubeforge_cluster::api::{
        AutoscalerDecisionView, AutoscalerSnapshot, PendingPodView, PoolReasonView, DECISIONS_KEPT,
    };
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Viewer);
    let editor = app.token("acme", Role::Editor);
    let mut body = cluster_body("web");
    body["node_pools"] = json!([
        {"name": "default", "size": 2},
        {"name": "auto", "size": 2, "autoscaling": {"min": 1, "max": 5}},
        {"name": "gpu", "machine_type": "large", "autoscaling": {"min": 0, "max": 2, "priority": 3}}
    ]);
    let created = create(&app, &editor, body).await;
    let cluster_id: uuid::Uuid = created["cluster"]["id"].as_str().unwrap().parse().unwrap();

    // No snapshot yet: the pools from their rows, nothing observed.
    let r = get(&app, &token, "/v1/clusters/web/autoscaler").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body,
        json!({
            "cluster": cluster_id, "mode": "builtin", "observed_at": null, "pending_pods": 0,
            "pools": [
                {"name": "auto", "min": 1, "max": 5, "size": 2, "ready": 0, "hold": null,
                 "recent_decisions": []},
                {"name": "gpu", "min": 0, "max": 2, "size": 0, "ready": 0, "hold": null,
                 "recent_decisions": []}
            ],
            "pending": []
        })
    );

    // One node of `auto` Ready, one still joining: ready counts like the pool's.
    let p = get(&app, &token, "/v1/clusters/web/node-pools/auto").await;
    let pool_id: uuid::Uuid = p.body["id"].as_str().unwrap().parse().unwrap();
    for (i, state) in ["ready", "joining"].into_iter().enumerate() {
        let id = uuid::Uuid::now_v7();
        machine::insert_pending(
            &app.pool,
            machine::NewMachine {
                id,
                tenant: "acme",
                cluster_id,
                node_pool_id: Some(pool_id),
                role: kubeforge_cluster::pools::MachineRole::Worker,
                name: &format!("web-auto-{i}"),
                provider: "lab",
                machine_type: kubeforge_cluster::MachineType::SMALL,
            },
        )
        .await
        .unwrap();
        machine::set_running(&app.pool, id, "p", Some("10.0.0.9"), None)
            .await
            .unwrap();
        machine::observe_node(&app.pool, id, Some(state), None)
            .await
            .unwrap();
    }

    // What the autoscaler stored: holds and decisions by pool name.
    let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let decision = |n: u32| AutoscalerDecisionView {
        at: at("2026-12-02T10:00:00Z") - chrono::TimeDelta::seconds(i64::from(n)),
        kind: "scale_up".into(),
        from: 1,
        to: 2,
        node: None,
        pods: 3,
        reason: format!("decision {n}"),
        operation: None,
    };
    let web_7 = PendingPodView {
        namespace: "default".into(),
        name: "web-7".into(),
        outcome: "no_pool".into(),
        pool: None,
        node: None,
        reasons: vec![
            PoolReasonView {
                pool: "gpu".into(),
                reason: "insufficient nvidia.com/gpu".into(),
            },
            PoolReasonView {
                pool: "auto".into(),
                reason: "node selector mismatch".into(),
            },
        ],
    };
    let snapshot = AutoscalerSnapshot {
        observed_at: Some(at("2026-12-02T10:00:05Z")),
        pending_pods: 7,
        pending: vec![web_7.clone()],
        holds: [(
            "gpu".to_string(),
            "backed off after machines failed".to_string(),
        )]
        .into(),
        decisions: [
            ("auto".to_string(), (0..30).map(decision).collect()),
            // Not an autoscaling pool (any more): not shown.
            ("default".to_string(), vec![decision(0)]),
        ]
        .into(),
    };
    autoscaler::put_snapshot(&app.pool, cluster_id, &snapshot)
        .await
        .unwrap();
    let r = get(
        &app,
        &token,
        &format!("/v1/clusters/{cluster_id}/autoscaler"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["observed_at"], "2026-12-02T10:00:05Z");
    assert_eq!(r.body["pending_pods"], 7);
    assert_eq!(r.body["pending"], json!([web_7]));
    let pools = r.body["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 2, "{}", r.text);
    assert_eq!(
        (&pools[0]["name"], &pools[0]["ready"], &pools[0]["hold"]),
        (&json!("auto"), &json!(1), &Value::Null)
    );
    let decisions = pools[0]["recent_decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), DECISIONS_KEPT);
    assert_eq!(decisions[0]["reason"], "decision 0", "newest first");
    assert_eq!(pools[1]["hold"], "backed off after machines failed");
    assert_eq!(pools[1]["recent_decisions"], json!([]));

    // The next snapshot replaces it; the settings' mode shows.
    let next = AutoscalerSnapshot {
        observed_at: Some(at("2026-12-02T10:00:15Z")),
        ..AutoscalerSnapshot::default()
    };
    autoscaler::put_snapshot(&app.pool, cluster_id, &next)
        .await
        .unwrap();
    let got = autoscaler::get_snapshot(&app.pool, cluster_id)
        .await
        .unwrap();
    assert_eq!(got, Some(next));
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/web",
            Some(&editor),
            Some(json!({"autoscaler": {"mode": "off"}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = get(&app, &token, "/v1/clusters/web/autoscaler").await;
    assert_eq!(r.body["mode"], "off");
    assert_eq!(r.body["pending"], json!([]));
    assert_eq!(r.body["pools"][1]["hold"], Value::Null);

    // Another tenant's cluster is not found, like a missing one.
    let other = app.token("globex", Role::Admin);
    for path in [
        "/v1/clusters/web/autoscaler".to_string(),
        format!("/v1/clusters/{cluster_id}/autoscaler"),
        format!("/v1/clusters/{}/autoscaler", uuid::Uuid::now_v7()),
    ] {
        let r = get(&app, &other, &path).await;
        assert_problem(&r, 404, "not_found");
    }

    // A snapshot that does not parse is an internal error.
    sqlx::query("UPDATE autoscaler_status SET snapshot = '{\"pending_pods\": -1}'")
        .execute(&app.pool)
        .await
        .unwrap();
    let r = get(&app, &token, "/v1/clusters/web/autoscaler").await;
    assert_problem(&r, 500, "internal");
}

/// Every route of `kubeforge::api::router`, with its methods.
const ROUTES: &[(&str, &[&str])] = &[
    ("/v1/clusters", &["post", "get"]),
    ("/v1/clusters/{cluster}", &["get", "patch", "delete"]),
    ("/v1/clusters/{cluster}/node-pools", &["post", "get"]),
    (
        "/v1/clusters/{cluster}/node-pools/{pool}",
        &["get", "patch", "delete"],
    ),
    ("/v1/clusters/{cluster}/machines", &["get"]),
    ("/v1/clusters/{cluster}/operations", &["get"]),
    ("/v1/clusters/{cluster}/events", &["get"]),
    ("/v1/clusters/{cluster}/kubeconfig", &["post"]),
    ("/v1/clusters/{cluster}/credentials/revoke", &["post"]),
    ("/v1/tokens/revoke", &["post"]),
    ("/v1/clusters/{cluster}/autoscaler", &["get"]),
    ("/v1/clusters/{cluster}/autoscaler/credentials", &["post"]),
    ("/v1/machine-types", &["get"]),
    ("/v1/operations/{operation}", &["get"]),
    ("/v1/hosts", &["post", "get"]),
    ("/v1/hosts/{host}", &["delete"]),
    ("/v1/tenants/{tenant}/quota", &["get", "put"]),
    ("/v1/openapi.json", &["get"]),
    ("/docs", &["get"]),
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/metrics", &["get"]),
];

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let app = TestApp::new().await;
    let r = app
        .call(Method::GET, "/v1/openapi.json", None, None, &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(header(&r, "content-type").starts_with("application/json"));
    let doc = &r.body;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string());
    assert!(doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().expect("paths");

    let want: BTreeMap<&str, BTreeSet<&str>> = ROUTES
        .iter()
        .map(|(p, ms)| (*p, ms.iter().copied().collect()))
        .collect();
    let got: BTreeMap<&str, BTreeSet<&str>> = paths
        .iter()
        .map(|(p, item)| {
            let methods = item
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .filter(|m| {
                    ["get", "put", "post", "delete", "patch", "head", "options"].contains(m)
                })
                .collect();
            (p.as_str(), methods)
        })
        .collect();
    assert_eq!(got, want);

    // Every operation says what it answers; every $ref resolves.
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} has no responses"
            );
        }
    }
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let mut refs = Vec::new();
    collect_refs(doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let (kind, name) = r
            .strip_prefix("#/components/")
            .and_then(|r| r.split_once('/'))
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        let defined = match kind {
            "schemas" => schemas.contains_key(name),
            "responses" => doc["components"]["responses"].get(name).is_some(),
            _ => panic!("unexpected $ref {r}"),
        };
        assert!(defined, "dangling $ref {r}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    // Routes without a handler in the document would show here too.
    for (path, methods) in ROUTES {
        for m in *methods {
            let concrete = path
                .replace("{cluster}", "web")
                .replace("{pool}", "default")
                .replace("{operation}", "x")
                .replace("{host}", "x")
                .replace("{tenant}", "acme");
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            let r = app.call(method, &concrete, None, None, &[]).await;
            assert_ne!(r.status, 404, "{m} {concrete} is not routed: {}", r.text);
        }
    }

    insta::assert_json_snapshot!("openapi", doc);
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_string());
                    }
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Autoscaler credentials: the externalgrpc endpoint's PKI, the route, the CLI

mod credentials {
    use super::*;
    use kubeforge::grpc_pki::{identify, GrpcPki};
    use kubeforge_cluster::pki::x509_parser;
    use kubeforge_cluster::pki::CertKeyPair;
    use std::future::IntoFuture;
    use x509_parser::extensions::GeneralName;

    const GRPC: &str = "grpc.kubeforge.test:8443";
    const PATH: &str = "/v1/clusters/web/autoscaler/credentials";

    async fn app_with_grpc() -> TestApp {
        TestApp::with_config(kubeforge::app::Config {
            grpc_address: Some(GRPC.into()),
            ..Default::default()
        })
        .await
    }

    fn der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .expect("PEM")
            .1
            .contents
    }

    /// The base64 lines of a PEM block (what would show if it were stored).
    fn pem_body_lines(pem: &str) -> Vec<String> {
        pem.lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_string)
            .collect()
    }

    /// Every value of every column of every table, as text (bytea as hex).
    async fn whole_database(app: &TestApp) -> String {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert!(tables.iter().any(|t| t == "service_secrets"), "{tables:?}");
        let mut all = String::new();
        for t in tables {
            let text: Option<String> =
                sqlx::query_scalar(&format!("SELECT string_agg(t::text, E'\\n') FROM {t} t"))
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
            all.push_str(&text.unwrap_or_default());
            all.push('\n');
        }
        all
    }

    fn assert_not_stored(db: &str, key_pem: &str) {
        for line in pem_body_lines(key_pem) {
            assert!(!db.contains(&line), "a line of the key is in the database");
            let hex: String = line.bytes().map(|b| format!("{b:02x}")).collect();
            assert!(!db.contains(&hex), "a line of the key is in a bytea column");
        }
        assert!(!db.contains("PRIVATE KEY"));
    }

    /// Checks a bundle as an autoscaler and the TLS layer would see it.
    fn check_bundle(body: &Value, cluster_id: &str, tenant: &str, ttl_seconds: i64) {
        let ca_pem = body["ca_pem"].as_str().unwrap();
        let cert_pem = body["cert_pem"].as_str().unwrap();
        let key_pem = body["key_pem"].as_str().unwrap();
        assert_eq!(body["address"], GRPC);

        let ca_der = der(ca_pem);
        let cert_der = der(cert_pem);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
        assert!(ca.is_ca());
        assert_eq!(
            ca.subject().to_string(),
            "CN=kubeforge-externalgrpc-ca, O=kubeforge"
        );
        cert.verify_signature(Some(ca.public_key()))
            .expect("the client certificate verifies against ca_pem");
        assert_eq!(cert.issuer(), ca.subject());
        assert!(!cert.is_ca());
        assert_eq!(
            cert.subject().to_string(),
            format!("O={tenant}, CN=cluster:{cluster_id}")
        );
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .expect("SANs")
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => format!("URI:{u}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(sans, [format!("URI:kubeforge://clusters/{cluster_id}")]);
        let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
        assert!(eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty());

        let not_after = cert.validity().not_after.timestamp();
        let expected = chrono::Utc::now().timestamp() + ttl_seconds;
        assert!(
            (not_after - expected).abs() < 120,
            "expires at {not_after}, expected about {expected}"
        );
        let expires_at: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(body["expires_at"].clone()).unwrap();
        assert_eq!(expires_at.timestamp(), not_after);

        // The key belongs to the certificate.
        let pair = CertKeyPair::from_pem(cert_pem, key_pem).expect("key matches cert");
        assert_eq!(body["serial"], pair.serial_hex);

        // Who the gRPC service will take the caller for.
        let who = identify(&cert_der).expect("identify");
        assert_eq!(who.tenant, tenant);
        assert_eq!(who.cluster_id.to_string(), cluster_id);
        assert_eq!(who.serial, pair.serial_hex);
    }

    /// The cloud-config file as YAML: `key: "double-quoted value"` per line
    /// (a double-quoted YAML scalar reads like a JSON string), comments aside.
    fn cloud_config(text: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (k, v) = line.split_once(": ").expect("key: value");
            let v: String = serde_json::from_str(v).expect("a double-quoted scalar");
            assert!(out.insert(k.to_string(), v).is_none(), "{k} twice");
        }
        out
    }

    #[tokio::test]
    async fn the_ca_is_sealed_created_once_and_shared_by_racing_replicas() {
        let app = TestApp::new().await;
        let sbox = &app.app.secrets;
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let pool = app.pool.clone();
                let sbox = sbox.clone();
                tokio::spawn(async move { GrpcPki::load_or_create(&pool, &sbox).await })
            })
            .collect();
        let mut cas = BTreeSet::new();
        for r in racers {
            cas.insert(
                r.await
                    .unwrap()
                    .expect("load_or_create")
                    .ca_pem()
                    .to_string(),
            );
        }
        assert_eq!(cas.len(), 1, "every replica has the same CA");
        let ca_pem = cas.into_iter().next().unwrap();
        assert_eq!(app.count("service_secrets").await, 1);

        // Reloaded, not regenerated.
        let again = GrpcPki::load_or_create(&app.pool, sbox).await.unwrap();
        assert_eq!(again.ca_pem(), ca_pem);
        let ca_der = der(&ca_pem);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let years = (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp())
            / (365 * 86400);
        assert_eq!(years, 10);

        // Sealed: neither the certificate nor any key text is in the row.
        let (name, key_id, ciphertext): (String, String, Vec<u8>) =
            sqlx::query_as("SELECT name, key_id, ciphertext FROM service_secrets")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert_eq!(name, "kubeforge-externalgrpc-ca");
        assert_eq!(key_id, sbox.key_id());
        let haystack = String::from_utf8_lossy(&ciphertext);
        assert!(!haystack.contains("BEGIN"));
        for line in pem_body_lines(&ca_pem) {
            assert!(!haystack.contains(&line));
        }
        let db = whole_database(&app).await;
        assert!(!db.contains("PRIVATE KEY") && !db.contains(&pem_body_lines(&ca_pem)[0]));

        // Bound to its name and to the service's key.
        let other_box = kubeforge::crypto::SecretBox::new(&[1u8; 32]).unwrap();
        assert!(GrpcPki::load_or_create(&app.pool, &other_box)
            .await
            .is_err());
        sqlx::query("UPDATE service_secrets SET name = 'moved'")
            .execute(&app.pool)
            .await
            .unwrap();
        assert!(
            kubeforge::store::service_secret::get(&app.pool, sbox, "moved")
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn an_editor_gets_a_working_bundle_and_the_key_is_kept_nowhere() {
        let app = app_with_grpc().await;
        let editor = app.token("acme", Role::Editor);
        let created = create(&app, &editor, cluster_body("web")).await;
        let id = created["cluster"]["id"].as_str().unwrap().to_string();

        // No body: 90 days.
        let r = app.call(Method::POST, PATH, Some(&editor), None, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text);
        check_bundle(&r.body, &id, "acme", 90 * 86400);
        let config = cloud_config(r.body["cloud_config"].as_str().unwrap());
        assert_eq!(
            config,
            BTreeMap::from([
                ("address".to_string(), GRPC.to_string()),
                ("key".into(), "/etc/kubeforge-autoscaler/tls.key".into()),
                ("cert".into(), "/etc/kubeforge-autoscaler/tls.crt".into()),
                ("cacert".into(), "/etc/kubeforge-autoscaler/ca.crt".into()),
            ])
        );
        let first_key = r.body["key_pem"].as_str().unwrap().to_string();
        let first_serial = r.body["serial"].as_str().unwrap().to_string();

        // By id, with a TTL, and an admin may too; each call a new key, one CA.
        let r2 = app
            .call(
                Method::POST,
                &format!("/v1/clusters/{id}/autoscaler/credentials"),
                Some(&app.token("acme", Role::Admin)),
                Some(json!({"ttl_seconds": 3600})),
                &[],
            )
            .await;
        assert_eq!(r2.status, 200, "{}", r2.text);
        check_bundle(&r2.body, &id, "acme", 3600);
        assert_eq!(r2.body["ca_pem"], r.body["ca_pem"]);
        assert_ne!(r2.body["key_pem"], r.body["key_pem"]);
        assert_eq!(header(&r2, "cache-control"), "no-store");

        // Audited without the key.
        let events = get(&app, &editor, "/v1/clusters/web/events").await;
        let issued: Vec<&Value> = events.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["reason"] == "AutoscalerCredentialsIssued")
            .collect();
        assert_eq!(issued.len(), 2, "{}", events.text);
        assert_eq!(issued[0]["type"], "Normal", "{}", events.text);
        let messages: String = issued.iter().map(|e| e["message"].to_string()).collect();
        assert!(messages.contains(&first_serial), "{messages}");
        assert!(!messages.contains("PRIVATE"), "{messages}");

        let db = whole_database(&app).await;
        assert_not_stored(&db, &first_key);
        assert_not_stored(&db, r2.body["key_pem"].as_str().unwrap());
    }

    #[tokio::test]
    async fn who_may_ask_and_what_is_refused() {
        let app = app_with_grpc().await;
        let editor = app.token("acme", Role::Editor);
        create(&app, &editor, cluster_body("web")).await;
        let before = app.count("events").await;

        let r = app
            .call(
                Method::POST,
                PATH,
                Some(&app.token("acme", Role::Viewer)),
                None,
                &[],
            )
            .await;
        assert_problem(&r, 403, "forbidden");
        let r = app
            .call(
                Method::POST,
                PATH,
                Some(&app.token("globex", Role::Admin)),
                None,
                &[],
            )
            .await;
        assert_problem(&r, 404, "not_found");
        let r = app
            .call(
                Method::POST,
                "/v1/clusters/nope/autoscaler/credentials",
                Some(&editor),
                None,
                &[],
            )
            .await;
        assert_problem(&r, 404, "not_found");
        let r = app.call(Method::POST, PATH, None, None, &[]).await;
        assert_problem(&r, 401, "unauthenticated");

        for body in [
            json!({"ttl_seconds": 3599}),
            json!({"ttl_seconds": 365 * 86400 + 1}),
            json!({"ttl_seconds": 0}),
            json!({"ttl_seconds": u64::MAX}),
            json!({"ttl_seconds": -5}),
            json!({"ttl_seconds": "1h"}),
        ] {
            let r = app
                .call(Method::POST, PATH, Some(&editor), Some(body.clone()), &[])
                .await;
            assert_problem(&r, 422, "validation_failed");
            assert_eq!(r.body["field"], "ttl_seconds", "{body}: {}", r.text);
        }
        let r = app
            .call(
                Method::POST,
                PATH,
                Some(&editor),
                Some(json!({"ttl": 3600})),
                &[],
            )
            .await;
        assert_problem(&r, 422, "validation_failed");
        assert_eq!(r.body["field"], "ttl");
        for ttl in [3600, 365 * 86400] {
            let r = app
                .call(
                    Method::POST,
                    PATH,
                    Some(&editor),
                    Some(json!({"ttl_seconds": ttl})),
                    &[],
                )
                .await;
            assert_eq!(r.status, 200, "{ttl}: {}", r.text);
        }
        // The body may be left out, be `null` or be `{}`; JSON it must be.
        for raw in [&b"null"[..], b"{}", b" "] {
            let r = app
                .call_raw(Method::POST, PATH, Some(&editor), Some(raw.to_vec()), &[])
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
        }
        let r = app
            .call_raw(
                Method::POST,
                PATH,
                Some(&editor),
                Some(b"ttl".to_vec()),
                &[],
            )
            .await;
        assert_problem(&r, 400, "malformed_body");
        let r = app
            .call(
                Method::POST,
                PATH,
                Some(&editor),
                None,
                &[("content-type", "text/plain")],
            )
            .await;
        assert_eq!(
            r.status, 200,
            "an empty body needs no JSON type: {}",
            r.text
        );
        assert_eq!(app.count("events").await, before + 6, "only those issued");

        // A cluster being deleted gets none.
        app.call(Method::DELETE, "/v1/clusters/web", Some(&editor), None, &[])
            .await;
        let r = app.call(Method::POST, PATH, Some(&editor), None, &[]).await;
        assert_problem(&r, 409, "conflict");
    }

    #[tokio::test]
    async fn without_a_grpc_endpoint_it_is_409_and_nothing_is_made() {
        let app = TestApp::new().await;
        let editor = app.token("acme", Role::Editor);
        create(&app, &editor, cluster_body("web")).await;
        let before = app.counts().await;
        let r = app.call(Method::POST, PATH, Some(&editor), None, &[]).await;
        assert_problem(&r, 409, "conflict");
        let detail = r.body["detail"].as_str().unwrap();
        assert!(
            detail.contains("externalgrpc") && detail.contains("--grpc-listen"),
            "{detail}"
        );
        assert_eq!(app.counts().await, before);
        assert_eq!(app.count("service_secrets").await, 0);
    }

    #[tokio::test]
    async fn the_cli_writes_a_private_bundle_its_cloud_config_points_at() {
        use kubeforge::cli::autoscaler::{run_autoscaler_to, AutoscalerCmd};
        use kubeforge::cli::client::{ClientOpts, Output};
        use std::os::unix::fs::PermissionsExt;

        let app = app_with_grpc().await;
        let editor = app.token("acme", Role::Editor);
        let created = create(&app, &editor, cluster_body("web")).await;
        let id = created["cluster"]["id"].as_str().unwrap().to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(axum::serve(listener, app.router.clone()).into_future());
        let opts = ClientOpts {
            url: format!("http://{addr}"),
            token: Some(editor.clone()),
            output: Output::Table,
        };
        let dir = std::env::temp_dir().join(format!("kf-cli-creds-{}", uuid::Uuid::new_v4()));

        let mut out = Vec::new();
        run_autoscaler_to(
            &opts,
            AutoscalerCmd::Credentials {
                cluster: "web".into(),
                out_dir: Some(dir.clone()),
                ttl: Some(std::time::Duration::from_secs(30 * 86400)),
            },
            &mut out,
        )
        .await
        .expect("credentials --out-dir");
        let printed = String::from_utf8(out).unwrap();
        for f in ["ca.crt", "tls.crt", "tls.key", "cloud-config.yaml"] {
            let path = dir.join(f);
            assert!(
                printed.contains(&format!("wrote {}", path.display())),
                "{printed}"
            );
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let bundle = json!({
            "address": GRPC,
            "ca_pem": read("ca.crt"),
            "cert_pem": read("tls.crt"),
            "key_pem": read("tls.key"),
            "serial": CertKeyPair::from_pem(&read("tls.crt"), &read("tls.key")).unwrap().serial_hex,
            "expires_at": chrono::DateTime::<chrono::Utc>::from_timestamp(
                x509_parser::parse_x509_certificate(&der(&read("tls.crt"))).unwrap().1
                    .validity().not_after.timestamp(), 0).unwrap(),
        });
        check_bundle(&bundle, &id, "acme", 30 * 86400);
        let config = cloud_config(&read("cloud-config.yaml"));
        let abs = std::fs::canonicalize(&dir).unwrap();
        assert_eq!(config["address"], GRPC);
        assert_eq!(config["key"], abs.join("tls.key").to_str().unwrap());
        assert_eq!(config["cert"], abs.join("tls.crt").to_str().unwrap());
        assert_eq!(config["cacert"], abs.join("ca.crt").to_str().unwrap());
        assert_eq!(config.len(), 4);

        // Without --out-dir: the JSON, as the API answered it.
        let mut out = Vec::new();
        run_autoscaler_to(
            &opts,
            AutoscalerCmd::Credentials {
                cluster: "web".into(),
                out_dir: None,
                ttl: None,
            },
            &mut out,
        )
        .await
        .expect("credentials");
        let v: Value = serde_json::from_slice(&out).expect("JSON");
        check_bundle(&v, &id, "acme", 90 * 86400);

        // A viewer's refusal is an error naming the problem; nothing written.
        let viewer_dir = dir.join("viewer");
        let err = run_autoscaler_to(
            &ClientOpts {
                token: Some(app.token("acme", Role::Viewer)),
                ..opts.clone()
            },
            AutoscalerCmd::Credentials {
                cluster: "web".into(),
                out_dir: Some(viewer_dir.clone()),
                ttl: None,
            },
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("403"), "{err}");
        assert!(!viewer_dir.exists());

        server.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A cluster holds at most 16 node pools, however they come: a pool
/// added on its own is refused once there are 16, naming the request's
/// field, and nothing is written.
#[tokio::test]
async fn node_pool_create_keeps_the_pool_limit() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Editor);
    create(&app, &token, cluster_body("web")).await;
    for i in 1..16 {
        let r = app
            .call(
                Method::POST,
                "/v1/clusters/web/node-pools",
                Some(&token),
                Some(json!({"name": format!("p{i}"), "size": 1})),
                &[],
            )
            .await;
        assert_eq!(r.status, 202, "pool {i}: {}", r.text);
    }
    let before = app.counts().await;
    let r = app
        .call(
            Method::POST,
            "/v1/clusters/web/node-pools",
            Some(&token),
            Some(json!({"name": "p16", "size": 1})),
            &[],
        )
        .await;
    assert_problem(&r, 422, "validation_failed");
    assert_eq!(r.body["field"], "name", "{}", r.text);
    assert!(
        r.body["detail"].as_str().unwrap().contains("at most 16"),
        "{}",
        r.text
    );
    assert_eq!(app.counts().await, before);
    let pools = get(&app, &token, "/v1/clusters/web/node-pools").await;
    assert_eq!(pools.body["items"].as_array().unwrap().len(), 16);
}

/// Each tenant has its own buckets: one tenant past its write burst gets
/// 429 with Retry-After and a problem, reads and other tenants go on.
#[tokio::test]
async fn rate_limits_are_per_tenant_with_retry_after() {
    use kubeforge::ratelimit::{Rate, RateLimits};
    let app = TestApp::with_config(kubeforge::app::Config {
        rate_limits: RateLimits {
            read: Rate {
                per_second: 100.0,
                burst: 100.0,
            },
            write: Rate {
                per_second: 0.2,
                burst: 2.0,
            },
        },
        ..Default::default()
    })
    .await;
    let acme = app.token("acme", Role::Editor);
    let globex = app.token("globex", Role::Editor);
    create(&app, &acme, cluster_body("a1")).await;
    create(&app, &acme, cluster_body("a2")).await;
    let jobs = app.count("jobs").await;
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&acme),
            Some(cluster_body("a3")),
            &[],
        )
        .await;
    assert_problem(&r, 429, "rate_limited");
    assert_eq!(r.body["retryable"], true);
    let retry: u64 = header(&r, "retry-after")
        .parse()
        .expect("Retry-After seconds");
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    assert_eq!(app.count("jobs").await, jobs, "nothing written");
    // Reads draw from another bucket; another tenant from its own.
    assert_eq!(get(&app, &acme, "/v1/clusters").await.status, 200);
    create(&app, &globex, cluster_body("g1")).await;
    // The bucket is drawn from before the body is read: a flood of bad
    // requests is limited too.
    let r = app
        .call_raw(
            Method::POST,
            "/v1/clusters",
            Some(&acme),
            Some(b"{".to_vec()),
            &[],
        )
        .await;
    assert_problem(&r, 429, "rate_limited");
}

/// `/readyz` says within a second that the database is gone, and requests
/// fail fast (the pool's acquire timeout) with a problem.
#[tokio::test]
async fn readyz_fails_fast_without_the_database() {
    use axum::body::Body;
    use axum::http::Request;
    use std::time::{Duration, Instant};
    use tower::ServiceExt;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let pool =
        kubeforge::store::connect_lazy(&format!("postgres://postgres@127.0.0.1:{port}/gone"), 2)
            .unwrap();
    let (app, router) = TestApp::app_on(pool, kubeforge::app::Config::default());
    let call = |path: &str, token: Option<String>| {
        let mut req = Request::get(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        router.clone().oneshot(req.body(Body::empty()).unwrap())
    };
    let started = Instant::now();
    let r = call("/readyz", None).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], PROBLEM);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "readyz took {:?}",
        started.elapsed()
    );
    let token = app
        .auth
        .mint(
            "acme",
            "t",
            Role::Viewer,
            Duration::from_secs(60),
            chrono::Utc::now().timestamp(),
        )
        .unwrap();
    let started = Instant::now();
    let r = call("/v1/clusters", Some(token)).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], PROBLEM);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a request took {:?}",
        started.elapsed()
    );
}

/// Roles and credentials (issue 13 point 12): which role may mint which
/// kubeconfig, what the certificate says, revoking a cluster's kubeconfigs
/// and API tokens.
mod roles {
    use super::*;
    use kubeforge_cluster::pki::x509_parser;
    use uuid::Uuid;

    /// Makes acme's cluster `web` ready with a CA and an endpoint, as the
    /// engine would on a real provider.
    async fn ready_cluster(app: &TestApp) -> Uuid {
        let editor = app.token("acme", Role::Editor);
        let c = create(app, &editor, cluster_body("web")).await;
        let id = Uuid::parse_str(c["cluster"]["id"].as_str().unwrap()).unwrap();
        let row = kubeforge::store::cluster::get_any(&app.pool, id)
            .await
            .unwrap()
            .unwrap();
        kubeforge::store::pki::ensure(&app.pool, &app.app.secrets, &row)
            .await
            .unwrap();
        sqlx::query(
            "UPDATE clusters SET phase = 'ready', endpoint = 'https://10.0.0.1:6443' WHERE id = $1",
        )
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
        id
    }

    async fn mint(app: &TestApp, token: &str, role: &str) -> Resp {
        app.call(
            Method::POST,
            "/v1/clusters/web/kubeconfig",
            Some(token),
            Some(json!({"role": role, "ttl_seconds": 600})),
            &[],
        )
        .await
    }

    /// The subject of the client certificate in a kubeconfig: (CN, [O]).
    fn subject(kubeconfig: &str) -> (String, Vec<String>) {
        use base64::Engine as _;
        let line = kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix("client-certificate-data: "))
            .expect("client-certificate-data");
        let pem = base64::engine::general_purpose::STANDARD
            .decode(line)
            .unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        let cn = cert
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join(",");
        let orgs = cert
            .subject()
            .iter_organization()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        (cn, orgs)
    }

    #[tokio::test]
    async fn each_role_mints_only_the_kubeconfigs_its_role_allows() {
        let app = TestApp::new().await;
        ready_cluster(&app).await;
        let viewer = app.token("acme", Role::Viewer);
        let editor = app.token("acme", Role::Editor);
        let admin = app.token("acme", Role::Admin);
        for (token, who, allowed) in [
            (&viewer, "viewer", &["viewer"][..]),
            (&editor, "editor", &["viewer", "editor"][..]),
            (&admin, "admin", &["viewer", "editor", "admin"][..]),
        ] {
            for role in ["viewer", "editor", "admin"] {
                let r = mint(&app, token, role).await;
                if !allowed.contains(&role) {
                    assert_problem(&r, 403, "forbidden");
                    let detail = r.body["detail"].as_str().unwrap();
                    assert!(
                        detail.contains(&format!("role {who} may not mint {role} kubeconfigs")),
                        "{detail}"
                    );
                    continue;
                }
                assert_eq!(r.status, 200, "{who} minting {role}: {}", r.text);
                let (cn, orgs) = subject(&r.text);
                assert_eq!(cn, "kubeforge:user:tester");
                let stem = match role {
                    "viewer" => "viewers",
                    "editor" => "editors",
                    _ => "cluster-admins",
                };
                assert_eq!(
                    orgs,
                    [format!("kubeforge:{stem}:g1")],
                    "{who} minting {role}"
                );
                assert!(!orgs.iter().any(|o| o == "system:masters"));
                // The expiry, as a header.
                let expires =
                    chrono::DateTime::parse_from_rfc3339(header(&r, "kubeforge-expires-at"))
                        .unwrap()
                        .with_timezone(&chrono::Utc);
                let left = (expires - chrono::Utc::now()).num_seconds();
                assert!((590..=600).contains(&left), "{left}");
            }
        }
        // The default role is admin: an editor asking without one is refused.
        let r = app
            .call(
                Method::POST,
                "/v1/clusters/web/kubeconfig",
                Some(&editor),
                Some(json!({})),
                &[],
            )
            .await;
        assert_problem(&r, 403, "forbidden");
    }

    /// `Accept: application/json` answers `{kubeconfig, expires_at, role,
    /// context, credential_generation}`; YAML stays the default; each
    /// role's kubeconfig names its entries `kubeforge_<tenant>_<cluster>_<role>`.
    #[tokio::test]
    async fn a_kubeconfig_as_json_says_when_it_expires_and_names_its_context() {
        let app = TestApp::new().await;
        ready_cluster(&app).await;
        let admin = app.token("acme", Role::Admin);
        let body = json!({"role": "viewer", "ttl_seconds": 900});
        let r = app
            .call(
                Method::POST,
                "/v1/clusters/web/kubeconfig",
                Some(&admin),
                Some(body.clone()),
                &[("accept", "application/json")],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            header(&r, "content-type").starts_with("application/json"),
            "{:?}",
            r.headers
        );
        let issued: kubeforge_cluster::api::KubeconfigIssued =
            serde_json::from_str(&r.text).unwrap();
        assert_eq!(issued.role, "viewer");
        assert_eq!(issued.context, "kubeforge_acme_web_viewer");
        assert_eq!(issued.credential_generation, 1);
        let left = (issued.expires_at - chrono::Utc::now()).num_seconds();
        assert!((890..=900).contains(&left), "{left}");
        assert_eq!(
            issued.expires_at,
            chrono::DateTime::parse_from_rfc3339(header(&r, "kubeforge-expires-at")).unwrap(),
            "body and header agree"
        );
        let kc = kubeforge_cluster::kubeconfig::Kubeconfig::from_yaml(&issued.kubeconfig).unwrap();
        assert_eq!(kc.current_context, issued.context);
        assert_eq!(kc.clusters[0].name, issued.context);
        assert_eq!(kc.users[0].name, issued.context);
        assert_eq!(kc.clusters[0].cluster.server, "https://10.0.0.1:6443");
        let (_, orgs) = subject(&issued.kubeconfig);
        assert_eq!(orgs, ["kubeforge:viewers:g1"]);

        // YAML without Accept, with `*/*`, and when YAML is preferred.
        for accept in [
            None,
            Some("*/*"),
            Some("application/yaml, application/json"),
        ] {
            let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
            let r = app
                .call(
                    Method::POST,
                    "/v1/clusters/web/kubeconfig",
                    Some(&admin),
                    Some(json!({"role": "admin"})),
                    &headers,
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(header(&r, "content-type"), "application/yaml", "{accept:?}");
            let kc = kubeforge_cluster::kubeconfig::Kubeconfig::from_yaml(&r.text).unwrap();
            assert_eq!(kc.current_context, "kubeforge_acme_web_admin", "{accept:?}");
        }
        // Errors stay problem+json whatever Accept says.
        let r = app
            .call(
                Method::POST,
                "/v1/clusters/web/kubeconfig",
                Some(&admin),
                Some(json!({"role": "root"})),
                &[("accept", "application/json")],
            )
            .await;
        assert_problem(&r, 422, "validation_failed");
        assert_eq!(r.body["field"], "role");
    }

    #[tokio::test]
    async fn only_a_tenant_admin_revokes_a_clusters_kubeconfigs() {
        let app = TestApp::new().await;
        let id = ready_cluster(&app).await;
        let path = "/v1/clusters/web/credentials/revoke";
        for role in [Role::Viewer, Role::Editor] {
            let r = app
                .call(
                    Method::POST,
                    path,
                    Some(&app.token("acme", role)),
                    None,
                    &[],
                )
                .await;
            assert_problem(&r, 403, "forbidden");
            assert!(
                r.body["detail"]
                    .as_str()
                    .unwrap()
                    .contains("needs role admin"),
                "{}",
                r.text
            );
        }
        let other = app.token("globex", Role::Admin);
        let r = app.call(Method::POST, path, Some(&other), None, &[]).await;
        assert_problem(&r, 404, "not_found");

        let admin = app.token("acme", Role::Admin);
        let r = app.call(Method::POST, path, Some(&admin), None, &[]).await;
        assert_eq!(r.status, 202, "{}", r.text);
        assert_eq!(r.body["credential_generation"], 2, "{}", r.text);
        assert_eq!(r.body["operation"]["type"], "credentials_revoke");
        assert_eq!(r.body["operation"]["steps"][0]["name"], "apply");
        let g: (i64, i64) = sqlx::query_as(
            "SELECT credential_generation, credential_generation_applied FROM clusters WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(g.0, 2);
        // Kubeconfigs minted from now on carry the new generation.
        let r = mint(&app, &admin, "admin").await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(subject(&r.text).1, ["kubeforge:cluster-admins:g2"]);
        let events = get(&app, &admin, "/v1/clusters/web/events").await;
        assert!(
            events.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["reason"] == "CredentialsRevoked"),
            "{}",
            events.text
        );
        let r = app
            .call(
                Method::POST,
                "/v1/clusters/nope/credentials/revoke",
                Some(&admin),
                None,
                &[],
            )
            .await;
        assert_problem(&r, 404, "not_found");
    }

    async fn revoke(app: &TestApp, token: &str, body: Value) -> Resp {
        app.call(
            Method::POST,
            "/v1/tokens/revoke",
            Some(token),
            Some(body),
            &[],
        )
        .await
    }

    #[tokio::test]
    async fn revoked_tokens_are_refused_and_who_may_revoke_what() {
        let app = TestApp::new().await;
        let admin = app.token("acme", Role::Admin);
        let editor = app.token("acme", Role::Editor);
        let viewer = app.token("acme", Role::Viewer);
        let globex = app.token("globex", Role::Viewer);
        let platform = app.token("platform", Role::PlatformAdmin);
        let jti = |t: &str| app.app.auth.verify(t).unwrap().0.jti.unwrap();
        assert_eq!(get(&app, &viewer, "/v1/clusters").await.status, 200);

        // An editor may not revoke; an admin may not revoke by jti alone.
        assert_problem(
            &revoke(&app, &editor, json!({"token": viewer})).await,
            403,
            "forbidden",
        );
        let r = revoke(&app, &admin, json!({"jti": jti(&viewer)})).await;
        assert_problem(&r, 403, "forbidden");
        // Another tenant's token is not there for a tenant admin.
        assert_problem(
            &revoke(&app, &admin, json!({"token": globex})).await,
            404,
            "not_found",
        );
        // Exactly one of jti and token, well formed.
        for body in [json!({}), json!({"jti": "a", "token": viewer})] {
            let r = revoke(&app, &platform, body).await;
            assert_problem(&r, 422, "validation_failed");
        }
        let r = revoke(&app, &platform, json!({"jti": "bad jti"})).await;
        assert_problem(&r, 422, "validation_failed");
        assert_eq!(r.body["field"], "jti");
        let r = revoke(&app, &admin, json!({"token": "not.a.token"})).await;
        assert_problem(&r, 422, "validation_failed");
        assert_eq!(r.body["field"], "token");
        // Nothing was revoked so far.
        assert_eq!(get(&app, &viewer, "/v1/clusters").await.status, 200);
        assert_eq!(get(&app, &globex, "/v1/clusters").await.status, 200);

        // The tenant admin revokes its viewer's token: 401 from then on.
        let r = revoke(&app, &admin, json!({"token": viewer})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["jti"], jti(&viewer));
        let r = get(&app, &viewer, "/v1/clusters").await;
        assert_problem(&r, 401, "unauthenticated");
        assert!(r.text.contains("revoked"), "{}", r.text);
        assert_eq!(get(&app, &editor, "/v1/clusters").await.status, 200);
        // The platform admin revokes globex's by jti.
        let r = revoke(&app, &platform, json!({"jti": jti(&globex)})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_problem(
            &get(&app, &globex, "/v1/clusters").await,
            401,
            "unauthenticated",
        );
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM revoked_tokens")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(rows, 2);

        // Another replica (its own copy of the list, sharing the database)
        // refuses them too.
        let (other, _) = TestApp::app_on(app.pool.clone(), kubeforge::app::Config::default());
        let claims = |t: &str| other.auth.verify(t).unwrap().0;
        let err = other
            .check_token_revocation(&claims(&viewer))
            .await
            .unwrap_err();
        assert_eq!(err.status(), 401);
        other
            .check_token_revocation(&claims(&editor))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_token_not_valid_yet_or_of_another_key_is_401() {
        let app = TestApp::new().await;
        let later = app
            .app
            .auth
            .mint(
                "acme",
                "tester",
                Role::Admin,
                std::time::Duration::from_secs(600),
                chrono::Utc::now().timestamp() + 120,
            )
            .unwrap();
        let r = get(&app, &later, "/v1/clusters").await;
        assert_problem(&r, 401, "unauthenticated");
        assert!(r.text.contains("nbf"), "{}", r.text);
        let other = kubeforge::auth::AuthKeys::from_secret(&[9u8; 32]).unwrap();
        let foreign = other
            .mint(
                "acme",
                "tester",
                Role::Admin,
                std::time::Duration::from_secs(600),
                chrono::Utc::now().timestamp(),
            )
            .unwrap();
        let r = get(&app, &foreign, "/v1/clusters").await;
        assert_problem(&r, 401, "unauthenticated");
        assert!(r.text.contains("key id"), "{}", r.text);
    }
}
