//! The cluster DNS server's doors, with `dig` as the client: a query from
//! an address that is no cluster's node is refused, as is one from an
//! address two clusters' workers share; a node of a cluster whose API
//! cannot be reached yet gets SERVFAIL (its resolver asks again), never
//! another cluster's answer. The answers themselves are proved on lab
//! clusters (`e2e_workers`), where the zones come from real API servers.

use axum::http::Method;
use kubeforge::context::Role;
use kubeforge_tests::{cluster_body, TestApp};
use std::net::SocketAddr;
use std::process::Command;

/// `dig`'s status line for `name` asked of `server` from `source`.
fn status(server: SocketAddr, source: &str, name: &str) -> String {
    let out = Command::new("dig")
        .args([
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
            "-b",
            source,
            "+time=6",
            "+tries=1",
            name,
        ])
        .output()
        .expect("dig (dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig's answer: {text}"))
        .to_string()
}

// dig blocks its thread: the server runs on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_and_an_unreachable_cluster_is_not_answered() {
    let app = TestApp::new().await;
    let (udp, tcp) = kubeforge::dns::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let server = udp.local_addr().unwrap();
    let upstream = kubeforge_tests::dns::start_upstream().await;
    let resolver = kubeforge::dns::resolver(&[upstream]).unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(kubeforge::dns::serve(
        app.app.clone(),
        udp,
        tcp,
        resolver,
        stop_rx,
    ));

    // Nobody's node: refused, for cluster names and outside names alike.
    for name in [
        "kubernetes.default.svc.cluster.local",
        "outside.kubeforge.test",
    ] {
        assert_eq!(status(server, "127.0.0.1", name), "REFUSED", "{name}");
    }

    // Two tenants' clusters with a pool each.
    for (tenant, cluster) in [("acme", "web"), ("globex", "api")] {
        let token = app.token(tenant, Role::Admin);
        let mut body = cluster_body(cluster);
        body["node_pools"] = serde_json::json!([{"name": "p", "machine_type": "small", "size": 1}]);
        let r = app
            .call(Method::POST, "/v1/clusters", Some(&token), Some(body), &[])
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    app.settle().await;
    let worker_of = |cluster: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, uuid::Uuid>(
                "SELECT m.id FROM machines m JOIN clusters c ON c.id = m.cluster_id
                 WHERE c.name = $1 AND m.role = 'worker' AND m.deleted_at IS NULL LIMIT 1",
            )
            .bind(cluster)
            .fetch_one(&pool)
            .await
            .expect("a worker")
        }
    };
    let (web, api) = (worker_of("web").await, worker_of("api").await);
    let place = |id: uuid::Uuid, address: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query("UPDATE machines SET address = $2 WHERE id = $1")
                .bind(id)
                .bind(address)
                .execute(&pool)
                .await
                .unwrap();
        }
    };

    // web's node asks; web's API server is not reachable (the test
    // double's machines run nothing): no answer, no other cluster's.
    place(web, "127.0.0.2").await;
    assert_eq!(
        status(server, "127.0.0.2", "kubernetes.default.svc.cluster.local"),
        "SERVFAIL"
    );

    // An address two clusters' workers share is nobody's.
    place(web, "127.0.0.3").await;
    place(api, "127.0.0.3").await;
    assert_eq!(
        status(server, "127.0.0.3", "kubernetes.default.svc.cluster.local"),
        "REFUSED"
    );

    let metrics = app.app.metrics.render();
    for outcome in ["refused", "not_ready"] {
        assert!(
            metrics.lines().any(|l| l.starts_with(&format!(
                "kubeforge_dns_queries_total{{outcome=\"{outcome}\"}}"
            ))),
            "no {outcome} count in:\n{metrics}"
        );
    }
}
