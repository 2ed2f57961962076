//! The `kubeforge` binary for process tests, and the service served on a
//! loopback port for it to talk to.

use std::path::PathBuf;

use kubeforge::http::HttpSettings;
use tokio::sync::watch;

/// The `kubeforge` binary of this workspace, built with the same features
/// as the test binaries (a no-op when `scripts/test` built it already).
pub fn kubeforge_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = std::process::Command::new(cargo);
            build
                .args(["build", "--workspace", "--bins", "--locked", "--quiet"])
                .env("SQLX_OFFLINE", "true");
            // What cargo set for this test binary (its package's name,
            // manifest dir...) would make build scripts that watch those
            // variables run again, and rebuild half the tree.
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy();
                let keep = [
                    "CARGO_HOME",
                    "CARGO_TARGET_DIR",
                    "CARGO_BUILD_",
                    "CARGO_NET_",
                ]
                .iter()
                .any(|k| key.starts_with(k));
                if (key.starts_with("CARGO_") && !keep) || key == "OUT_DIR" {
                    build.env_remove(key.as_ref());
                }
            }
            let status = build.status().expect("cargo build");
            assert!(status.success(), "building the kubeforge binary");
            // target/debug/deps/<the test> -> target/debug/kubeforge
            let exe = std::env::current_exe().expect("the test's path");
            let bin = exe
                .parent()
                .and_then(|deps| deps.parent())
                .expect("target dir")
                .join("kubeforge");
            assert!(bin.exists(), "no {}", bin.display());
            bin
        })
        .clone()
}

/// `router` served over HTTP on a loopback port until the sender is told
/// `true` (or dropped); returns the base URL and that sender.
pub async fn serve_on_loopback(router: axum::Router) -> (String, watch::Sender<bool>) {
    let (url, stop, _) = serve_on_loopback_joined(router).await;
    (url, stop)
}

/// [`serve_on_loopback`], with the server's task to await after `stop`
/// (an engine beside it can stop on the same signal: `stop.subscribe()`).
pub async fn serve_on_loopback_joined(
    router: axum::Router,
) -> (
    String,
    watch::Sender<bool>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback port");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, rx) = watch::channel(false);
    let server = tokio::spawn(kubeforge::http::serve(
        listener,
        router,
        HttpSettings::default(),
        None,
        rx,
    ));
    (url, stop, server)
}
