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
