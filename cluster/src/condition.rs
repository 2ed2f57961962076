//! Status as conditions, the Cluster API way: each condition is recomputed
//! from observation on every reconcile, and `last_transition` moves only
//! when the status really changes. Time is passed in.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// True, False, or Unknown when observing failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    /// As in JSON: `True`, `False` or `Unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// One observed fact about a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    pub last_transition: DateTime<Utc>,
}

/// Sets (or adds) a condition; keeps `last_transition` if the status is unchanged.
/// Returns true if anything changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            let changed = c.status != status || c.reason != reason || c.message != message;
            if c.status != status {
                c.last_transition = now;
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message.to_string();
            changed
        }
        None => {
            conditions.push(Condition {
                type_: type_.to_string(),
                status,
                reason: reason.to_string(),
                message: message.to_string(),
                last_transition: now,
            });
            true
        }
    }
}

/// A cluster's (or pool's) lifecycle phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Provisioning,
    Ready,
    Degraded,
    Deleting,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Self::Provisioning,
        Self::Ready,
        Self::Degraded,
        Self::Deleting,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Ready => "ready",
            Self::Degraded => "degraded",
            Self::Deleting => "deleting",
            Self::Failed => "failed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn status_text_is_its_json() {
        for s in [
            ConditionStatus::True,
            ConditionStatus::False,
            ConditionStatus::Unknown,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let t1 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 1, 0).unwrap();
        let mut cs = vec![];
        assert!(set_condition(
            &mut cs,
            "Ready",
            ConditionStatus::False,
            "A",
            "a",
            t0
        ));
        assert!(set_condition(
            &mut cs,
            "Ready",
            ConditionStatus::False,
            "B",
            "b",
            t1
        ));
        assert_eq!(cs[0].last_transition, t0);
        assert!(!set_condition(
            &mut cs,
            "Ready",
            ConditionStatus::False,
            "B",
            "b",
            t1
        ));
        assert!(set_condition(
            &mut cs,
            "Ready",
            ConditionStatus::True,
            "Ok",
            "",
            t1
        ));
        assert_eq!(cs[0].last_transition, t1);
        assert_eq!(cs.len(), 1);
    }
}
