//! How clients prove themselves to the embedded PostgreSQL: SCRAM-SHA-256
//! with a password Kubeforge generates once per data dir.
//!
//! The password is 32 random bytes, hex, in `<dir>/postgres.password`
//! (mode 0600, owned by the Kubeforge user; the server user never reads it
//! there). It is created atomically (written to a private temporary file,
//! then hard-linked into place, so two processes racing on a new data dir
//! both end up with the winner's) and reused by every later start.
//! `pg_hba.conf` allows exactly loopback TCP with `scram-sha-256`; it has
//! no `local` line because the server has no Unix socket. A data dir whose
//! `pg_hba.conf` is anything else (an older Kubeforge's `trust`) is
//! migrated by the next start: the password is set while the server is
//! down (single-user mode, the password on stdin, never in argv or a log)
//! and the file rewritten, so no window with `trust` is ever opened.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::unistd::Uid;
use rand::RngCore;

/// The password file's name in the data dir.
pub(super) const PASSWORD_FILE: &str = "postgres.password";

/// Random bytes in a password (hex-encoded: twice as many characters).
const PASSWORD_BYTES: usize = 32;

/// The whole `pg_hba.conf` Kubeforge writes; any other content is migrated.
pub(super) const HBA: &str = "\
# Written by Kubeforge: SCRAM-SHA-256 password authentication over loopback
# TCP only (the password is in postgres.password beside pgdata, mode 0600).
# The server listens on 127.0.0.1 and has no Unix socket: no `local` line.
# TYPE  DATABASE  USER  ADDRESS       METHOD
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
";

/// The superuser's password. Its `Debug` never shows it; read it with
/// [`Password::expose`] only to hand it to a client or to the server.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// The password itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn generate() -> Password {
        let mut bytes = [0u8; PASSWORD_BYTES];
        rand::thread_rng().fill_bytes(&mut bytes);
        Password(hex::encode(bytes))
    }

    /// A password Kubeforge wrote: at least 64 hex digits (URL-safe, and
    /// safe inside a SQL string literal).
    fn parse(text: &str, path: &Path) -> Result<Password> {
        let text = text.trim();
        if text.len() < 2 * PASSWORD_BYTES || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "{} is not a password Kubeforge wrote (at least {} hex digits); \
                 remove it and start again to have a new one set",
                path.display(),
                2 * PASSWORD_BYTES
            );
        }
        Ok(Password(text.to_string()))
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Reads `<dir>/postgres.password`, or creates it; `true` when this call
/// created it. An existing file must be ours; group or other permissions
/// on it are taken away (with a warning) before it is used.
pub(super) fn load_or_create_password(dir: &Path) -> Result<(Password, bool)> {
    let path = dir.join(PASSWORD_FILE);
    if let Some(password) = read_password(&path)? {
        return Ok((password, false));
    }
    let password = Password::generate();
    let tmp = dir.join(format!(
        ".{PASSWORD_FILE}.{}.{}",
        std::process::id(),
        hex::encode(rand::random::<[u8; 4]>())
    ));
    let written = (|| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(password.expose().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| fs::hard_link(&tmp, &path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok((password, true))
        }
        // Another process made it first: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let password = read_password(&path)?
                .with_context(|| format!("{} vanished while being created", path.display()))?;
            Ok((password, false))
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

fn read_password(path: &Path) -> Result<Option<Password>> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    if meta.uid() != Uid::effective().as_raw() {
        bail!(
            "{} belongs to uid {}, not to this process (uid {}); it must be ours and mode 0600",
            path.display(),
            meta.uid(),
            Uid::effective()
        );
    }
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.mode() & 0o7777), "the embedded PostgreSQL's password file was readable by others; making it 0600");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 600 {}", path.display()))?;
    }
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Password::parse(&text, path).map(Some)
}

/// Is `<pgdata>/pg_hba.conf` exactly what Kubeforge writes now?
pub(super) fn hba_is_current(pgdata: &Path) -> Result<bool> {
    let path = pgdata.join("pg_hba.conf");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(text == HBA),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The statement that sets the superuser's password (hex: nothing to escape).
pub(super) fn alter_password_sql(user: &str, password: &Password) -> String {
    format!(
        "ALTER ROLE \"{}\" WITH PASSWORD '{}';\n",
        user.replace('"', "\"\""),
        password.expose().replace('\'', "''")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("kf-pg-auth-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn password_is_made_once_0600_and_reused() {
        let dir = temp();
        let (first, created) = load_or_create_password(&dir).unwrap();
        assert!(created);
        assert_eq!(first.expose().len(), 64);
        let meta = fs::metadata(dir.join(PASSWORD_FILE)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let (again, created) = load_or_create_password(&dir).unwrap();
        assert!(!created);
        assert_eq!(first, again);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(PASSWORD_FILE)]);
        // Loosened permissions are tightened again before use.
        fs::set_permissions(dir.join(PASSWORD_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let (third, _) = load_or_create_password(&dir).unwrap();
        assert_eq!(third, first);
        let meta = fs::metadata(dir.join(PASSWORD_FILE)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(!format!("{first:?}").contains(first.expose()));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn racing_creators_agree_on_one_password() {
        let dir = temp();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || load_or_create_password(&dir).unwrap())
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
        assert!(results.iter().all(|(p, _)| *p == results[0].0));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_file_kubeforge_did_not_write_is_refused() {
        let dir = temp();
        fs::write(dir.join(PASSWORD_FILE), "hunter2\n").unwrap();
        fs::set_permissions(dir.join(PASSWORD_FILE), fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_or_create_password(&dir).unwrap_err();
        assert!(format!("{err:#}").contains("not a password Kubeforge wrote"));
        let _ = fs::remove_dir_all(dir);
    }
}
