//! Scrubbing secrets out of command output before it leaves the executor.
//!
//! Every line a remote command prints goes through a [`Redactor`] before
//! it reaches a callback (and from there cluster events and logs). The
//! redactor is built from the secrets the caller knows the command may
//! echo: bootstrap tokens, private key bodies, passwords. Output is
//! handled line by line, so a multi-line secret (a PEM body) is also
//! registered line by line.

use std::borrow::Cow;
use std::fmt;

/// What a redacted secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Lines of a multi-line secret shorter than this are not registered on
/// their own (a two-character base64 tail means nothing alone), nor are
/// PEM armor lines (`-----END ...-----` is no secret): redacting them
/// would garble unrelated output.
const MIN_SECRET_LINE_LEN: usize = 8;

/// Replaces every occurrence of known secrets with [`REDACTED`].
///
/// Its `Debug` shows only how many secrets it holds, never the secrets.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret containing another is replaced whole.
    secrets: Vec<String>,
}

impl Redactor {
    /// A redactor that changes nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// A redactor for `secrets`. Empty strings are ignored; a secret that
    /// spans several lines is also registered line by line.
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut redactor = Self::default();
        for secret in secrets {
            redactor.add(secret.as_ref());
        }
        redactor
    }

    /// Registers one more secret.
    pub fn add(&mut self, secret: &str) {
        let mut candidates = vec![secret];
        if secret.contains('\n') {
            candidates.extend(
                secret
                    .lines()
                    .map(str::trim)
                    .filter(|line| line.len() >= MIN_SECRET_LINE_LEN && !line.starts_with("-----")),
            );
        }
        for candidate in candidates {
            if !candidate.is_empty() && !self.secrets.iter().any(|s| s == candidate) {
                self.secrets.push(candidate.to_owned());
            }
        }
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// How many secrets (and secret lines) are registered.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Whether no secret is registered.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every registered secret replaced by [`REDACTED`].
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), REDACTED));
            }
        }
        out
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_every_occurrence() {
        let r = Redactor::new(["abc.0123456789abcdef"]);
        assert_eq!(
            r.redact("token abc.0123456789abcdef and abc.0123456789abcdef"),
            "token [REDACTED] and [REDACTED]"
        );
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn longer_secret_wins_over_contained_one() {
        let r = Redactor::new(["secret", "supersecret"]);
        assert_eq!(r.redact("a supersecret b"), "a [REDACTED] b");
    }

    #[test]
    fn multi_line_secret_is_redacted_line_by_line() {
        let pem = "-----BEGIN KEY-----\nAAAABBBBCCCCDDDD\nEEEEFFFF\n==\n-----END KEY-----\n";
        let r = Redactor::new([pem, ""]);
        assert_eq!(r.redact("x AAAABBBBCCCCDDDD y"), "x [REDACTED] y");
        assert_eq!(r.redact("=="), "==");
        assert_eq!(r.redact("-----END KEY-----"), "-----END KEY-----");
        assert_eq!(
            format!("{r:?}"),
            format!("Redactor {{ secrets: {} }}", r.len())
        );
        assert!(!format!("{r:?}").contains("AAAA"));
    }
}
