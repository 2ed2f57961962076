//! Kubeforge's embedded default database: a private PostgreSQL server run from
//! the machine's installed binaries, for `kubeforge up` and the test harness.
//!
//! # Layout
//!
//! Everything lives under one Kubeforge data dir `<dir>`:
//!
//! | path                  | what                                                    |
//! |-----------------------|---------------------------------------------------------|
//! | `<dir>/pgdata`        | the PostgreSQL cluster (created by `initdb` on first use) |
//! | `<dir>/postgres.password` | the superuser's password (hex, mode 0600, ours)     |
//! | `<dir>/postgres.log`  | the server's log (appended to on every start)           |
//! | `<dir>/kubeforge.lock`| [`DataDirLock`]: one `kubeforge up`/`serve` per data dir |
//! | `<dir>/harness.lock`  | held briefly by [`EmbeddedPostgres::attach_or_start`]   |
//!
//! # Server configuration
//!
//! The cluster is initialised with `initdb -U postgres --auth=scram-sha-256
//! --pwfile=... --encoding=UTF8 --locale=C.UTF-8` (falling back to
//! `--no-locale`), into `<dir>/pgdata.init` which is renamed to `<dir>/pgdata`
//! only once `initdb` succeeded, so a crash during `initdb` never leaves a
//! half-made cluster behind. The server is started with
//! `listen_addresses=127.0.0.1`, no Unix socket (`unix_socket_directories=''`),
//! `password_encryption=scram-sha-256` and a free loopback port picked on every
//! start by binding `127.0.0.1:0`. Durability settings (`fsync` etc.) are the
//! defaults.
//!
//! # Authentication
//!
//! Clients authenticate with SCRAM-SHA-256 as `postgres`, with a password
//! generated once per data dir (see [`auth`]): other local users can reach
//! the port but not log in. `pg_hba.conf` allows loopback TCP with
//! `scram-sha-256` and nothing else; a data dir made by an older Kubeforge
//! (`trust`), or whose password file was removed, gets a (new) password on
//! its next start, before the server listens. The
//! password is part of [`EmbeddedPostgres::url`] and of the connect options
//! and nowhere else: it is never logged, never in a command line (initdb
//! reads it from a temporary 0600 file it owns, single-user mode from stdin),
//! and the handle's `Debug` redacts it.
//!
//! # Running as root
//!
//! PostgreSQL refuses to run as root. When our effective uid is 0, `initdb`
//! and `pg_ctl` run as the `postgres` system user (or `nobody` if there is no
//! such user), `<dir>/pgdata` and `<dir>/postgres.log` are owned by that user,
//! and `<dir>` itself stays owned by root: if that user cannot traverse `<dir>`
//! and `<dir>` is ours, we add search-only permission for group and others
//! (`0700` becomes `0711`), which lets it reach `pgdata` without being able to
//! list or read anything else in `<dir>`. Other files Kubeforge keeps in
//! `<dir>` must therefore not be world-readable by mode alone (create them
//! `0600`). Parent directories of `<dir>` are never changed: if the server user
//! cannot traverse one of them (e.g. `/root`), starting fails with an error
//! naming it. (The check reads mode bits only; ACLs are not consulted.)
//!
//! # Binaries
//!
//! `$KUBEFORGE_PG_BIN` if set; otherwise `/usr/lib/postgresql/<major>/bin` for
//! the major version recorded in an existing cluster's `PG_VERSION`; otherwise
//! the newest `/usr/lib/postgresql/*/bin` holding `initdb`; otherwise
//! `pg_config --bindir`.
//!
//! # Lifetime
//!
//! Dropping an [`EmbeddedPostgres`] never stops the server (whether it came from
//! [`EmbeddedPostgres::start`] or [`EmbeddedPostgres::attach_or_start`]); call
//! [`EmbeddedPostgres::stop`]. The server runs in its own session (`pg_ctl`
//! detaches it), so it survives the process that started it; a server left
//! behind by a crash is found through `postmaster.pid` and handled by the next
//! `start` (which stops it and starts afresh) or `attach_or_start` (which reuses
//! it if it answers). While a service runs on it, [`EmbeddedPostgres::supervise`]
//! starts it again on the same port if it exits.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::{getgrouplist, Gid, Pid, Uid, User};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgConnection};

pub mod auth;

pub use auth::Password;

/// Name of the database created on every start.
const KUBEFORGE_DB: &str = "kubeforge";
/// Superuser created by `initdb -U`.
const SUPERUSER: &str = "postgres";
/// How long to keep retrying the first SQL connection after `pg_ctl -w`.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);
/// How long `attach_or_start` tries an already running server before giving up on it.
const ATTACH_DEADLINE: Duration = Duration::from_secs(10);
/// `pg_ctl -t`: seconds to wait for start/stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// Start attempts when the picked port was taken by someone else in the meantime.
const PORT_ATTEMPTS: usize = 3;
/// How often [`EmbeddedPostgres::supervise`] looks for the postmaster.
const SUPERVISE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between restart attempts.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long setting the password in single-user mode may take.
const SINGLE_USER_TIMEOUT: Duration = Duration::from_secs(60);
/// Server settings given on every start (and to single-user mode).
const PASSWORD_ENCRYPTION: &str = "password_encryption=scram-sha-256";

/// A private PostgreSQL server on `127.0.0.1`, owned by one Kubeforge data dir.
///
/// Dropping the handle does not stop the server: call [`EmbeddedPostgres::stop`].
#[derive(Debug)]
pub struct EmbeddedPostgres {
    dir: PathBuf,
    pgdata: PathBuf,
    log_file: PathBuf,
    port: u16,
    bin_dir: PathBuf,
    /// The OS user the server runs as when we are root; `None` means "as ourselves".
    os_user: Option<OsUser>,
    /// The superuser's password (redacted in `Debug`).
    password: Password,
    /// The password file was made now for a cluster that existed before:
    /// the server does not know the password yet.
    password_unset: bool,
}

#[derive(Debug, Clone)]
struct OsUser {
    name: String,
    uid: Uid,
    gid: Gid,
}

impl EmbeddedPostgres {
    /// Starts the server for data dir `dir`, creating `dir` and running `initdb`
    /// into `<dir>/pgdata` on first use.
    ///
    /// Waits until the server accepts connections (`pg_ctl start -w`, then SQL
    /// connection attempts for up to ~30 s) and creates database `kubeforge` if
    /// it is missing. The log goes to `<dir>/postgres.log`.
    ///
    /// If a server from an earlier run is still running on this `pgdata`
    /// (`postmaster.pid` present and its process alive), it is stopped first
    /// (`pg_ctl stop -m fast`) and a fresh one is started, so the returned
    /// handle always describes a server started with this module's settings
    /// and a newly picked port. Callers that want to share a running server use
    /// [`EmbeddedPostgres::attach_or_start`] instead.
    pub async fn start(dir: &Path) -> Result<EmbeddedPostgres> {
        let pg = Self::prepare(dir).await?;
        pg.start_prepared().await
    }

    /// Attach-or-start for test harnesses shared by several processes.
    ///
    /// Holds an exclusive lock on `<dir>/harness.lock` while deciding. If a
    /// server on `<dir>/pgdata` is already running and answering, returns a
    /// handle to it (the port is read from `postmaster.pid`, line 4);
    /// otherwise starts it as [`EmbeddedPostgres::start`] does. Either way
    /// database `kubeforge` exists afterwards. Dropping the returned handle
    /// does not stop the server.
    pub async fn attach_or_start(dir: &Path) -> Result<EmbeddedPostgres> {
        create_data_dir(dir)?;
        let lock_path = dir.join("harness.lock");
        let lock = open_lock_file(&lock_path)?;
        let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
            .await
            .context("harness lock task failed")?
            .with_context(|| format!("locking {}", lock_path.display()))?;

        let result = async {
            let mut pg = Self::prepare(dir).await?;
            // A server running with an older Kubeforge's authentication is
            // restarted (and migrated) rather than attached to.
            let outdated = pg.auth_outdated()?;
            if outdated {
                tracing::warn!(pgdata = %pg.pgdata.display(), "the embedded PostgreSQL's authentication is outdated; restarting it with a password");
            }
            if let Some(port) = pg.running_port()?.filter(|_| !outdated) {
                pg.port = port;
                match pg.wait_for_connection(ATTACH_DEADLINE).await {
                    Ok(()) => {
                        pg.ensure_database(KUBEFORGE_DB).await?;
                        tracing::info!(port, pgdata = %pg.pgdata.display(), "attached to running embedded PostgreSQL");
                        return Ok(pg);
                    }
                    Err(e) => {
                        tracing::warn!(port, error = %format!("{e:#}"), "running embedded PostgreSQL does not answer; restarting it");
                    }
                }
            }
            pg.start_prepared().await
        }
        .await;
        drop(lock);
        result
    }

    /// The TCP port the server listens on (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/DATABASE` (the database
    /// name is used verbatim). It holds the password: hand it to a client,
    /// never to a log.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password.expose(),
            self.port
        )
    }

    /// The superuser's password (also in [`EmbeddedPostgres::url`]).
    pub fn password(&self) -> &Password {
        &self.password
    }

    /// Where the password is kept: `<dir>/postgres.password`.
    pub fn password_file(&self) -> PathBuf {
        self.dir.join(auth::PASSWORD_FILE)
    }

    /// Stops the server (`pg_ctl stop -m fast -w`). Succeeds if it is not running.
    pub async fn stop(&self) -> Result<()> {
        if self.running_pid()?.is_none() {
            return Ok(());
        }
        self.pg_ctl_stop().await?;
        tracing::info!(pgdata = %self.pgdata.display(), "embedded PostgreSQL stopped");
        Ok(())
    }

    /// Resolves binaries and the OS user, creates directories and runs `initdb` if needed.
    async fn prepare(dir: &Path) -> Result<EmbeddedPostgres> {
        create_data_dir(dir)?;
        let dir = fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
        check_shell_safe(&dir)?;
        let pgdata = dir.join("pgdata");
        let bin_dir = find_bin_dir(&pgdata).await?;
        let os_user = server_user()?;
        if let Some(user) = &os_user {
            make_traversable(&dir, user)?;
        }
        let (password, created) = auth::load_or_create_password(&dir)?;
        let mut pg = EmbeddedPostgres {
            log_file: dir.join("postgres.log"),
            dir,
            pgdata,
            port: 0,
            bin_dir,
            os_user,
            password,
            password_unset: false,
        };
        pg.prepare_log_file()?;
        let initialised = pg.init_if_needed().await?;
        pg.password_unset = created && !initialised;
        pg.fix_pgdata_owner()?;
        Ok(pg)
    }

    /// Does the cluster still need [`EmbeddedPostgres::migrate_auth`]?
    fn auth_outdated(&self) -> Result<bool> {
        Ok(self.password_unset || !auth::hba_is_current(&self.pgdata)?)
    }

    /// With the server stopped: brings a cluster made by an older Kubeforge
    /// (`trust` over loopback) or one whose password file was lost to
    /// password authentication. The password is set first (single-user
    /// mode: no listener, the statement on stdin) and `pg_hba.conf`
    /// rewritten after, so an interruption anywhere is finished by the
    /// next start (the file still differs).
    async fn migrate_auth(&mut self) -> Result<()> {
        if !self.auth_outdated()? {
            return Ok(());
        }
        self.set_password_offline().await?;
        self.write_hba(&self.pgdata)?;
        self.password_unset = false;
        tracing::info!(pgdata = %self.pgdata.display(), password_file = %self.password_file().display(),
            "embedded PostgreSQL: password authentication (SCRAM-SHA-256) in force");
        Ok(())
    }

    /// `ALTER ROLE postgres PASSWORD` in single-user mode (the server must be down).
    async fn set_password_offline(&self) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::from(self.std_command("postgres"))
            .arg("--single")
            .arg("-D")
            .arg(&self.pgdata)
            // Never echo or log the statement, even when it fails.
            .args(["-c", PASSWORD_ENCRYPTION])
            .args(["-c", "log_min_error_statement=panic"])
            .args(["-c", "log_statement=none"])
            .arg("postgres")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("running postgres --single")?;
        let mut stdin = child
            .stdin
            .take()
            .context("postgres --single has no stdin")?;
        let sql = auth::alter_password_sql(SUPERUSER, &self.password);
        stdin
            .write_all(sql.as_bytes())
            .await
            .context("writing to postgres --single")?;
        drop(stdin);
        let out = tokio::time::timeout(SINGLE_USER_TIMEOUT, child.wait_with_output())
            .await
            .context("postgres --single did not finish")?
            .context("running postgres --single")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.contains("ERROR") || stderr.contains("FATAL") {
            bail!(
                "setting the embedded PostgreSQL's password in single-user mode failed ({}): {}",
                out.status,
                stderr.trim()
            );
        }
        Ok(())
    }

    /// Stops a leftover server, starts ours on a fresh port, waits, creates the database.
    async fn start_prepared(mut self) -> Result<EmbeddedPostgres> {
        if let Some(pid) = self.running_pid()? {
            tracing::warn!(pid, pgdata = %self.pgdata.display(), "stopping embedded PostgreSQL left running by an earlier run");
            self.pg_ctl_stop().await?;
        }
        self.migrate_auth().await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let log_offset = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
            let out = self.pg_ctl_start(port).await?;
            if out.status.success() {
                self.port = port;
                break;
            }
            let log = read_from(&self.log_file, log_offset);
            if attempt < PORT_ATTEMPTS && log.contains("already in use") {
                tracing::warn!(port, "port taken before PostgreSQL could bind it; retrying");
                // The failed postmaster exits by itself; make sure nothing is left.
                if self.running_pid()?.is_some() {
                    self.pg_ctl_stop().await?;
                }
                continue;
            }
            bail!(
                "starting PostgreSQL failed ({}): {}\n--- {} (tail) ---\n{}",
                out.status,
                output_text(&out),
                self.log_file.display(),
                tail(&log, 30)
            );
        }
        self.wait_for_connection(CONNECT_DEADLINE).await?;
        self.ensure_database(KUBEFORGE_DB).await?;
        tracing::info!(port = self.port, pgdata = %self.pgdata.display(), "embedded PostgreSQL started");
        Ok(self)
    }

    /// `pg_ctl start -w` on `port` with this module's settings.
    async fn pg_ctl_start(&self, port: u16) -> Result<Output> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='' -c {PASSWORD_ENCRYPTION}"
        );
        self.pg_ctl()
            .arg("start")
            .arg("-w")
            .args(["-t", PG_CTL_TIMEOUT_SECS])
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&self.log_file)
            .arg("-o")
            .arg(&options)
            .output()
            .await
            .context("running pg_ctl start")
    }

    /// Keeps the server running until `stop` turns true: once a second it
    /// looks for the postmaster, and when it has gone (killed, crashed,
    /// out of memory) starts it again on the same port, where the
    /// service's pool dials, retrying with backoff (1 s doubling to 30 s)
    /// while that fails. Requests fail fast meanwhile (`/readyz` is 503).
    pub async fn supervise(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut wait = SUPERVISE_INTERVAL;
        let mut backoff = SUPERVISE_INTERVAL;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            wait = SUPERVISE_INTERVAL;
            match self.running_pid() {
                Ok(Some(_)) => {
                    backoff = SUPERVISE_INTERVAL;
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot tell whether the embedded PostgreSQL runs");
                    continue;
                }
            }
            tracing::warn!(port = self.port, pgdata = %self.pgdata.display(), "the embedded PostgreSQL has exited; starting it again");
            match self.restart().await {
                Ok(()) => {
                    tracing::info!(port = self.port, "embedded PostgreSQL running again");
                    backoff = SUPERVISE_INTERVAL;
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), retry_in_s = backoff.as_secs(), "restarting the embedded PostgreSQL failed");
                    wait = backoff;
                    backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                }
            }
        }
    }

    /// Starts the server again on its port and waits until it answers.
    async fn restart(&self) -> Result<()> {
        let log_offset = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
        let out = self.pg_ctl_start(self.port).await?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed ({}): {}\n--- {} (tail) ---\n{}",
                out.status,
                output_text(&out),
                self.log_file.display(),
                tail(&read_from(&self.log_file, log_offset), 10)
            );
        }
        self.wait_for_connection(CONNECT_DEADLINE).await
    }

    /// A `pg_ctl` command that runs as the server user.
    fn pg_ctl(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::from(self.std_command("pg_ctl"));
        cmd.kill_on_drop(true);
        cmd
    }

    /// A command for one of the server binaries, run as the server user, in `dir`.
    fn std_command(&self, program: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.bin_dir.join(program));
        cmd.current_dir(&self.dir)
            .stdin(Stdio::null())
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .env_remove("PGUSER")
            .env_remove("PGOPTIONS");
        if let Some(user) = &self.os_user {
            // std drops supplementary groups (setgroups(0)) before setuid when run by root.
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        cmd
    }

    async fn pg_ctl_stop(&self) -> Result<()> {
        let out = self
            .pg_ctl()
            .arg("stop")
            .args(["-m", "fast", "-w", "-t", PG_CTL_TIMEOUT_SECS])
            .arg("-D")
            .arg(&self.pgdata)
            .output()
            .await
            .context("running pg_ctl stop")?;
        if !out.status.success() {
            bail!(
                "stopping PostgreSQL in {} failed ({}): {}",
                self.pgdata.display(),
                out.status,
                output_text(&out)
            );
        }
        Ok(())
    }

    /// Pid of a live postmaster on our `pgdata`, from `postmaster.pid` line 1.
    fn running_pid(&self) -> Result<Option<i32>> {
        Ok(self.read_pid_file()?.map(|(pid, _)| pid))
    }

    /// Port of a live postmaster on our `pgdata`, from `postmaster.pid` line 4.
    fn running_port(&self) -> Result<Option<u16>> {
        Ok(self.read_pid_file()?.and_then(|(_, port)| port))
    }

    /// `(pid, port)` from `postmaster.pid` if it exists and names a live postgres process.
    fn read_pid_file(&self) -> Result<Option<(i32, Option<u16>)>> {
        let path = self.pgdata.join("postmaster.pid");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut lines = text.lines();
        let pid = match lines.next().and_then(|l| l.trim().parse::<i32>().ok()) {
            Some(pid) if pid > 0 => pid,
            _ => return Ok(None),
        };
        if !process_is_postgres(pid, &self.pgdata) {
            return Ok(None);
        }
        let port = lines.nth(2).and_then(|l| l.trim().parse::<u16>().ok());
        Ok(Some((pid, port)))
    }

    fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(SUPERUSER)
            .password(self.password.expose())
            .database(database)
            .ssl_mode(PgSslMode::Disable)
            .disable_statement_logging()
    }

    /// Retries connecting to database `postgres` until it works or `deadline` passes.
    async fn wait_for_connection(&self, deadline: Duration) -> Result<()> {
        let started = Instant::now();
        let options = self.connect_options("postgres");
        loop {
            let err = match tokio::time::timeout(
                Duration::from_secs(5),
                PgConnection::connect_with(&options),
            )
            .await
            {
                Ok(Ok(conn)) => {
                    let _ = conn.close().await;
                    return Ok(());
                }
                Ok(Err(e)) => anyhow!(e),
                Err(_) => anyhow!("connection attempt timed out"),
            };
            if started.elapsed() >= deadline {
                return Err(err.context(format!(
                    "PostgreSQL on 127.0.0.1:{} did not accept connections within {}s (log: {})",
                    self.port,
                    deadline.as_secs(),
                    self.log_file.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn ensure_database(&self, name: &str) -> Result<()> {
        let mut conn = PgConnection::connect_with(&self.connect_options("postgres"))
            .await
            .with_context(|| format!("connecting to PostgreSQL on 127.0.0.1:{}", self.port))?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(name)
                .fetch_optional(&mut conn)
                .await
                .context("looking up database")?;
        if exists.is_none() {
            let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
            match sqlx::query(&sql).execute(&mut conn).await {
                Ok(_) => tracing::info!(database = name, "created database"),
                // Someone else created it in the meantime.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
                Err(e) => return Err(e).with_context(|| format!("creating database {name}")),
            }
        }
        let _ = conn.close().await;
        Ok(())
    }

    /// Creates `postgres.log` if needed and gives it to the server user.
    fn prepare_log_file(&self) -> Result<()> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.log_file)
            .with_context(|| format!("creating {}", self.log_file.display()))?;
        if let Some(user) = &self.os_user {
            std::os::unix::fs::chown(
                &self.log_file,
                Some(user.uid.as_raw()),
                Some(user.gid.as_raw()),
            )
            .with_context(|| format!("chown {} to {}", self.log_file.display(), user.name))?;
        }
        Ok(())
    }

    /// Runs `initdb` into `pgdata.init` and renames it to `pgdata`, unless
    /// `pgdata` is a cluster already; `true` when it ran.
    async fn init_if_needed(&self) -> Result<bool> {
        if self.pgdata.join("PG_VERSION").is_file() {
            return Ok(false);
        }
        if self.pgdata.exists() {
            let empty = fs::read_dir(&self.pgdata)
                .with_context(|| format!("reading {}", self.pgdata.display()))?
                .next()
                .is_none();
            if !empty {
                bail!(
                    "{} exists but is not a PostgreSQL data directory (no PG_VERSION); move it away",
                    self.pgdata.display()
                );
            }
            fs::remove_dir(&self.pgdata)
                .with_context(|| format!("removing empty {}", self.pgdata.display()))?;
        }
        let staging = self.dir.join("pgdata.init");
        // initdb runs as the server user, which cannot read our password
        // file: it gets a copy of its own, removed whatever happens.
        let pwfile = PwFile::write(
            &self.dir.join("pgdata.pwfile"),
            &self.password,
            self.os_user.as_ref(),
        )?;
        let mut failures = Vec::new();
        for locale_args in [&["--locale=C.UTF-8"][..], &["--no-locale"][..]] {
            self.fresh_dir_for_server(&staging)?;
            let out = tokio::process::Command::from(self.std_command("initdb"))
                .args(["-U", SUPERUSER, "--auth=scram-sha-256", "--encoding=UTF8"])
                .arg(format!("--pwfile={}", pwfile.0.display()))
                .args(locale_args)
                .arg("-D")
                .arg(&staging)
                .kill_on_drop(true)
                .output()
                .await
                .context("running initdb")?;
            if out.status.success() {
                self.write_hba(&staging)?;
                fs::rename(&staging, &self.pgdata).with_context(|| {
                    format!(
                        "renaming {} to {}",
                        staging.display(),
                        self.pgdata.display()
                    )
                })?;
                tracing::info!(pgdata = %self.pgdata.display(), "initialised PostgreSQL cluster");
                return Ok(true);
            }
            failures.push(format!(
                "initdb {} ({}): {}",
                locale_args.join(" "),
                out.status,
                output_text(&out)
            ));
        }
        let _ = fs::remove_dir_all(&staging);
        bail!("initdb failed:\n{}", failures.join("\n"))
    }

    /// (Re)creates an empty 0700 directory owned by the server user.
    fn fresh_dir_for_server(&self, path: &Path) -> Result<()> {
        match fs::remove_dir_all(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .with_context(|| format!("creating {}", path.display()))?;
        if let Some(user) = &self.os_user {
            std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .with_context(|| format!("chown {} to {}", path.display(), user.name))?;
        }
        Ok(())
    }

    /// Restricts client authentication to SCRAM-SHA-256 over loopback TCP
    /// ([`auth::HBA`]); written beside and renamed over the old file.
    fn write_hba(&self, pgdata: &Path) -> Result<()> {
        let path = pgdata.join("pg_hba.conf");
        let tmp = pgdata.join("pg_hba.conf.kubeforge");
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(auth::HBA.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        if let Some(user) = &self.os_user {
            std::os::unix::fs::chown(&tmp, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .with_context(|| format!("chown {} to {}", tmp.display(), user.name))?;
        }
        fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }

    /// If `pgdata` is not owned by the server user (e.g. it was made by another
    /// user before), hands the whole tree over, since PostgreSQL insists on it.
    fn fix_pgdata_owner(&self) -> Result<()> {
        let Some(user) = &self.os_user else {
            return Ok(());
        };
        let meta = fs::metadata(&self.pgdata)
            .with_context(|| format!("reading {}", self.pgdata.display()))?;
        if meta.uid() == user.uid.as_raw() {
            return Ok(());
        }
        tracing::warn!(pgdata = %self.pgdata.display(), user = %user.name, "changing owner of PostgreSQL data directory");
        chown_tree(&self.pgdata, user)
    }
}

/// initdb's `--pwfile`: a 0600 copy of the password owned by the server
/// user, removed when dropped.
struct PwFile(PathBuf);

impl PwFile {
    fn write(path: &Path, password: &Password, owner: Option<&OsUser>) -> Result<PwFile> {
        let _ = fs::remove_file(path);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        let file = PwFile(path.to_path_buf());
        f.write_all(password.expose().as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .with_context(|| format!("writing {}", path.display()))?;
        if let Some(user) = owner {
            std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .with_context(|| format!("chown {} to {}", path.display(), user.name))?;
        }
        Ok(file)
    }
}

impl Drop for PwFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// An exclusive lock on a Kubeforge data dir, held for the life of a
/// `kubeforge up`/`serve`.
///
/// Taken with [`File::try_lock`] on `<dir>/kubeforge.lock`, which then holds
/// our pid. The lock is released when the value is dropped (the pid is then
/// cleared) or when the process dies; the file itself is left in place.
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Creates `dir` if needed and locks it, or fails if another process holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock> {
        create_data_dir(dir)?;
        let path = dir.join("kubeforge.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let pid = match text.trim().parse::<u32>() {
                    Ok(pid) => pid.to_string(),
                    Err(_) => "unknown".to_string(),
                };
                bail!(
                    "data dir {} is in use by another kubeforge (pid {pid}); stop it first or pass another --data-dir",
                    dir.display()
                );
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(DataDirLock { file, path })
    }
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        // Clear our pid while still holding the lock, so it is not reported later.
        let _ = self.file.set_len(0);
        tracing::debug!(path = %self.path.display(), "releasing data dir lock");
    }
}

/// Creates `dir` (and parents); `dir` itself is created 0700.
fn create_data_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating data dir {}", dir.display())),
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// `pg_ctl` hands `-D`/`-l` paths to `/bin/sh` inside double quotes.
fn check_shell_safe(dir: &Path) -> Result<()> {
    let s = dir
        .to_str()
        .ok_or_else(|| anyhow!("data dir {} is not valid UTF-8", dir.display()))?;
    if s.chars()
        .any(|c| matches!(c, '"' | '$' | '`' | '\\' | '\n' | '\r'))
    {
        bail!(
            "data dir {s} contains a character pg_ctl cannot quote (one of \" $ ` \\ or a newline)"
        );
    }
    Ok(())
}

/// The user PostgreSQL runs as: `None` (ourselves) unless we are root.
fn server_user() -> Result<Option<OsUser>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Some(user) =
            User::from_name(name).with_context(|| format!("looking up user {name}"))?
        {
            if user.uid.is_root() {
                continue;
            }
            return Ok(Some(OsUser {
                name: user.name,
                uid: user.uid,
                gid: user.gid,
            }));
        }
    }
    bail!(
        "running as root, but neither a `postgres` nor a `nobody` user exists to run PostgreSQL as"
    )
}

/// Makes sure `user` can search every directory from `/` down to `dir`.
/// `dir` itself gets `o+x,g+x` if it is ours and lacks it; its ancestors are only checked.
fn make_traversable(dir: &Path, user: &OsUser) -> Result<()> {
    let groups = CString::new(user.name.as_str())
        .ok()
        .and_then(|name| getgrouplist(&name, user.gid).ok())
        .unwrap_or_else(|| vec![user.gid]);
    let can_search = |meta: &fs::Metadata| {
        let mode = meta.mode();
        if meta.uid() == user.uid.as_raw() {
            mode & 0o100 != 0
        } else if groups.iter().any(|g| g.as_raw() == meta.gid()) {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        }
    };
    for ancestor in dir.ancestors() {
        let meta =
            fs::metadata(ancestor).with_context(|| format!("reading {}", ancestor.display()))?;
        if can_search(&meta) {
            continue;
        }
        if ancestor == dir && meta.uid() == Uid::effective().as_raw() {
            let mode = (meta.mode() & 0o7777) | 0o011;
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {:o} {}", mode, dir.display()))?;
            continue;
        }
        bail!(
            "PostgreSQL runs as user `{}`, which cannot enter directory {} (mode {:o}); \
             use a data dir outside it or make it searchable (chmod o+x)",
            user.name,
            ancestor.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// `lchown -R`, without following symlinks.
fn chown_tree(path: &Path, user: &OsUser) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .with_context(|| format!("chown {} to {}", path.display(), user.name))?;
    let meta = fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
            let entry = entry.with_context(|| format!("reading {}", path.display()))?;
            chown_tree(&entry.path(), user)?;
        }
    }
    Ok(())
}

/// Is `pid` alive (not a zombie) and, as far as `/proc` tells, a postgres process
/// on `pgdata` (its working directory) rather than a reused pid? Pids wrap
/// quickly on a busy host (`pid_max` is often 32768), and another data dir's
/// postgres may have taken a dead postmaster's pid.
fn process_is_postgres(pid: i32, pgdata: &Path) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    // `/proc/<pid>/stat` is "pid (comm) state ...".
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        // No /proc (or the process just exited): trust kill().
        return true;
    };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return true;
    };
    let comm = stat.get(open + 1..close).unwrap_or_default();
    let state = stat
        .get(close + 1..)
        .and_then(|rest| rest.trim_start().chars().next());
    if !matches!(comm, "postgres" | "postmaster") || matches!(state, Some('Z' | 'X' | 'x')) {
        return false;
    }
    // A postgres process runs in its data dir; unreadable: trust the rest.
    match fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => fs::canonicalize(pgdata).map_or(true, |dir| cwd == dir),
        Err(_) => true,
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0")?;
    Ok(listener
        .local_addr()
        .context("reading bound address")?
        .port())
}

/// Finds the directory holding `initdb`, `pg_ctl` and `postgres`.
async fn find_bin_dir(pgdata: &Path) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KUBEFORGE_PG_BIN").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if !has_server_binaries(&dir) {
            bail!(
                "KUBEFORGE_PG_BIN={} does not contain initdb, pg_ctl and postgres",
                dir.display()
            );
        }
        return Ok(dir);
    }
    let root = Path::new("/usr/lib/postgresql");
    // Prefer the major version an existing cluster was made with.
    if let Ok(version) = fs::read_to_string(pgdata.join("PG_VERSION")) {
        let version = version.trim();
        if !version.is_empty() && !version.contains('/') {
            let dir = root.join(version).join("bin");
            if has_server_binaries(&dir) {
                return Ok(dir);
            }
        }
    }
    if let Some(dir) = newest_versioned_bin(root) {
        return Ok(dir);
    }
    let pg_config = tokio::process::Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    if let Ok(out) = pg_config {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_server_binaries(&dir) {
                return Ok(dir);
            }
        }
    }
    bail!("PostgreSQL server binaries not found; install postgresql (or set KUBEFORGE_PG_BIN to their directory)")
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| dir.join(b).is_file())
}

/// The `<root>/<version>/bin` with the highest version that holds the server binaries.
fn newest_versioned_bin(root: &Path) -> Option<PathBuf> {
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in fs::read_dir(root).ok()?.flatten() {
        let name = entry.file_name();
        let Some(version) = name.to_str().and_then(parse_version) else {
            continue;
        };
        let bin = entry.path().join("bin");
        if !has_server_binaries(&bin) {
            continue;
        }
        if best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin)
}

/// `"15"` → `[15]`, `"9.6"` → `[9, 6]`; anything else → `None`.
fn parse_version(s: &str) -> Option<Vec<u32>> {
    s.split('.').map(|p| p.parse::<u32>().ok()).collect()
}

/// The part of `path` after byte `offset` (lossy), or "" if unreadable.
fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut buf);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn output_text(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(stdout.trim());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A temp data dir whose server is stopped (synchronously) and which is removed on drop,
    /// so a failing test does not leave a postmaster behind.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(name: &str) -> TestDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "kubeforge-embedded-pg-{}-{}-{name}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&path);
            TestDir(path)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let pgdata = self.0.join("pgdata");
            if pgdata.join("postmaster.pid").exists() {
                if let Ok(Some(user)) = server_user() {
                    let bin = newest_versioned_bin(Path::new("/usr/lib/postgresql"));
                    if let Some(bin) = bin {
                        let _ = std::process::Command::new(bin.join("pg_ctl"))
                            .args(["stop", "-m", "immediate", "-w", "-D"])
                            .arg(&pgdata)
                            .current_dir("/")
                            .uid(user.uid.as_raw())
                            .gid(user.gid.as_raw())
                            .output();
                    }
                }
            }
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    async fn connect(pg: &EmbeddedPostgres, db: &str) -> PgConnection {
        PgConnection::connect(&pg.url(db)).await.expect("connect")
    }

    #[tokio::test]
    async fn start_stop_start_keeps_data() {
        let dir = TestDir::new("persist");
        let pg = EmbeddedPostgres::start(&dir.0).await.expect("start");
        assert_ne!(pg.port(), 0);
        assert_eq!(
            pg.url("kubeforge"),
            format!(
                "postgres://postgres:{}@127.0.0.1:{}/kubeforge",
                pg.password().expose(),
                pg.port()
            )
        );
        assert!(dir.0.join("postgres.log").is_file());

        let mut conn = connect(&pg, "kubeforge").await;
        sqlx::query("CREATE TABLE t (v text)")
            .execute(&mut conn)
            .await
            .expect("create");
        sqlx::query("INSERT INTO t VALUES ('kept')")
            .execute(&mut conn)
            .await
            .expect("insert");
        let ver: String = sqlx::query_scalar("SHOW server_encoding")
            .fetch_one(&mut conn)
            .await
            .expect("show");
        assert_eq!(ver, "UTF8");
        let socket_dirs: String = sqlx::query_scalar("SHOW unix_socket_directories")
            .fetch_one(&mut conn)
            .await
            .expect("show");
        assert_eq!(socket_dirs, "");
        conn.close().await.expect("close");

        pg.stop().await.expect("stop");
        assert!(PgConnection::connect(&pg.url("kubeforge")).await.is_err());
        pg.stop().await.expect("second stop is a no-op");

        let pg = EmbeddedPostgres::start(&dir.0).await.expect("restart");
        let mut conn = connect(&pg, "kubeforge").await;
        let v: String = sqlx::query_scalar("SELECT v FROM t")
            .fetch_one(&mut conn)
            .await
            .expect("select");
        assert_eq!(v, "kept");
        conn.close().await.expect("close");
        pg.stop().await.expect("stop");
    }

    /// Connects as `postgres` with `password` (none: no password at all).
    async fn connect_as(
        pg: &EmbeddedPostgres,
        password: Option<&str>,
    ) -> Result<PgConnection, sqlx::Error> {
        let mut options = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(pg.port())
            .username(SUPERUSER)
            .database("kubeforge")
            .ssl_mode(PgSslMode::Disable);
        if let Some(p) = password {
            options = options.password(p);
        }
        PgConnection::connect_with(&options).await
    }

    fn assert_refused(result: Result<PgConnection, sqlx::Error>, what: &str) {
        match result {
            Ok(_) => panic!("{what}: connected"),
            Err(sqlx::Error::Database(e)) => {
                // 28P01 invalid_password; 28000 invalid_authorization_specification.
                assert!(
                    matches!(e.code().as_deref(), Some("28P01" | "28000")),
                    "{what}: {e}"
                );
            }
            Err(e) => panic!("{what}: not an authentication failure: {e}"),
        }
    }

    /// The hba rules the running server loaded, as (type, address, method).
    async fn hba_rules(conn: &mut PgConnection) -> Vec<(String, Option<String>, String)> {
        sqlx::query_as(
            "SELECT type, address, auth_method FROM pg_hba_file_rules ORDER BY line_number",
        )
        .fetch_all(conn)
        .await
        .expect("pg_hba_file_rules")
    }

    #[tokio::test]
    async fn only_the_generated_password_gets_in() {
        let dir = TestDir::new("scram");
        let pg = EmbeddedPostgres::start(&dir.0).await.expect("start");
        let password = pg.password().expose().to_string();
        assert_eq!(password.len(), 64);
        let file = dir.0.join("postgres.password");
        assert_eq!(pg.password_file(), fs::canonicalize(&file).unwrap());
        let meta = fs::metadata(&file).expect("password file");
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.uid(), Uid::effective().as_raw());
        assert_eq!(fs::read_to_string(&file).unwrap().trim(), password);
        // initdb's copy of it is gone.
        assert!(!dir.0.join("pgdata.pwfile").exists());
        // The handle's Debug does not show it.
        assert!(!format!("{pg:?}").contains(&password), "{pg:?}");

        assert_refused(connect_as(&pg, None).await, "no password");
        assert_refused(connect_as(&pg, Some("wrong")).await, "a wrong password");
        let mut conn = connect_as(&pg, Some(&password))
            .await
            .expect("the password");
        let encryption: String = sqlx::query_scalar("SHOW password_encryption")
            .fetch_one(&mut conn)
            .await
            .expect("show");
        assert_eq!(encryption, "scram-sha-256");
        let stored: String =
            sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
                .fetch_one(&mut conn)
                .await
                .expect("pg_authid");
        assert!(stored.starts_with("SCRAM-SHA-256$"), "{stored}");
        let rules = hba_rules(&mut conn).await;
        assert!(
            rules
                .iter()
                .all(|(t, _, m)| t == "host" && m == "scram-sha-256"),
            "{rules:?}"
        );
        conn.close().await.expect("close");
        connect(&pg, "kubeforge").await.close().await.expect("url");
        pg.stop().await.expect("stop");

        // A restart keeps the password (and the file).
        let pg = EmbeddedPostgres::start(&dir.0).await.expect("restart");
        assert_eq!(pg.password().expose(), password);
        assert_refused(connect_as(&pg, None).await, "no password after a restart");
        connect(&pg, "kubeforge").await.close().await.expect("url");
        pg.stop().await.expect("stop");
        // The log never saw it.
        let log = fs::read_to_string(dir.0.join("postgres.log")).unwrap();
        assert!(!log.contains(&password));
    }

    /// The trust-mode `pg_hba.conf` Kubeforge wrote before passwords.
    const OLD_TRUST_HBA: &str =
        "# Written by Kubeforge: trust authentication over loopback TCP only.\n\
                    # The server listens on 127.0.0.1 and has no Unix socket.\n\
                    # TYPE  DATABASE  USER  ADDRESS       METHOD\n\
                    host    all       all   127.0.0.1/32  trust\n\
                    host    all       all   ::1/128       trust\n";

    /// A data dir as an older Kubeforge left it (trust, no password for
    /// `postgres`, no password file), its server running with that trust.
    async fn old_trust_dir(dir: &Path) -> u16 {
        let pg = EmbeddedPostgres::start(dir).await.expect("start");
        let mut conn = connect(&pg, "kubeforge").await;
        sqlx::query("CREATE TABLE t (v text)")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t VALUES ('kept')")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("ALTER ROLE postgres PASSWORD NULL")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        pg.stop().await.expect("stop");
        fs::write(pg.pgdata.join("pg_hba.conf"), OLD_TRUST_HBA).unwrap();
        fs::remove_file(dir.join("postgres.password")).unwrap();
        // The older Kubeforge's server: started with its trust rules.
        let port = free_port().unwrap();
        let out = pg.pg_ctl_start(port).await.unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
        let mut options = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .username(SUPERUSER)
            .database("kubeforge")
            .ssl_mode(PgSslMode::Disable);
        options = options.disable_statement_logging();
        let conn = PgConnection::connect_with(&options)
            .await
            .expect("trust lets anyone in");
        conn.close().await.unwrap();
        port
    }

    #[tokio::test]
    async fn an_older_trust_data_dir_is_migrated_on_start() {
        let dir = TestDir::new("migrate");
        old_trust_dir(&dir.0).await;
        // `up` (start) stops the old server, sets a password, rewrites pg_hba.conf.
        let pg = EmbeddedPostgres::start(&dir.0).await.expect("start");
        let password = pg.password().expose().to_string();
        assert_eq!(
            fs::read_to_string(pg.pgdata.join("pg_hba.conf")).unwrap(),
            auth::HBA
        );
        let meta = fs::metadata(dir.0.join("postgres.password")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_refused(
            connect_as(&pg, None).await,
            "no password after the migration",
        );
        let mut conn = connect(&pg, "kubeforge").await;
        let v: String = sqlx::query_scalar("SELECT v FROM t")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(v, "kept");
        conn.close().await.unwrap();
        pg.stop().await.unwrap();
        let log = fs::read_to_string(dir.0.join("postgres.log")).unwrap();
        assert!(!log.contains(&password));
    }

    #[tokio::test]
    async fn a_removed_password_file_is_replaced_and_set() {
        let dir = TestDir::new("lost-password");
        let pg = EmbeddedPostgres::start(&dir.0).await.expect("start");
        let old = pg.password().expose().to_string();
        pg.stop().await.unwrap();
        fs::remove_file(dir.0.join("postgres.password")).unwrap();
        let pg = EmbeddedPostgres::start(&dir.0).await.expect("start again");
        let new = pg.password().expose().to_string();
        assert_ne!(new, old);
        assert_refused(connect_as(&pg, Some(&old)).await, "the old password");
        assert_refused(connect_as(&pg, None).await, "no password");
        connect(&pg, "kubeforge").await.close().await.unwrap();
        pg.stop().await.unwrap();
    }

    #[tokio::test]
    async fn attach_migrates_an_older_server_instead_of_attaching() {
        let dir = TestDir::new("migrate-attach");
        let old_port = old_trust_dir(&dir.0).await;
        let pg = EmbeddedPostgres::attach_or_start(&dir.0)
            .await
            .expect("attach_or_start");
        assert_ne!(pg.port(), old_port, "attached to the trust-mode server");
        assert_refused(
            connect_as(&pg, None).await,
            "no password after the migration",
        );
        connect(&pg, "kubeforge").await.close().await.unwrap();
        // Now current: the next attach reuses it.
        let again = EmbeddedPostgres::attach_or_start(&dir.0)
            .await
            .expect("attach");
        assert_eq!(again.port(), pg.port());
        pg.stop().await.unwrap();
    }

    #[tokio::test]
    async fn start_replaces_server_left_running() {
        let dir = TestDir::new("orphan");
        let first = EmbeddedPostgres::start(&dir.0).await.expect("start");
        let old_pid = first.running_pid().expect("pid file").expect("running");
        drop(first); // does not stop the server, like a crashed kubeforge
        let second = EmbeddedPostgres::start(&dir.0).await.expect("start again");
        let new_pid = second.running_pid().expect("pid file").expect("running");
        assert_ne!(old_pid, new_pid);
        assert!(!process_is_postgres(old_pid, &second.pgdata));
        // The new postmaster is recognised on its own data dir only.
        assert!(process_is_postgres(new_pid, &second.pgdata));
        assert!(!process_is_postgres(new_pid, &std::env::temp_dir()));
        let mut conn = connect(&second, "kubeforge").await;
        conn.ping().await.expect("ping");
        conn.close().await.expect("close");
        second.stop().await.expect("stop");
    }

    #[tokio::test]
    async fn attach_or_start_reuses_running_server() {
        let dir = TestDir::new("attach");
        let first = EmbeddedPostgres::attach_or_start(&dir.0)
            .await
            .expect("attach_or_start");
        let pid = first.running_pid().expect("pid file").expect("running");
        let port = first.port();
        drop(first); // must not stop the server

        let second = EmbeddedPostgres::attach_or_start(&dir.0)
            .await
            .expect("attach");
        assert_eq!(second.port(), port);
        assert_eq!(second.running_pid().expect("pid file"), Some(pid));
        let mut conn = connect(&second, "kubeforge").await;
        conn.ping().await.expect("ping");
        conn.close().await.expect("close");

        // Several concurrent attachers all get the same server.
        let (a, b) = tokio::join!(
            EmbeddedPostgres::attach_or_start(&dir.0),
            EmbeddedPostgres::attach_or_start(&dir.0)
        );
        assert_eq!(a.expect("a").port(), port);
        assert_eq!(b.expect("b").port(), port);

        second.stop().await.expect("stop");
        // Not running any more: attach_or_start starts it again.
        let third = EmbeddedPostgres::attach_or_start(&dir.0)
            .await
            .expect("restart");
        assert_ne!(third.running_pid().expect("pid file"), Some(pid));
        third.stop().await.expect("stop");
    }

    #[test]
    fn data_dir_lock_is_exclusive() {
        let dir = TestDir::new("lock");
        let lock = DataDirLock::acquire(&dir.0).expect("first acquire");
        let pid = fs::read_to_string(dir.0.join("kubeforge.lock")).expect("read lock file");
        assert_eq!(pid.trim(), std::process::id().to_string());

        let err = DataDirLock::acquire(&dir.0).expect_err("second acquire must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains("is in use by another kubeforge"), "{msg}");
        assert!(
            msg.contains(&format!("(pid {})", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains(&dir.0.display().to_string()), "{msg}");

        drop(lock);
        // A process forked by a concurrently running test holds a copy of the lock fd
        // until it execs (O_CLOEXEC), so the release may take a moment to be visible.
        let mut again = DataDirLock::acquire(&dir.0);
        for _ in 0..50 {
            if again.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            again = DataDirLock::acquire(&dir.0);
        }
        drop(again.expect("acquire after release"));
    }

    #[test]
    fn version_parsing_and_helpers() {
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("x"), None);
        assert!(parse_version("10") > parse_version("9.6"));
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert!(check_shell_safe(Path::new("/tmp/ok dir")).is_ok());
        assert!(check_shell_safe(Path::new("/tmp/bad\"dir")).is_err());
    }

    #[tokio::test]
    async fn untraversable_parent_is_named() {
        if !Uid::effective().is_root() {
            return;
        }
        let dir = TestDir::new("closed");
        let closed = dir.0.join("closed");
        fs::create_dir_all(&closed).expect("mkdir");
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).expect("chmod");
        let err = EmbeddedPostgres::start(&closed.join("data"))
            .await
            .expect_err("must fail");
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("cannot enter directory {}", closed.display())),
            "{msg}"
        );
    }
}
