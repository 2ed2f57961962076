//! Every 401 says why: each reason a request is not authenticated (no
//! header, a malformed header or token, expired, not yet valid, a bad
//! signature, an unknown key id, revoked, rejected claims) answers a
//! problem document with its own `type` and title, the stable code
//! `unauthenticated`, a `WWW-Authenticate` challenge, and a detail that
//! never holds the token or any part of it.

use axum::http::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kubeforge::auth::{Claims, AUDIENCE, ISSUER};
use kubeforge::context::Role;
use kubeforge_tests::{Resp, TestApp};
use serde_json::json;
use std::collections::BTreeSet;

/// The signing key of [`TestApp`].
const KEY: [u8; 32] = [7u8; 32];

/// Checks the 401 for `reason` and that nothing of `token` is echoed.
#[track_caller]
fn assert_refused(r: &Resp, slug: &str, title: &str, token: Option<&str>) {
    assert_eq!(r.status.as_u16(), 401, "{slug}: {}", r.text);
    let ct = r.headers.get("content-type").unwrap().to_str().unwrap();
    assert_eq!(ct, "application/problem+json", "{slug}");
    assert_eq!(r.body["code"], "unauthenticated", "{}", r.text);
    assert_eq!(r.body["status"], 401);
    assert_eq!(
        r.body["type"],
        format!("https://kubeforge.dev/problems/unauthenticated/{slug}"),
        "{}",
        r.text
    );
    assert_eq!(r.body["title"], title, "{}", r.text);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.len() > 20, "a detail that explains: {detail}");
    let challenge = r.headers.get("www-authenticate").unwrap().to_str().unwrap();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert_eq!(
        challenge.contains("invalid_token"),
        slug != "missing-header",
        "{challenge}"
    );
    if let Some(token) = token {
        for part in token.split('.').filter(|p| p.len() >= 8) {
            assert!(
                !r.text.contains(part),
                "{slug}: body echoes the token: {}",
                r.text
            );
        }
    }
}

fn claims(now: i64) -> Claims {
    Claims {
        sub: "tester".into(),
        tenant: "acme".into(),
        role: "admin".into(),
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        exp: now + 600,
        iat: now,
        nbf: Some(now),
        jti: Some("0123456789abcdef".into()),
    }
}

/// Signs `claims` with `key` under `alg`, naming key id `kid`.
fn sign(key: &[u8], alg: Algorithm, kid: Option<&str>, claims: &Claims) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key)).unwrap()
}

#[tokio::test]
async fn each_reason_for_a_401_has_its_own_type_title_and_detail() {
    let app = TestApp::new().await;
    let kid = kubeforge::auth::key_id(&KEY);
    let now = chrono::Utc::now().timestamp();
    let get = |token: Option<String>, headers: Vec<(&'static str, String)>| {
        let app = &app;
        async move {
            let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            app.call_raw(Method::GET, "/v1/clusters", token.as_deref(), None, &hs)
                .await
        }
    };
    let good = app.token("acme", Role::Admin);
    assert_eq!(get(Some(good.clone()), vec![]).await.status, 200);

    let mut seen = BTreeSet::new();
    let mut check = |r: Resp, slug: &str, title: &str, token: Option<&str>| {
        assert_refused(&r, slug, title, token);
        seen.insert(r.body["type"].as_str().unwrap().to_string());
    };

    // No Authorization header at all.
    check(
        get(None, vec![]).await,
        "missing-header",
        "No bearer token",
        None,
    );

    // A header of another scheme, and a bearer value that is not a JWT.
    let basic = vec![("authorization", "Basic YWxpY2U6c2VjcmV0".to_string())];
    check(
        get(None, basic).await,
        "malformed-token",
        "Malformed token",
        None,
    );
    for junk in ["not-a-token", "abc.def.ghi", "eyJhbGciOiJub25lIn0.e30."] {
        let r = get(Some(junk.to_string()), vec![]).await;
        check(r, "malformed-token", "Malformed token", Some(junk));
    }

    // Expired (beyond the leeway) and not yet valid.
    let mut c = claims(now - 3600);
    c.exp = now - 60;
    let expired = sign(&KEY, Algorithm::HS256, Some(&kid), &c);
    let r = get(Some(expired.clone()), vec![]).await;
    check(r, "token-expired", "Token expired", Some(&expired));
    let mut c = claims(now);
    c.nbf = Some(now + 120);
    let later = sign(&KEY, Algorithm::HS256, Some(&kid), &c);
    let r = get(Some(later.clone()), vec![]).await;
    check(
        r,
        "token-not-yet-valid",
        "Token not yet valid",
        Some(&later),
    );

    // Our key id, another key's signature.
    let forged = sign(&[9u8; 32], Algorithm::HS256, Some(&kid), &claims(now));
    let r = get(Some(forged.clone()), vec![]).await;
    check(r, "bad-signature", "Token signature invalid", Some(&forged));

    // Another key's id, and no key id.
    let other_kid = kubeforge::auth::key_id(&[9u8; 32]);
    let foreign = sign(&[9u8; 32], Algorithm::HS256, Some(&other_kid), &claims(now));
    let r = get(Some(foreign.clone()), vec![]).await;
    check(r, "unknown-key-id", "Unknown signing key", Some(&foreign));
    let no_kid = sign(&KEY, Algorithm::HS256, None, &claims(now));
    let r = get(Some(no_kid.clone()), vec![]).await;
    check(r, "unknown-key-id", "Unknown signing key", Some(&no_kid));

    // Signed and current, but for another audience or algorithm.
    let mut c = claims(now);
    c.aud = "someone-else".into();
    let wrong_aud = sign(&KEY, Algorithm::HS256, Some(&kid), &c);
    let r = get(Some(wrong_aud.clone()), vec![]).await;
    check(
        r,
        "rejected-claims",
        "Token claims rejected",
        Some(&wrong_aud),
    );
    let hs512 = sign(&KEY, Algorithm::HS512, Some(&kid), &claims(now));
    let r = get(Some(hs512.clone()), vec![]).await;
    check(r, "rejected-claims", "Token claims rejected", Some(&hs512));

    // Revoked: the tenant admin revokes its own token.
    let viewer = app.token("acme", Role::Viewer);
    let r = app
        .call(
            Method::POST,
            "/v1/tokens/revoke",
            Some(&good),
            Some(json!({"token": viewer})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = get(Some(viewer.clone()), vec![]).await;
    check(r, "token-revoked", "Token revoked", Some(&viewer));

    assert_eq!(seen.len(), 8, "eight distinct types: {seen:?}");
}
