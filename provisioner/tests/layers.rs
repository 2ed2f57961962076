//! The layer rule of the service crate, checked on its source: each
//! top-level module may name (`crate::<module>`) only the modules below it.
//!
//!     api -> app -> {store, engine} -> {providers, ssh, tenant} -> cluster
//!
//! with the autoscaler beside the app, on top of the engine (it runs as
//! one of the engine's jobs, registered by `server`), the externalgrpc
//! provider beside the API (another door, writing sizes the way the
//! autoscaler does) with its CA (`grpc_pki`) below the app, the cluster
//! DNS server (`dns`) beside the autoscaler (it reads the clusters through
//! the engine's tenant clients), and
//! with `state` (the shared process state) between app/engine and what
//! they use, and foundations (errors, contexts, crypto, metrics, keys,
//! artifacts, rate limits) usable from any layer, and the HTTP listener
//! (`http`) on nothing of the crate. `server`, `cli` and `main` wire
//! everything and may name anything. A new top-level module must be given
//! its place here, or this test fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const FOUNDATIONS: &[&str] = &[
    "error",
    "context",
    "crypto",
    "metrics",
    "keys",
    "artifacts",
    "auth",
    "ratelimit",
];

/// Module -> the modules (beyond the foundations) it may name.
fn allowed() -> BTreeMap<&'static str, Vec<&'static str>> {
    BTreeMap::from([
        ("api", vec!["app", "state", "store"]),
        (
            "app",
            vec!["state", "store", "engine", "providers", "grpc_pki"],
        ),
        (
            "engine",
            vec!["state", "store", "providers", "ssh", "tenant"],
        ),
        ("autoscaler", vec!["state", "store", "engine", "tenant"]),
        ("dns", vec!["state", "store", "engine", "tenant"]),
        (
            "externalgrpc",
            vec!["state", "store", "autoscaler", "grpc_pki"],
        ),
        ("grpc_pki", vec!["store"]),
        ("state", vec!["store", "providers", "ssh", "tenant"]),
        ("store", vec![]),
        ("providers", vec!["ssh"]),
        ("ssh", vec![]),
        ("tenant", vec![]),
        ("embedded_pg", vec![]),
        ("error", vec![]),
        ("context", vec!["error"]),
        ("auth", vec!["context", "error"]),
        ("crypto", vec![]),
        ("metrics", vec![]),
        ("keys", vec![]),
        ("artifacts", vec![]),
        ("ratelimit", vec![]),
        ("http", vec![]),
    ])
}

/// Modules that wire the layers together.
const WIRING: &[&str] = &["server", "cli", "main", "lib"];

fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The `crate::<name>` a source file names, outside comments.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `kubeforge_cluster::` and the like end in "crate::" too.
            let before = &rest[..i];
            if !before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                && !name.is_empty()
            {
                out.insert(name);
            }
            rest = after;
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_module_names_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rules = allowed();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 30, "found only {} files", files.len());
    let mut problems = Vec::new();
    for f in &files {
        let module = top_module(&src, f);
        if WIRING.contains(&module.as_str()) {
            continue;
        }
        let Some(may) = rules.get(module.as_str()) else {
            problems.push(format!(
                "{}: module `{module}` has no place in the layer rule (tests/layers.rs)",
                f.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for name in named_modules(&text) {
            if name == module
                || may.contains(&name.as_str())
                || FOUNDATIONS.contains(&name.as_str())
            {
                continue;
            }
            problems.push(format!(
                "{}: `{module}` names `crate::{name}`, which is not below it",
                f.strip_prefix(&src).unwrap().display()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the layer rule does not hold:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_check_sees_an_upward_name() {
    let text =
        "use crate::engine::pools;\n// crate::api in a comment\nlet x = kubeforge_cluster::join;\n";
    let names = named_modules(text);
    assert_eq!(names, BTreeSet::from(["engine".to_string()]));
}
