//! The operation context: who is acting, for which tenant, and why.
//!
//! Built once per request from the verified token (never from the body)
//! and passed to every app and store call. Store queries take the tenant
//! from here, so a query that forgets tenant scoping does not compile
//! against the store's signatures.
//!
//! # Roles and credentials
//!
//! A token carries one role; each includes everything of the roles below it
//! (least privilege in the manner of EKS access policies and GKE's roles):
//!
//! | role             | may                                                                 |
//! | ---------------- | ------------------------------------------------------------------- |
//! | `viewer`         | read the tenant's objects; mint `viewer` kubeconfigs                |
//! | `editor`         | create, change and delete clusters and pools (deletion included), autoscaler credentials; mint `editor` kubeconfigs |
//! | `admin`          | mint `admin` (cluster-admin) kubeconfigs; revoke a cluster's kubeconfigs (`credentials/revoke`); revoke the tenant's API tokens |
//! | `platform-admin` | the platform: hosts, quotas; revoke any API token by `jti`          |
//!
//! What a kubeconfig role may do inside the cluster is in
//! `kubeforge_cluster::credentials`. A refusal is 403 `forbidden` naming
//! the role that was needed ([`OpContext::authorize`]).

use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

use crate::error::Error;
use kubeforge_cluster::credentials::KubeconfigRole;

/// A tenant's role, lowest to highest. `platform-admin` also manages the
/// platform (hosts, quotas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
    PlatformAdmin,
}

impl Role {
    pub fn parse(value: &str) -> Option<Role> {
        match value {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "admin" => Some(Role::Admin),
            "platform-admin" => Some(Role::PlatformAdmin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
            Role::PlatformAdmin => "platform-admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read the tenant's resources.
    Read,
    /// Create, change or delete the tenant's resources.
    Write,
    /// Take the tenant's credentials back: a cluster's kubeconfigs, API
    /// tokens.
    Administer,
    /// Mint a kubeconfig of this role.
    Kubeconfig(KubeconfigRole),
    /// Platform-wide administration.
    Platform,
}

impl Action {
    /// The least role that may do this.
    pub fn needs(self) -> Role {
        match self {
            Action::Read | Action::Kubeconfig(KubeconfigRole::Viewer) => Role::Viewer,
            Action::Write | Action::Kubeconfig(KubeconfigRole::Editor) => Role::Editor,
            Action::Administer | Action::Kubeconfig(KubeconfigRole::Admin) => Role::Admin,
            Action::Platform => Role::PlatformAdmin,
        }
    }

    fn describe(self) -> String {
        match self {
            Action::Read => "read".into(),
            Action::Write => "change resources".into(),
            Action::Administer => "revoke credentials".into(),
            Action::Kubeconfig(r) => format!("mint {r} kubeconfigs"),
            Action::Platform => "administer the platform".into(),
        }
    }
}

/// The caller of one app or store call.
#[derive(Debug, Clone)]
pub struct OpContext {
    pub tenant: String,
    pub subject: String,
    pub role: Role,
    pub request_id: String,
}

impl OpContext {
    /// Ok when the caller's role may do `action`; else 403 naming the
    /// role that may.
    pub fn authorize(&self, action: Action) -> Result<(), Error> {
        let needed = action.needs();
        if self.role >= needed {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "role {} may not {}: that needs role {needed}",
                self.role,
                action.describe()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(role: Role) -> OpContext {
        OpContext {
            tenant: "acme".into(),
            subject: "alice".into(),
            role,
            request_id: String::new(),
        }
    }

    #[test]
    fn each_role_may_exactly_what_the_model_says() {
        use KubeconfigRole as K;
        let actions = [
            Action::Read,
            Action::Kubeconfig(K::Viewer),
            Action::Write,
            Action::Kubeconfig(K::Editor),
            Action::Administer,
            Action::Kubeconfig(K::Admin),
            Action::Platform,
        ];
        let allowed = |role| {
            actions
                .iter()
                .filter(|a| ctx(role).authorize(**a).is_ok())
                .count()
        };
        assert_eq!(allowed(Role::Viewer), 2);
        assert_eq!(allowed(Role::Editor), 4);
        assert_eq!(allowed(Role::Admin), 6);
        assert_eq!(allowed(Role::PlatformAdmin), 7);
        let err = ctx(Role::Editor)
            .authorize(Action::Kubeconfig(K::Admin))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "forbidden: role editor may not mint admin kubeconfigs: that needs role admin"
        );
    }
}
