//! The list cursor (ORCH-1013): opaque to clients, bound to the listing it continues.
//!
//! A cursor names the last task of a page by its id (which the caller has already
//! seen) and carries a tag of the listing — tenant, scope and state filter — so it
//! reveals nothing about other namespaces (the store's global sequence stays inside)
//! and a cursor from another listing, or one the server did not issue, is refused
//! naming `cursor`. Pure: the caller resolves the task id to its position.

use contracts::TaskState;
use sha2::{Digest, Sha256};

use crate::error::OrchError;

const PREFIX: &str = "c1.";

/// What a cursor is bound to.
pub struct Listing<'a> {
    pub tenant: &'a str,
    pub scope: &'a str,
    pub state: Option<TaskState>,
}

fn tag(listing: &Listing<'_>, task_id: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [
        listing.tenant,
        listing.scope,
        listing.state.map_or("", TaskState::as_str),
        task_id,
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// The cursor that continues `listing` after the task `task_id`.
pub fn encode(listing: &Listing<'_>, task_id: &str) -> String {
    format!("{PREFIX}{task_id}.{}", tag(listing, task_id))
}

/// The task id a cursor continues after, if it was issued for this `listing`.
pub fn decode(listing: &Listing<'_>, cursor: &str) -> Result<String, OrchError> {
    let malformed = || {
        OrchError::invalid(
            "cursor",
            "is not a cursor this server issued; pass `next_cursor` back unchanged",
        )
    };
    let rest = cursor.strip_prefix(PREFIX).ok_or_else(malformed)?;
    let (task_id, given) = rest.rsplit_once('.').ok_or_else(malformed)?;
    if !contracts::limits::is_id(task_id) || given.len() != 16 {
        return Err(malformed());
    }
    if tag(listing, task_id) != given {
        return Err(OrchError::invalid(
            "cursor",
            "belongs to another listing (another scope or state filter); list again without it",
        ));
    }
    Ok(task_id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(scope: &str, state: Option<TaskState>) -> Listing<'_> {
        Listing {
            tenant: "t",
            scope,
            state,
        }
    }

    // covers: ORCH-1013
    #[test]
    fn a_cursor_continues_only_its_own_listing() {
        let a = listing("a", None);
        let cursor = encode(&a, "task.7");
        assert_eq!(decode(&a, &cursor).unwrap(), "task.7");
        let other_scope = decode(&listing("b", None), &cursor).unwrap_err();
        assert!(
            other_scope
                .message
                .starts_with("cursor: belongs to another listing")
        );
        let other_state = decode(&listing("a", Some(TaskState::Queued)), &cursor).unwrap_err();
        assert!(other_state.message.starts_with("cursor: belongs"));
        for bad in [
            "",
            "42",
            "c1.",
            "c1.task.7",
            "c1..0123456789abcdef",
            "c2.task.7.00",
        ] {
            let err = decode(&a, bad).unwrap_err();
            assert!(
                err.message.starts_with("cursor: is not a cursor"),
                "{bad}: {err:?}"
            );
        }
    }
}
