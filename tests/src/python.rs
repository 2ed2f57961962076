//! The Python tools the tests run as independent clients
//! (`scripts/python-requirements.txt`), installed by `scripts/python-tools`
//! into a cached virtualenv.

use std::path::PathBuf;

/// The virtualenv's bin directory: `KUBEFORGE_PY_TOOLS` (what
/// `scripts/test` exports), else the script is asked (it installs into the
/// cache when the cache is cold).
pub fn tools_bin() -> PathBuf {
    match std::env::var("KUBEFORGE_PY_TOOLS") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/python-tools");
            let out = std::process::Command::new("bash")
                .arg(script)
                .output()
                .expect("running scripts/python-tools");
            assert!(
                out.status.success(),
                "scripts/python-tools failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    }
}

/// One tool of the virtualenv, by name; panics when it is missing.
pub fn tool(name: &str) -> PathBuf {
    let path = tools_bin().join(name);
    assert!(path.is_file(), "{name} is not at {}", path.display());
    path
}
