//! Everything the service needs to reach machines and bootstrap them: the
//! SSH executor, the service's client key, and the Kubernetes binaries the
//! machines will verify. Built once by the server's wiring; absent when
//! the service was started without machine access.

use super::{ClientKey, SshExecutor};
use crate::artifacts::Artifacts;

/// What the service needs to reach machines and bootstrap them.
pub struct MachineAccess {
    pub ssh: SshExecutor,
    pub client_key: ClientKey,
    pub artifacts: Artifacts,
}
