//! Setting standard conditions without resetting their transition times.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kvmotion_api::ConditionType;

/// The condition of `type_`, if set.
pub fn get(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

/// Sets condition `type_` in `conditions`. The transition time moves only
/// when the status (True/False) changes, as Kubernetes conventions require.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: ConditionType,
    status: bool,
    reason: &str,
    message: String,
    generation: i64,
    now: Time,
) {
    set_named(
        conditions,
        type_.as_str(),
        status,
        reason,
        message,
        generation,
        now,
    )
}

/// [`set`] for a condition type of another kind (an evacuation's).
pub fn set_named(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: i64,
    now: Time,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let existing = conditions.iter_mut().find(|c| c.type_ == type_);
    match existing {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status;
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = Some(generation);
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message,
            observed_generation: Some(generation),
            last_transition_time: now,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmotion_api::ConditionReason;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut c = Vec::new();
        let accepted = ConditionType::Accepted;
        set(
            &mut c,
            accepted,
            true,
            ConditionReason::Accepted.as_str(),
            "a".into(),
            1,
            at(10),
        );
        set(
            &mut c,
            accepted,
            true,
            ConditionReason::Accepted.as_str(),
            "b".into(),
            2,
            at(20),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, at(10));
        assert_eq!(
            (c[0].message.as_str(), c[0].observed_generation),
            ("b", Some(2))
        );
        set(
            &mut c,
            accepted,
            false,
            ConditionReason::InvalidSpec.as_str(),
            "c".into(),
            2,
            at(30),
        );
        assert_eq!(c[0].last_transition_time, at(30));
        assert_eq!(c[0].reason, "InvalidSpec");
    }
}
