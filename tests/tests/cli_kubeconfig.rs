//! The `kubeforge` binary's kubeconfig commands against the real service
//! on loopback (TEST DOUBLE provider; clusters made ready with a real CA):
//! `clusters get-credentials` merging into a kubeconfig that has other
//! contexts, several at once, `--print` and the old `kubeconfig` command,
//! and `--exec` with `credentials exec`, checked with the real kubectl
//! v1.20.2: it reads the merged files, and it runs the credential plugin
//! and presents its certificate to a TLS server that checks it against
//! the cluster's CA (`openssl s_server` on loopback standing in for the
//! API server, which needs a lab machine).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use axum::http::Method;
use kubeforge::context::Role;
use kubeforge_tests::cli::{kubeforge_bin, serve_on_loopback};
use kubeforge_tests::lab::kubectl;
use kubeforge_tests::{cluster_body, TestApp};
use tokio::sync::watch;
use uuid::Uuid;

struct Served {
    app: TestApp,
    url: String,
    stop: watch::Sender<bool>,
}

/// The service on a loopback port.
async fn serve() -> Served {
    let app = TestApp::new().await;
    let (url, stop) = serve_on_loopback(app.router.clone()).await;
    Served { app, url, stop }
}

/// Creates `name` in acme and makes it ready with a CA and `endpoint`, as
/// the engine would on a real provider.
async fn ready_cluster(app: &TestApp, name: &str, endpoint: &str) -> Uuid {
    let editor = app.token("acme", Role::Editor);
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&editor),
            Some(cluster_body(name)),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let id = Uuid::parse_str(r.body["cluster"]["id"].as_str().unwrap()).unwrap();
    let row = kubeforge::store::cluster::get_any(&app.pool, id)
        .await
        .unwrap()
        .unwrap();
    kubeforge::store::pki::ensure(&app.pool, &app.app.secrets, &row)
        .await
        .unwrap();
    sqlx::query("UPDATE clusters SET phase = 'ready', endpoint = $2 WHERE id = $1")
        .bind(id)
        .bind(endpoint)
        .execute(&app.pool)
        .await
        .unwrap();
    id
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("kf-cli-kc-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `kubeforge ARGS` with only the environment given (and PATH).
async fn kubeforge(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(kubeforge_bin());
    cmd.args(args).env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.stdin(Stdio::null()).output())
        .await
        .expect("kubeforge finished within 60 s")
        .expect("kubeforge ran");
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn kubectl_out(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(kubectl())
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("kubectl");
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn parse(path: &Path) -> kube::config::Kubeconfig {
    kube::config::Kubeconfig::from_yaml(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn context_names(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = parse(path).contexts.into_iter().map(|c| c.name).collect();
    names.sort();
    names
}

const EXISTING: &str = "apiVersion: v1
kind: Config
clusters:
- name: other
  cluster:
    server: https://127.0.0.1:1
    insecure-skip-tls-verify: true
users:
- name: other-user
  user:
    token: not-a-real-token
contexts:
- name: other-a
  context: {cluster: other, user: other-user, namespace: team-a}
- name: other-b
  context: {cluster: other, user: other-user}
current-context: other-a
preferences: {}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_credentials_merges_into_a_kubeconfig_with_other_contexts() {
    let s = serve().await;
    ready_cluster(&s.app, "web", "https://10.0.0.1:6443").await;
    let token = s.app.token("acme", Role::Admin);
    let tmp = temp_dir();
    let config = tmp.join("kube/config");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, EXISTING).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The first path of $KUBECONFIG is the one written.
    let kubeconfig_env = format!("{}:{}", config.display(), tmp.join("second").display());
    let home = tmp.display().to_string();
    let env = [
        ("KUBEFORGE_URL", s.url.as_str()),
        ("KUBEFORGE_TOKEN", token.as_str()),
        ("KUBECONFIG", kubeconfig_env.as_str()),
        ("HOME", home.as_str()),
    ];

    let out = kubeforge(&["clusters", "get-credentials", "web"], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stdout.is_empty(),
        "stdout stays clean: {}",
        text(&out.stdout)
    );
    let said = text(&out.stderr);
    assert!(
        said.contains("kubeforge_acme_web_admin") && said.contains(&config.display().to_string()),
        "{said}"
    );
    assert!(!tmp.join("second").exists());
    assert_eq!(
        context_names(&config),
        ["kubeforge_acme_web_admin", "other-a", "other-b"]
    );
    assert_eq!(mode(&config), 0o600, "tightened: it holds a key now");
    let merged = parse(&config);
    assert_eq!(
        merged.current_context.as_deref(),
        Some("kubeforge_acme_web_admin")
    );
    let other_a = merged
        .contexts
        .iter()
        .find(|c| c.name == "other-a")
        .unwrap();
    assert_eq!(
        other_a.context.as_ref().unwrap().namespace.as_deref(),
        Some("team-a")
    );

    // A viewer kubeconfig lands beside it; the current context stays.
    let out = kubeforge(
        &[
            "clusters",
            "get-credentials",
            "web",
            "--role",
            "viewer",
            "--ttl",
            "2h",
            "--no-set-current",
        ],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        context_names(&config),
        [
            "kubeforge_acme_web_admin",
            "kubeforge_acme_web_viewer",
            "other-a",
            "other-b"
        ]
    );

    // kubectl reads the merged file as we do.
    let (ok, listed) = kubectl_out(&config, &["config", "get-contexts", "-o", "name"]);
    assert!(ok, "{listed}");
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "kubeforge_acme_web_admin",
            "kubeforge_acme_web_viewer",
            "other-a",
            "other-b"
        ]
    );
    let (ok, current) = kubectl_out(&config, &["config", "current-context"]);
    assert!(
        ok && current.trim() == "kubeforge_acme_web_admin",
        "{current}"
    );
    let (ok, minified) = kubectl_out(&config, &["config", "view", "--minify", "--raw"]);
    assert!(ok, "{minified}");
    let minified = kube::config::Kubeconfig::from_yaml(&minified).unwrap();
    assert_eq!(minified.clusters.len(), 1);
    assert_eq!(
        minified.clusters[0]
            .cluster
            .as_ref()
            .unwrap()
            .server
            .as_deref(),
        Some("https://10.0.0.1:6443")
    );
    let user = minified.auth_infos[0].auth_info.as_ref().unwrap();
    assert!(user.client_certificate_data.is_some() && user.client_key_data.is_some());
    let (ok, viewer) = kubectl_out(
        &config,
        &[
            "config",
            "view",
            "--minify",
            "--context",
            "kubeforge_acme_web_viewer",
            "-o",
            "jsonpath={.contexts[0].context.user}",
        ],
    );
    assert!(ok && viewer == "kubeforge_acme_web_viewer", "{viewer}");

    // --print and the old command write the kubeconfig to stdout and
    // leave the file alone.
    let before = std::fs::read_to_string(&config).unwrap();
    for args in [
        &["clusters", "get-credentials", "web", "--print"][..],
        &["kubeconfig", "web"][..],
    ] {
        let out = kubeforge(args, &env).await;
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        let printed = kube::config::Kubeconfig::from_yaml(&text(&out.stdout)).unwrap();
        assert_eq!(
            printed.current_context.as_deref(),
            Some("kubeforge_acme_web_admin")
        );
    }
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);

    // An unknown cluster: an error naming it, the file untouched.
    let out = kubeforge(&["clusters", "get-credentials", "nope"], &env).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not_found"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);

    // Without $KUBECONFIG: ~/.kube/config, created 0600 in a 0700 dir.
    let out = kubeforge(
        &["clusters", "get-credentials", "web"],
        &[env[0], env[1], env[3]],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let default = tmp.join(".kube/config");
    assert_eq!(context_names(&default), ["kubeforge_acme_web_admin"]);
    assert_eq!(mode(&default), 0o600);
    assert_eq!(mode(default.parent().unwrap()), 0o700);

    s.stop.send(true).unwrap();
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Eight processes merge into one file at once: every entry lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_get_credentials_lose_no_entry() {
    let s = serve().await;
    ready_cluster(&s.app, "web", "https://10.0.0.1:6443").await;
    ready_cluster(&s.app, "api", "https://10.0.0.2:6443").await;
    let token = s.app.token("acme", Role::Admin);
    let tmp = temp_dir();
    let config = tmp.join("config");
    std::fs::write(&config, EXISTING).unwrap();
    let path = config.display().to_string();
    let home = tmp.display().to_string();
    let mut runs = Vec::new();
    let mut expected = vec!["other-a".to_string(), "other-b".to_string()];
    for cluster in ["web", "api"] {
        for role in ["admin", "editor", "viewer", "viewer"] {
            let (url, token, path, home) =
                (s.url.clone(), token.clone(), path.clone(), home.clone());
            runs.push(tokio::spawn(async move {
                kubeforge(
                    &[
                        "clusters",
                        "get-credentials",
                        cluster,
                        "--role",
                        role,
                        "--kubeconfig",
                        &path,
                    ],
                    &[
                        ("KUBEFORGE_URL", &url),
                        ("KUBEFORGE_TOKEN", &token),
                        ("HOME", &home),
                    ],
                )
                .await
            }));
            expected.push(format!("kubeforge_acme_{cluster}_{role}"));
        }
    }
    for run in runs {
        let out = run.await.unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    expected.sort();
    expected.dedup();
    assert_eq!(context_names(&config), expected);
    let merged = parse(&config);
    assert_eq!(merged.clusters.len(), 1 + 6);
    assert_eq!(merged.auth_infos.len(), 1 + 6);
    assert_eq!(mode(&config), 0o600);
    let (ok, listed) = kubectl_out(&config, &["config", "get-contexts", "-o", "name"]);
    assert!(ok, "{listed}");
    assert_eq!(listed.lines().count(), 8, "{listed}");
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    s.stop.send(true).unwrap();
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// How many kubeconfigs the service has minted (its audit events).
async fn minted(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE reason = 'KubeconfigIssued'")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// `get-credentials --exec`: the kubeconfig's user runs `kubeforge
/// credentials exec`, holds no token and no key; the plugin answers an
/// ExecCredential from its cache, and kubectl runs it and presents its
/// certificate to a TLS server that requires one signed by the cluster CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_credentials_are_minted_cached_and_used_by_kubectl() {
    let s = serve().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("https://127.0.0.1:{port}");
    let id = ready_cluster(&s.app, "web", &endpoint).await;
    let token = s.app.token("acme", Role::Admin);
    let tmp = temp_dir();
    let token_file = tmp.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let config = tmp.join("config");
    let cache = tmp.join("cache");
    let (cache_s, home) = (cache.display().to_string(), tmp.display().to_string());
    let env = [
        ("KUBEFORGE_URL", s.url.as_str()),
        ("XDG_CACHE_HOME", cache_s.as_str()),
        ("HOME", home.as_str()),
    ];

    let out = kubeforge(
        &[
            "clusters",
            "get-credentials",
            "web",
            "--exec",
            "--ttl",
            "30m",
            "--token-file",
            &token_file.display().to_string(),
            "--kubeconfig",
            &config.display().to_string(),
        ],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(minted(&s.app).await, 1);
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(!written.contains(&token), "no API token in the kubeconfig");
    assert!(!written.contains("client-key-data"), "{written}");

    // kubectl sees the exec stanza.
    let (ok, view) = kubectl_out(&config, &["config", "view", "-o", "json"]);
    assert!(ok, "{view}");
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    let exec = &view["users"][0]["user"]["exec"];
    assert_eq!(exec["apiVersion"], "client.authentication.k8s.io/v1beta1");
    let command = exec["command"].as_str().unwrap();
    assert!(Path::new(command).is_absolute(), "{command}");
    let args: Vec<String> = exec["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        args,
        [
            "credentials",
            "exec",
            "--url",
            &s.url,
            "--cluster",
            "web",
            "--role",
            "admin",
            "--ttl",
            "1800s",
            "--token-file",
            &token_file.display().to_string(),
        ]
    );

    // Run the plugin as kubectl does: the seeded cache answers, no mint.
    let exec_info = r#"{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","spec":{"interactive":false}}"#;
    let plugin_env = [env[1], env[2], ("KUBERNETES_EXEC_INFO", exec_info)];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let run_plugin = || async {
        let out = tokio::process::Command::new(command)
            .args(&argv)
            .env_clear()
            .envs(plugin_env)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = run_plugin().await;
    assert_eq!(first["apiVersion"], "client.authentication.k8s.io/v1beta1");
    assert_eq!(first["kind"], "ExecCredential");
    let status = &first["status"];
    assert!(status["clientCertificateData"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(status["clientKeyData"]
        .as_str()
        .unwrap()
        .contains("PRIVATE KEY-----"));
    let expires =
        chrono::DateTime::parse_from_rfc3339(status["expirationTimestamp"].as_str().unwrap())
            .unwrap();
    let left = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds();
    assert!((1700..=1800).contains(&left), "{left}");
    assert_eq!(run_plugin().await, first, "cached");
    assert_eq!(minted(&s.app).await, 1, "no certificate per call");
    let dir = cache.join("kubeforge/credentials");
    assert_eq!(mode(&dir), 0o700);
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(mode(&files[0]), 0o600);

    // Without the cache, one new certificate, cached again.
    std::fs::remove_file(&files[0]).unwrap();
    let second = run_plugin().await;
    assert_ne!(second, first);
    assert_eq!(minted(&s.app).await, 2);
    assert_eq!(run_plugin().await, second);
    assert_eq!(minted(&s.app).await, 2);

    // kubectl asking for v1 gets v1; an unknown version is an error.
    let out = tokio::process::Command::new(command)
        .args(&argv)
        .env_clear()
        .envs([env[1], env[2]])
        .env(
            "KUBERNETES_EXEC_INFO",
            r#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","spec":{"interactive":false}}"#,
        )
        .output()
        .await
        .unwrap();
    let v1: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v1["apiVersion"], "client.authentication.k8s.io/v1");
    let out = tokio::process::Command::new(command)
        .args(&argv)
        .env_clear()
        .envs([env[1], env[2]])
        .env(
            "KUBERNETES_EXEC_INFO",
            r#"{"apiVersion":"client.authentication.k8s.io/v9"}"#,
        )
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("v9"), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());

    // No token anywhere: a clear error, nothing on stdout.
    std::fs::remove_dir_all(&dir).unwrap();
    let out = tokio::process::Command::new(command)
        .args(["credentials", "exec", "--url", &s.url, "--cluster", "web"])
        .env_clear()
        .envs([env[1], env[2]])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("KUBEFORGE_TOKEN"),
        "{}",
        text(&out.stderr)
    );

    // kubectl runs the plugin and presents its certificate to a server
    // that only accepts certificates of the cluster's CA.
    let ca = kubeforge::store::pki::ca(&s.app.pool, &s.app.app.secrets, id)
        .await
        .unwrap()
        .unwrap();
    let serving = kubeforge_cluster::pki::issue_server_cert(
        &ca.signer().unwrap(),
        "kube-apiserver",
        &[kubeforge_cluster::pki::SubjectAltName::parse("127.0.0.1").unwrap()],
        chrono::Utc::now(),
        chrono::TimeDelta::hours(1),
    )
    .unwrap();
    std::fs::write(tmp.join("ca.crt"), &ca.cert_pem).unwrap();
    std::fs::write(tmp.join("srv.crt"), &serving.cert_pem).unwrap();
    std::fs::write(tmp.join("srv.key"), &serving.key_pem).unwrap();
    let mut server = tokio::process::Command::new("openssl")
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
        .args(["-cert", "srv.crt", "-key", "srv.key", "-CAfile", "ca.crt"])
        .args(["-Verify", "1", "-verify_return_error", "-www", "-quiet"])
        .current_dir(&tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl s_server");
    let mut answer = String::new();
    for _ in 0..50 {
        // Awaited: kubectl's plugin calls the service this runtime serves.
        let out = tokio::process::Command::new(kubectl())
            .arg(format!("--kubeconfig={}", config.display()))
            .args(["get", "--raw", "/version", "--request-timeout=10s"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &home)
            .env("XDG_CACHE_HOME", &cache_s)
            .output()
            .await
            .unwrap();
        answer = format!("{}{}", text(&out.stdout), text(&out.stderr));
        if out.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // s_server's status page shows the client certificate it verified.
    assert!(
        answer.contains("kubeforge:user:tester") && answer.contains("kubeforge:cluster-admins:g1"),
        "{answer}"
    );
    assert_eq!(minted(&s.app).await, 3, "kubectl's plugin run minted one");
    let _ = server.kill().await;
    s.stop.send(true).unwrap();
    std::fs::remove_dir_all(&tmp).unwrap();
}
