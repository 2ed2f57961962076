//! Taking credentials back from the command line:
//! `kubeforge token revoke JTI|TOKEN` and
//! `kubeforge credentials revoke CLUSTER`, through the API (see
//! `crate::app::credentials` for who may). Like the other client
//! commands, nothing is printed unless the call succeeded.

use std::io::Write;

use kubeforge_cluster::api::{CredentialsRevoked, RevokeTokenRequest, TokenRevoked};
use reqwest::header::HeaderMap;
use reqwest::Method;

use super::client::{emit, text, write_json, write_stdout, Api, ClientOpts, NO_BODY};

/// The body for what was given: a JWT (three dot-separated parts) is sent
/// as `token`, anything else as `jti`.
pub fn revoke_body(jti_or_token: &str) -> RevokeTokenRequest {
    let given = jti_or_token.trim();
    if given.split('.').count() == 3 {
        RevokeTokenRequest {
            jti: None,
            token: Some(given.to_string()),
        }
    } else {
        RevokeTokenRequest {
            jti: Some(given.to_string()),
            token: None,
        }
    }
}

/// `kubeforge token revoke JTI|TOKEN`: prints the revoked jti and until
/// when its revocation is kept (JSON).
pub async fn run_token_revoke(opts: &ClientOpts, jti_or_token: &str) -> anyhow::Result<()> {
    let api = Api::new(opts)?;
    let url = api.url(&["tokens", "revoke"])?;
    let answer: TokenRevoked = api
        .call(
            Method::POST,
            url,
            HeaderMap::new(),
            Some(&revoke_body(jti_or_token)),
        )
        .await?;
    let mut buf = Vec::new();
    if !emit(&mut buf, opts.output, &answer)? {
        write_json(&mut buf, &answer)?;
    }
    write_stdout(&buf)
}

/// `kubeforge credentials revoke CLUSTER`: prints the new credential
/// generation and the operation that binds it.
pub async fn run_credentials_revoke(opts: &ClientOpts, cluster: &str) -> anyhow::Result<()> {
    let api = Api::new(opts)?;
    let url = api.url(&["clusters", cluster, "credentials", "revoke"])?;
    let answer: CredentialsRevoked = api
        .call(Method::POST, url, HeaderMap::new(), NO_BODY)
        .await?;
    let mut buf = Vec::new();
    if emit(&mut buf, opts.output, &answer)? {
        return write_stdout(&buf);
    }
    writeln!(
        buf,
        "credential generation {}; operation {} {}",
        answer.credential_generation,
        text(&answer.operation.id.to_string()),
        text(&answer.operation.state)
    )?;
    write_stdout(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_sent_as_token_and_anything_else_as_jti() {
        let b = revoke_body(" aaa.bbb.ccc\n");
        assert_eq!((b.jti, b.token.as_deref()), (None, Some("aaa.bbb.ccc")));
        let b = revoke_body("0123abcd");
        assert_eq!((b.jti.as_deref(), b.token), (Some("0123abcd"), None));
    }
}
