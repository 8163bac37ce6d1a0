//! Sessions (ORCH-5010..ORCH-5016): short-lived, in memory, keyed by
//! namespace and id; a TTL, a turn limit, affinity to the last good replica,
//! and a per-replica KV budget enforced by evicting the least recently used.

use std::collections::HashMap;

use contracts::SessionInfo;
use contracts::config::SessionConfig;

use crate::error::OrchError;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub tenant: String,
    pub scope: String,
    pub session_id: String,
}

#[derive(Debug, Clone, PartialEq)]
struct Session {
    turns: u32,
    last_used_ms: u64,
    replica_id: Option<String>,
    kv_tokens: u64,
    warm: bool,
}

#[derive(Debug)]
pub struct Sessions {
    config: SessionConfig,
    table: HashMap<SessionKey, Session>,
}

impl Sessions {
    pub fn new(config: SessionConfig) -> Self {
        Self {
            config,
            table: HashMap::new(),
        }
    }

    fn expired(&self, session: &Session, now_ms: u64) -> bool {
        now_ms.saturating_sub(session.last_used_ms) > self.config.ttl_ms
    }

    fn expired_error(key: &SessionKey) -> OrchError {
        OrchError::not_found(format!("session {:?} (expired)", key.session_id))
    }

    /// Count a new turn, creating the session on its first one. Expired →
    /// `404`, turn limit → `400 INVALID_PARAMS` naming `session_id`.
    pub fn begin_turn(&mut self, key: &SessionKey, now_ms: u64) -> Result<(), OrchError> {
        self.forget_long_expired(now_ms);
        let max_turns = self.config.max_turns;
        let expired = self.table.get(key).is_some_and(|s| self.expired(s, now_ms));
        if expired {
            return Err(Self::expired_error(key));
        }
        let session = self.table.entry(key.clone()).or_insert(Session {
            turns: 0,
            last_used_ms: now_ms,
            replica_id: None,
            kv_tokens: 0,
            warm: false,
        });
        if session.turns >= max_turns {
            return Err(OrchError::invalid(
                "session_id",
                format!(
                    "session {:?} reached its limit of {max_turns} turns; start a new session",
                    key.session_id
                ),
            ));
        }
        session.turns += 1;
        session.last_used_ms = now_ms;
        Ok(())
    }

    /// Undo `begin_turn` when the task was not admitted after all.
    pub fn cancel_turn(&mut self, key: &SessionKey) {
        if let Some(session) = self.table.get_mut(key) {
            session.turns = session.turns.saturating_sub(1);
        }
    }

    /// The replica holding the session's warm KV, if any.
    pub fn warm_replica(&self, key: &SessionKey) -> Option<String> {
        self.table
            .get(key)
            .filter(|s| s.warm)
            .and_then(|s| s.replica_id.clone())
    }

    /// A turn completed on `replica`: it becomes the session's replica and
    /// holds the KV of every token so far; the replica's budget evicts the
    /// least recently used sessions' KV.
    pub fn complete_turn(&mut self, key: &SessionKey, replica: &str, tokens: u64, now_ms: u64) {
        let Some(session) = self.table.get_mut(key) else {
            return;
        };
        let same_replica = session.warm && session.replica_id.as_deref() == Some(replica);
        session.kv_tokens = if same_replica {
            session.kv_tokens + tokens
        } else {
            tokens
        };
        session.replica_id = Some(replica.to_owned());
        session.warm = true;
        session.last_used_ms = now_ms;
        self.enforce_budget(replica, key);
    }

    /// The replica failed: its KV for the session is gone.
    pub fn lose_kv(&mut self, key: &SessionKey) {
        if let Some(session) = self.table.get_mut(key) {
            session.warm = false;
            session.kv_tokens = 0;
        }
    }

    /// Estimated KV bytes the sessions hold on `replica`, and the budget
    /// (ORCH-7109: the `kv_cache_utilization` gauge).
    pub fn kv_usage(&self, replica: &str) -> (u64, u64) {
        let tokens: u64 = (self.table.values())
            .filter(|s| s.warm && s.replica_id.as_deref() == Some(replica))
            .map(|s| s.kv_tokens)
            .sum();
        let budget = self.config.kv_budget_bytes_per_replica;
        (tokens * self.config.kv_bytes_per_token, budget)
    }

    fn enforce_budget(&mut self, replica: &str, keep: &SessionKey) {
        let per_token = self.config.kv_bytes_per_token;
        let budget = self.config.kv_budget_bytes_per_replica;
        loop {
            let mut on_replica: Vec<_> = self
                .table
                .iter()
                .filter(|(_, s)| s.warm && s.replica_id.as_deref() == Some(replica))
                .map(|(k, s)| (k.clone(), s.last_used_ms, s.kv_tokens * per_token))
                .collect();
            let used: u64 = on_replica.iter().map(|(_, _, bytes)| bytes).sum();
            if used <= budget || on_replica.len() <= 1 {
                return;
            }
            on_replica.sort_by_key(|(k, last_used, _)| (k == keep, *last_used));
            let (victim, _, _) = on_replica.remove(0);
            self.lose_kv(&victim);
        }
    }

    pub fn info(&self, key: &SessionKey, now_ms: u64) -> Result<SessionInfo, OrchError> {
        let session = self
            .table
            .get(key)
            .ok_or_else(|| OrchError::not_found(format!("session {:?}", key.session_id)))?;
        if self.expired(session, now_ms) {
            return Err(Self::expired_error(key));
        }
        Ok(SessionInfo {
            session_id: key.session_id.clone(),
            ttl_ms_remaining: (session.last_used_ms + self.config.ttl_ms).saturating_sub(now_ms),
            turns: session.turns,
            kv_bytes: if session.warm {
                session.kv_tokens * self.config.kv_bytes_per_token
            } else {
                0
            },
            kv_warmth: session.warm,
            replica_id: session.replica_id.clone(),
        })
    }

    /// End a session and evict its KV; unknown or expired → `404`.
    pub fn remove(&mut self, key: &SessionKey, now_ms: u64) -> Result<(), OrchError> {
        self.info(key, now_ms)?;
        self.table.remove(key);
        Ok(())
    }

    pub fn purge_scope(&mut self, tenant: &str, scope: &str) -> u32 {
        let before = self.table.len();
        self.table
            .retain(|k, _| !(k.tenant == tenant && k.scope == scope));
        (before - self.table.len()) as u32
    }

    /// Expired sessions answer `404` for one more TTL, then their id is free.
    fn forget_long_expired(&mut self, now_ms: u64) {
        let horizon = self.config.ttl_ms.saturating_mul(2);
        self.table
            .retain(|_, s| now_ms.saturating_sub(s.last_used_ms) <= horizon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::ErrorCode;

    fn key(id: &str) -> SessionKey {
        SessionKey {
            tenant: "t".into(),
            scope: String::new(),
            session_id: id.into(),
        }
    }

    // covers: ORCH-5016
    #[test]
    fn the_kv_budget_evicts_the_least_recently_used_session() {
        let mut sessions = Sessions::new(SessionConfig {
            kv_bytes_per_token: 1,
            kv_budget_bytes_per_replica: 100,
            ..SessionConfig::default()
        });
        for (n, id) in ["a", "b", "c"].into_iter().enumerate() {
            sessions.begin_turn(&key(id), n as u64).unwrap();
            sessions.complete_turn(&key(id), "r0", 40, n as u64);
        }
        assert!(
            !sessions.info(&key("a"), 3).unwrap().kv_warmth,
            "oldest evicted"
        );
        assert!(sessions.info(&key("b"), 3).unwrap().kv_warmth);
        assert_eq!(sessions.info(&key("c"), 3).unwrap().kv_bytes, 40);
    }

    // covers: ORCH-5015, ORCH-5016
    #[test]
    fn warmth_and_kv_follow_each_turn_and_replica() {
        let mut sessions = Sessions::new(SessionConfig {
            kv_bytes_per_token: 3,
            kv_budget_bytes_per_replica: 200,
            ..SessionConfig::default()
        });
        let a = key("a");
        sessions.begin_turn(&a, 0).unwrap();
        assert_eq!(
            sessions.warm_replica(&a),
            None,
            "no KV before the first turn ends"
        );
        sessions.complete_turn(&a, "r0", 10, 1);
        assert_eq!(sessions.warm_replica(&a).as_deref(), Some("r0"));
        // The same replica keeps the KV and adds the new turn's tokens.
        sessions.begin_turn(&a, 2).unwrap();
        sessions.complete_turn(&a, "r0", 5, 3);
        assert_eq!(sessions.info(&a, 3).unwrap().kv_bytes, 45);
        assert_eq!(sessions.kv_usage("r0"), (45, 200));
        assert_eq!(sessions.kv_usage("r1"), (0, 200));
        // Another replica starts over from the turn's own tokens.
        sessions.begin_turn(&a, 4).unwrap();
        sessions.complete_turn(&a, "r1", 7, 5);
        assert_eq!(sessions.info(&a, 5).unwrap().kv_bytes, 21);
        assert_eq!(
            (sessions.kv_usage("r0").0, sessions.kv_usage("r1").0),
            (0, 21)
        );
        // A session on another replica never counts against r1's budget.
        let b = key("b");
        sessions.begin_turn(&b, 6).unwrap();
        sessions.complete_turn(&b, "r0", 60, 6);
        assert!(
            sessions.info(&a, 6).unwrap().kv_warmth,
            "r0's 180 bytes are not r1's"
        );
        assert_eq!(sessions.kv_usage("r0").0, 180);
        // The replica failed: the KV is gone, and so is the affinity.
        sessions.lose_kv(&a);
        assert_eq!(sessions.warm_replica(&a), None);
        assert_eq!(sessions.info(&a, 7).unwrap().kv_bytes, 0);
        // Back on a replica whose KV was lost, the turn's tokens are all it holds.
        sessions.begin_turn(&a, 8).unwrap();
        sessions.complete_turn(&a, "r1", 4, 9);
        assert_eq!(sessions.info(&a, 9).unwrap().kv_bytes, 12);
        // 30 more bytes on r0 pass its budget (180 + 30 > 200): the least recently
        // used session there, b, loses its KV; the newcomer keeps it.
        let c = key("c");
        sessions.begin_turn(&c, 10).unwrap();
        sessions.complete_turn(&c, "r0", 10, 10);
        assert!(!sessions.info(&b, 10).unwrap().kv_warmth);
        assert_eq!(sessions.kv_usage("r0").0, 30);
    }

    // covers: ORCH-5011, ORCH-5012
    #[test]
    fn a_turn_not_admitted_is_not_counted_and_the_ttl_is_inclusive() {
        let mut sessions = Sessions::new(SessionConfig {
            ttl_ms: 100,
            max_turns: 1,
            ..SessionConfig::default()
        });
        let s = key("s");
        sessions.begin_turn(&s, 0).unwrap();
        sessions.cancel_turn(&s);
        assert_eq!(sessions.info(&s, 0).unwrap().turns, 0);
        sessions.begin_turn(&s, 0).unwrap();
        assert_eq!(sessions.info(&s, 30).unwrap().ttl_ms_remaining, 70);
        // Exactly one TTL after the last use the session is still alive.
        assert_eq!(sessions.info(&s, 100).unwrap().ttl_ms_remaining, 0);
        assert_eq!(
            sessions.info(&s, 101).unwrap_err().code,
            ErrorCode::NotFound
        );
        // Expired ids answer 404 for one more TTL, then they are free again.
        assert_eq!(
            sessions.begin_turn(&s, 200).unwrap_err().code,
            ErrorCode::NotFound
        );
        sessions.begin_turn(&s, 201).unwrap();
        assert_eq!(sessions.info(&s, 201).unwrap().turns, 1);
    }

    // covers: ORCH-5014
    #[test]
    fn ending_a_session_forgets_it_and_an_unknown_one_is_not_found() {
        let mut sessions = Sessions::new(SessionConfig::default());
        let s = key("s");
        sessions.begin_turn(&s, 0).unwrap();
        sessions.complete_turn(&s, "r0", 10, 0);
        sessions.remove(&s, 1).unwrap();
        assert_eq!(sessions.info(&s, 1).unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(sessions.kv_usage("r0").0, 0, "its KV is evicted");
        assert_eq!(
            sessions.remove(&s, 1).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            sessions.remove(&key("never"), 1).unwrap_err().code,
            ErrorCode::NotFound
        );
    }

    // covers: ORCH-6013
    #[test]
    fn purging_a_scope_ends_only_that_tenants_sessions_in_it() {
        let mut sessions = Sessions::new(SessionConfig::default());
        let at = |tenant: &str, scope: &str, id: &str| SessionKey {
            tenant: tenant.into(),
            scope: scope.into(),
            session_id: id.into(),
        };
        for k in [
            at("t", "a", "1"),
            at("t", "a", "2"),
            at("t", "b", "1"),
            at("u", "a", "1"),
        ] {
            sessions.begin_turn(&k, 0).unwrap();
        }
        assert_eq!(sessions.purge_scope("t", "a"), 2);
        assert!(sessions.info(&at("t", "a", "1"), 0).is_err());
        assert!(sessions.info(&at("t", "b", "1"), 0).is_ok());
        assert!(sessions.info(&at("u", "a", "1"), 0).is_ok());
        assert_eq!(sessions.purge_scope("t", "a"), 0);
    }

    // covers: ORCH-5011, ORCH-5012
    #[test]
    fn ttl_and_turn_limit() {
        let mut sessions = Sessions::new(SessionConfig {
            ttl_ms: 100,
            max_turns: 2,
            ..SessionConfig::default()
        });
        sessions.begin_turn(&key("s"), 0).unwrap();
        sessions.begin_turn(&key("s"), 50).unwrap();
        let limit = sessions.begin_turn(&key("s"), 60).unwrap_err();
        assert_eq!(limit.code, ErrorCode::InvalidParams);
        assert!(limit.message.starts_with("session_id:"));
        let expired = sessions.info(&key("s"), 200).unwrap_err();
        assert_eq!(expired.code, ErrorCode::NotFound);
    }
}
