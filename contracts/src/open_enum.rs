//! An enumerated response field that a client reads without failing on a value
//! it does not know (ORCH-9015): a newer server may add an error code, a task
//! state or a finish reason, and an older `orchctl` keeps working, showing the
//! value as it came. So adding a value to a response enum is a compatible change.
//!
//! On the wire and in the documents it is exactly `T`: the fields using it
//! carry `#[schema(value_type = T)]` and `#[schemars(with = "T")]`.

use std::fmt;

use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OpenEnum<T> {
    Known(T),
    /// A value this build does not know, kept verbatim.
    Unknown(String),
}

impl<T: Copy> OpenEnum<T> {
    /// The value, when this build knows it.
    pub fn known(&self) -> Option<T> {
        match self {
            Self::Known(value) => Some(*value),
            Self::Unknown(_) => None,
        }
    }
}

impl<T> From<T> for OpenEnum<T> {
    fn from(value: T) -> Self {
        Self::Known(value)
    }
}

impl<T: PartialEq> PartialEq<T> for OpenEnum<T> {
    fn eq(&self, other: &T) -> bool {
        matches!(self, Self::Known(value) if value == other)
    }
}

impl<T: Serialize> Serialize for OpenEnum<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Known(value) => value.serialize(serializer),
            Self::Unknown(text) => serializer.serialize_str(text),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for OpenEnum<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let known: Result<T, serde::de::value::Error> =
            T::deserialize(text.as_str().into_deserializer());
        Ok(known.map_or(Self::Unknown(text), Self::Known))
    }
}

/// The wire spelling, known or not.
impl<T: Serialize> fmt::Display for OpenEnum<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(text)) => f.write_str(&text),
            _ => f.write_str("?"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorCode, TaskState};

    // covers: ORCH-9015
    #[test]
    fn an_unknown_value_is_kept_and_a_known_one_is_itself() {
        let known: OpenEnum<TaskState> = serde_json::from_str("\"running\"").unwrap();
        assert_eq!(known, TaskState::Running);
        assert_eq!(known.known(), Some(TaskState::Running));
        let unknown: OpenEnum<ErrorCode> = serde_json::from_str("\"QUOTA_EXCEEDED\"").unwrap();
        assert_eq!(unknown, OpenEnum::Unknown("QUOTA_EXCEEDED".into()));
        assert_eq!(unknown.known(), None);
        assert_eq!(unknown.to_string(), "QUOTA_EXCEEDED");
        assert_eq!(
            serde_json::to_string(&unknown).unwrap(),
            "\"QUOTA_EXCEEDED\""
        );
        assert_eq!(serde_json::to_string(&known).unwrap(), "\"running\"");
        // Not a string at all is still an error: that is a type change, not a new value.
        assert!(serde_json::from_str::<OpenEnum<TaskState>>("3").is_err());
    }
}
