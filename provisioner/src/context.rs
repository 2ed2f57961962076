//! The operation context: who is acting, for which tenant, and why.
//!
//! Built once per request from the verified token (never from the body)
//! and passed to every app and store call. Store queries take the tenant
//! from here, so a query that forgets tenant scoping does not compile
//! against the store's signatures.

use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

use crate::error::Error;

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
    /// Platform-wide administration.
    Platform,
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
    pub fn authorize(&self, action: Action) -> Result<(), Error> {
        let needed = match action {
            Action::Read => Role::Viewer,
            Action::Write => Role::Editor,
            Action::Platform => Role::PlatformAdmin,
        };
        if self.role >= needed {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "role {} may not {}",
                self.role,
                match action {
                    Action::Read => "read",
                    Action::Write => "change resources",
                    Action::Platform => "administer the platform",
                }
            )))
        }
    }
}
