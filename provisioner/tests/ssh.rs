//! The SSH executor against a real OpenSSH server.
//!
//! Each test starts its own `sshd` on 127.0.0.1 with a fresh host key and
//! a client key made by `load_or_create_client_key`, and kills it when the
//! test ends. Needs Debian's `openssh-server` (for `/usr/sbin/sshd`) and
//! root. Password login is not exercised against a real account: it would
//! mean setting a password on a system user; the password path is checked
//! only as far as a key-only server refusing it.

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubeforge::ssh::{
    load_or_create_client_key, public_key_line_fingerprint, ClientKey, Redactor, SshAuth, SshError,
    SshExecutor, SshSettings, SshTarget, StreamKind,
};
use sha2::Digest as _;

const SSHD: &str = "/usr/sbin/sshd";

/// A private sshd, killed and cleaned up on drop.
struct Sshd {
    child: Child,
    dir: PathBuf,
    port: u16,
    user: String,
    host_key_line: String,
    client_key: ClientKey,
}

impl Sshd {
    fn start() -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} not found: these tests need a real OpenSSH server; \
             install it with `apt-get install openssh-server`"
        );
        let dir = std::env::temp_dir().join(format!("kubeforge-ssh-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();

        let host_key = dir.join("host_ed25519");
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test-host", "-f"])
            .arg(&host_key)
            .status()
            .expect("ssh-keygen (from openssh-client) runs");
        assert!(status.success(), "ssh-keygen failed");
        let host_key_line = std::fs::read_to_string(dir.join("host_ed25519.pub"))
            .unwrap()
            .trim()
            .to_owned();

        let client_key = load_or_create_client_key(&dir.join("keys/client_ed25519")).unwrap();
        std::fs::write(
            dir.join("authorized_keys"),
            format!("{}\n", client_key.public_key_line()),
        )
        .unwrap();

        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned();
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {host_key}\n\
                 AuthorizedKeysFile {authorized_keys}\n\
                 PidFile {pid}\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\n\
                 MaxStartups 100\n\
                 MaxSessions 100\n\
                 LogLevel VERBOSE\n",
                host_key = host_key.display(),
                authorized_keys = dir.join("authorized_keys").display(),
                pid = dir.join("sshd.pid").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("sshd starts");
        let mut sshd = Sshd {
            child,
            dir,
            port,
            user,
            host_key_line,
            client_key,
        };
        sshd.wait_listening();
        sshd
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sshd exited with {status}: {}", self.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("sshd.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    fn target(&self) -> SshTarget {
        SshTarget::new("127.0.0.1", self.user.clone(), self.host_key_line.clone())
            .with_port(self.port)
    }

    fn auth(&self) -> SshAuth {
        self.client_key.auth()
    }

    /// A directory for uploads; the server is this machine.
    fn remote_dir(&self) -> String {
        self.dir.join("remote").display().to_string()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn quick_settings() -> SshSettings {
    SshSettings {
        connect_timeout: Duration::from_secs(5),
        retries: 2,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        ..SshSettings::default()
    }
}

type Lines = Vec<(StreamKind, String)>;

fn of(lines: &Lines, kind: StreamKind) -> Vec<&str> {
    lines
        .iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, l)| l.as_str())
        .collect()
}

async fn run_collect(
    executor: &SshExecutor,
    sshd: &Sshd,
    command: &str,
    redactor: &Redactor,
) -> (Result<i32, SshError>, Lines) {
    let mut lines = Vec::new();
    let result = executor
        .run(
            &sshd.target(),
            &sshd.auth(),
            command,
            Duration::from_secs(20),
            redactor,
            |kind, line| lines.push((kind, line.to_owned())),
        )
        .await;
    (result, lines)
}

#[tokio::test]
async fn run_streams_lines_per_stream_and_reports_exit_status() {
    let sshd = Sshd::start();
    let executor = SshExecutor::with_settings(4, quick_settings());

    let (result, lines) = run_collect(
        &executor,
        &sshd,
        "echo out1; echo err1 >&2; echo out2; printf 'a\\r\\nb\\n' >&2; \
         printf 'err-tail' >&2; printf 'out-tail'",
        &Redactor::none(),
    )
    .await;
    assert_eq!(result.unwrap(), 0, "{lines:?}");
    assert_eq!(of(&lines, StreamKind::Stdout), ["out1", "out2", "out-tail"]);
    assert_eq!(
        of(&lines, StreamKind::Stderr),
        ["err1", "a", "b", "err-tail"]
    );

    let (result, lines) = run_collect(
        &executor,
        &sshd,
        "echo failing >&2; exit 7",
        &Redactor::none(),
    )
    .await;
    assert_eq!(result.unwrap(), 7);
    assert_eq!(of(&lines, StreamKind::Stderr), ["failing"]);
}

#[tokio::test]
async fn command_timeout_closes_the_channel_and_keeps_the_session() {
    let sshd = Sshd::start();
    let executor = SshExecutor::with_settings(2, quick_settings());
    let session = executor
        .connect(&sshd.target(), &sshd.auth())
        .await
        .unwrap();

    let pid_file = sshd.dir.join("sleeper.pid");
    let started = Instant::now();
    let err = session
        .run(
            &format!("echo $$ > {}; exec sleep 30", pid_file.display()),
            // Long enough for the shell to start on a loaded machine (the
            // lab tests run beside this one), far below the sleep.
            Duration::from_secs(4),
            &Redactor::none(),
            |_, _| {},
        )
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, SshError::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(
        elapsed >= Duration::from_secs(4) && elapsed < Duration::from_secs(12),
        "{elapsed:?}"
    );
    // The command is stopped on the machine too, not just abandoned.
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_dir.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!proc_dir.exists(), "the timed-out command still runs");

    let mut out = Vec::new();
    let status = session
        .run(
            "echo still-here",
            Duration::from_secs(10),
            &Redactor::none(),
            |kind, l| {
                if kind == StreamKind::Stdout {
                    out.push(l.to_owned())
                }
            },
        )
        .await
        .unwrap();
    assert_eq!((status, out), (0, vec!["still-here".to_owned()]));
    session.close().await;
}

#[tokio::test]
async fn upload_is_atomic_with_mode_and_reuses_one_session() {
    let sshd = Sshd::start();
    let executor = SshExecutor::with_settings(1, quick_settings());
    let dir = format!("{}/etc/kube forge", sshd.remote_dir());
    let path = format!("{dir}/it's-secret.conf");

    executor
        .upload(
            &sshd.target(),
            &sshd.auth(),
            &path,
            b"old contents\n",
            0o644,
        )
        .await
        .unwrap();

    // One session for the rest: an overwrite, a large binary file and many
    // small ones, while the executor has a single slot.
    let session = executor
        .connect(&sshd.target(), &sshd.auth())
        .await
        .unwrap();
    session
        .upload(&path, b"token: s3cret\nline two", 0o600)
        .await
        .unwrap();
    let big: Vec<u8> = (0..3_000_000u64).map(|i| (i * 7919 % 251) as u8).collect();
    let big_path = format!("{dir}/big.bin");
    session.upload(&big_path, &big, 0o755).await.unwrap();
    for i in 0..10 {
        session
            .upload(
                &format!("{dir}/many/{i}.txt"),
                format!("{i}\n").as_bytes(),
                0o640,
            )
            .await
            .unwrap();
    }

    let mut out = Vec::new();
    let quoted = kubeforge::ssh::shell_quote(&path);
    let quoted_big = kubeforge::ssh::shell_quote(&big_path);
    let status = session
        .run(
            &format!("stat -c %a {quoted}; cat {quoted}; echo; stat -c %a {quoted_big}; sha256sum {quoted_big}"),
            Duration::from_secs(10),
            &Redactor::none(),
            |_, l| out.push(l.to_owned()),
        )
        .await
        .unwrap();
    assert_eq!(status, 0);
    let big_sha = hex::encode(sha2::Sha256::digest(&big));
    assert_eq!(out[..4], ["600", "token: s3cret", "line two", "755"]);
    assert!(out[4].starts_with(&big_sha), "{out:?}");

    // The server is this machine: check the files directly too.
    assert_eq!(std::fs::read(&path).unwrap(), b"token: s3cret\nline two");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::read_to_string(format!("{dir}/many/9.txt")).unwrap(),
        "9\n"
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["big.bin", "it's-secret.conf", "many"],
        "no temp file left"
    );

    let err = session
        .upload("relative/path", b"x", 0o600)
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::InvalidPath { .. }), "{err:?}");
    // A directory that cannot be created: the script fails, nothing is left.
    let blocker = format!("{}/blocker", sshd.remote_dir());
    std::fs::write(&blocker, b"file").unwrap();
    let err = session
        .upload(&format!("{blocker}/sub/file"), b"x", 0o600)
        .await
        .unwrap_err();
    match &err {
        SshError::UploadFailed { status, stderr, .. } => {
            assert_ne!(*status, 0);
            assert!(stderr.contains("mkdir"), "{stderr}");
        }
        other => panic!("expected UploadFailed, got {other:?}"),
    }
    assert!(!err.is_retryable());
    session.close().await;
}

#[tokio::test]
async fn secrets_are_redacted_from_both_streams() {
    let sshd = Sshd::start();
    let executor = SshExecutor::with_settings(2, quick_settings());
    let token = "abcdef.0123456789abcdef";
    let redactor = Redactor::new([token, sshd.client_key.private_key_openssh()]);
    let key_line = sshd
        .client_key
        .private_key_openssh()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    let (result, lines) = run_collect(
        &executor,
        &sshd,
        &format!("echo 'token={token} ok'; echo '{token}' >&2; echo '{key_line}'"),
        &redactor,
    )
    .await;
    assert_eq!(result.unwrap(), 0);
    assert_eq!(
        of(&lines, StreamKind::Stdout),
        ["token=[REDACTED] ok", "[REDACTED]"]
    );
    assert_eq!(of(&lines, StreamKind::Stderr), ["[REDACTED]"]);
    assert!(lines.iter().all(|(_, l)| !l.contains(token)));
}

#[tokio::test]
async fn host_key_mismatch_fails_loudly_and_is_not_retried() {
    let sshd = Sshd::start();
    let executor = SshExecutor::with_settings(
        2,
        SshSettings {
            retries: 3,
            backoff_base: Duration::from_secs(2),
            ..quick_settings()
        },
    );
    let impostor = ClientKey::generate().unwrap();
    let mut target = sshd.target();
    target.host_key = impostor.public_key_line().to_owned();

    let started = Instant::now();
    let err = executor
        .run(
            &target,
            &sshd.auth(),
            "true",
            Duration::from_secs(5),
            &Redactor::none(),
            |_, _| {},
        )
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "no retry wait");
    match &err {
        SshError::HostKeyMismatch {
            expected_fingerprint,
            presented_fingerprint,
            ..
        } => {
            assert_eq!(expected_fingerprint, impostor.fingerprint());
            assert_eq!(
                presented_fingerprint,
                &public_key_line_fingerprint(&sshd.host_key_line).unwrap()
            );
        }
        other => panic!("expected HostKeyMismatch, got {other:?}"),
    }
    assert!(!err.is_retryable());

    // The fingerprint is the one ssh-keygen prints.
    let keygen = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(sshd.dir.join("host_ed25519.pub"))
        .output()
        .unwrap();
    let keygen = String::from_utf8(keygen.stdout).unwrap();
    assert_eq!(
        keygen.split_whitespace().nth(1).unwrap(),
        public_key_line_fingerprint(&sshd.host_key_line).unwrap()
    );
}

#[tokio::test]
async fn refused_credentials_fail_at_once() {
    let sshd = Sshd::start();
    let executor = SshExecutor::with_settings(
        2,
        SshSettings {
            retries: 3,
            backoff_base: Duration::from_secs(2),
            ..quick_settings()
        },
    );
    let started = Instant::now();
    let stranger = ClientKey::generate().unwrap();
    let err = executor
        .connect(&sshd.target(), &stranger.auth())
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::AuthFailed { .. }), "{err:?}");
    assert!(!err.is_retryable());

    let err = executor
        .connect(&sshd.target(), &SshAuth::Password("not-a-password".into()))
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::AuthFailed { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "no retry wait");

    let err = executor
        .connect(&sshd.target(), &SshAuth::PrivateKey("not a key".into()))
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::InvalidClientKey(_)), "{err:?}");
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported_retryable() {
    let port = free_port(); // nothing listens there any more
    let executor = SshExecutor::with_settings(1, quick_settings());
    let host_key = ClientKey::generate().unwrap();
    let target = SshTarget::new("127.0.0.1", "root", host_key.public_key_line()).with_port(port);

    let started = Instant::now();
    let err = executor
        .run(
            &target,
            &host_key.auth(),
            "true",
            Duration::from_secs(5),
            &Redactor::none(),
            |_, _| {},
        )
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    match &err {
        SshError::Connect {
            attempts, source, ..
        } => {
            assert_eq!(*attempts, 3);
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected Connect, got {other:?}"),
    }
    assert!(err.is_retryable());
    // Two backoffs of at least half of 100 ms and 200 ms.
    assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_commands_are_bounded_by_max_concurrent() {
    let sshd = Sshd::start();
    let executor = SshExecutor::with_settings(4, quick_settings());
    let command = "s=$(date +%s%N); sleep 0.5; e=$(date +%s%N); echo $s $e";

    let runs = (0..20).map(|_| {
        let executor = executor.clone();
        let target = sshd.target();
        let auth = sshd.auth();
        tokio::spawn(async move {
            let mut out = Vec::new();
            let status = executor
                .run(
                    &target,
                    &auth,
                    command,
                    Duration::from_secs(20),
                    &Redactor::none(),
                    |_, l| out.push(l.to_owned()),
                )
                .await
                .unwrap();
            (status, out)
        })
    });
    let mut events = Vec::new();
    for run in futures::future::join_all(runs).await {
        let (status, out) = run.unwrap();
        assert_eq!(status, 0);
        let times: Vec<u128> = out[0]
            .split_whitespace()
            .map(|t| t.parse().unwrap())
            .collect();
        // At equal times an end counts before a start.
        events.push((times[0], 1i32));
        events.push((times[1], -1i32));
    }
    assert_eq!(events.len(), 40);
    events.sort_by_key(|&(t, delta)| (t, delta));
    let (mut running, mut max_running) = (0, 0);
    for (_, delta) in events {
        running += delta;
        max_running = max_running.max(running);
    }
    assert!(max_running <= 4, "{max_running} commands ran at once");
    assert!(max_running >= 2, "commands did not overlap at all");
}

#[test]
fn client_key_file_is_private_and_stable() {
    let dir = std::env::temp_dir().join(format!("kubeforge-key-test-{}", uuid::Uuid::new_v4()));
    let path = dir.join("nested/id_ed25519");
    let first = load_or_create_client_key(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = load_or_create_client_key(&path).unwrap();
    assert_eq!(first.fingerprint(), again.fingerprint());
    assert!(first.public_key_line().starts_with("ssh-ed25519 AAAA"));
    assert!(first.public_key_line().ends_with(" kubeforge"));
    assert!(first.fingerprint().starts_with("SHA256:"));
    assert!(!format!("{first:?}").contains(first.private_key_openssh()));

    // ssh-keygen agrees on the public half and the fingerprint.
    let public = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&path)
        .output();
    if let Ok(public) = public {
        let line = String::from_utf8(public.stdout).unwrap();
        assert_eq!(
            line.split_whitespace().take(2).collect::<Vec<_>>(),
            first
                .public_key_line()
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
