//! Tenants: API keys (stored as SHA-256 hashes) to tenant, roles, per-tenant
//! token-bucket rate limits (ORCH-3010) and concurrency quotas (ORCH-3011).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use contracts::config::{RateLimitConfig, Role, TenantConfig};
use sha2::{Digest, Sha256};

/// The tenant of every call when no keys are configured.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug)]
pub struct Tenant {
    pub id: String,
    pub role: Role,
    pub max_concurrent: Option<u32>,
    bucket: Option<Mutex<TokenBucket>>,
    running: AtomicU32,
}

impl Tenant {
    fn new(config: &TenantConfig) -> Self {
        Self {
            id: config.id.clone(),
            role: config.role,
            max_concurrent: config.max_concurrent,
            bucket: config
                .rate_limit
                .as_ref()
                .map(|r| Mutex::new(TokenBucket::new(r))),
            running: AtomicU32::new(0),
        }
    }

    fn open(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            role: Role::Admin,
            max_concurrent: None,
            bucket: None,
            running: AtomicU32::new(0),
        }
    }

    /// Take one admission from the bucket, or the ms until one is available.
    pub fn admit(&self, now_ms: u64) -> Result<(), u64> {
        match &self.bucket {
            Some(bucket) => bucket.lock().unwrap().take(now_ms),
            None => Ok(()),
        }
    }

    /// Whether another of this tenant's tasks may start now.
    pub fn may_start(&self) -> bool {
        self.max_concurrent
            .is_none_or(|max| self.running.load(Ordering::SeqCst) < max)
    }

    pub fn started(&self) {
        self.running.fetch_add(1, Ordering::SeqCst);
    }

    pub fn stopped(&self) {
        let _ = self
            .running
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

/// A token bucket: `burst` admissions at once, refilled at `per_second`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    capacity: f64,
    per_ms: f64,
    tokens: f64,
    last_ms: Option<u64>,
}

impl TokenBucket {
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            capacity: f64::from(config.burst.max(1)),
            per_ms: config.per_second.max(0.001) / 1000.0,
            tokens: f64::from(config.burst.max(1)),
            last_ms: None,
        }
    }

    pub fn take(&mut self, now_ms: u64) -> Result<(), u64> {
        if let Some(last) = self.last_ms {
            let elapsed = now_ms.saturating_sub(last) as f64;
            self.tokens = (self.tokens + elapsed * self.per_ms).min(self.capacity);
        }
        self.last_ms = Some(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(((1.0 - self.tokens) / self.per_ms).ceil() as u64)
    }
}

pub fn key_hash(api_key: &str) -> String {
    hex::encode(Sha256::digest(api_key.as_bytes()))
}

/// Who may call, keyed by the hash of their API key.
#[derive(Debug)]
pub struct Tenants {
    by_key_hash: HashMap<String, std::sync::Arc<Tenant>>,
    by_id: HashMap<String, std::sync::Arc<Tenant>>,
}

pub enum Auth {
    Tenant(std::sync::Arc<Tenant>),
    Missing,
    Invalid,
}

impl Tenants {
    pub fn new(configs: &[TenantConfig]) -> Self {
        let mut by_key_hash = HashMap::new();
        let mut by_id = HashMap::new();
        for config in configs {
            let tenant = std::sync::Arc::new(Tenant::new(config));
            for hash in &config.api_key_sha256 {
                by_key_hash.insert(hash.to_ascii_lowercase(), std::sync::Arc::clone(&tenant));
            }
            by_id.insert(config.id.clone(), tenant);
        }
        if configs.is_empty() {
            by_id.insert(
                DEFAULT_TENANT.into(),
                std::sync::Arc::new(Tenant::open(DEFAULT_TENANT)),
            );
        }
        Self { by_key_hash, by_id }
    }

    /// Whether calls need a key at all.
    pub fn keys_required(&self) -> bool {
        !self.by_key_hash.is_empty()
    }

    pub fn authenticate(&self, bearer: Option<&str>) -> Auth {
        if !self.keys_required() {
            return Auth::Tenant(std::sync::Arc::clone(&self.by_id[DEFAULT_TENANT]));
        }
        match bearer {
            None => Auth::Missing,
            Some(key) => match self.by_key_hash.get(&key_hash(key)) {
                Some(tenant) => Auth::Tenant(std::sync::Arc::clone(tenant)),
                None => Auth::Invalid,
            },
        }
    }

    pub fn get(&self, id: &str) -> Option<&std::sync::Arc<Tenant>> {
        self.by_id.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers: ORCH-3010
    #[test]
    fn the_bucket_allows_a_burst_then_refills_at_its_rate() {
        let mut bucket = TokenBucket::new(&RateLimitConfig {
            per_second: 10.0,
            burst: 2,
        });
        assert!(bucket.take(0).is_ok());
        assert!(bucket.take(0).is_ok());
        assert_eq!(bucket.take(0), Err(100));
        assert_eq!(bucket.take(50), Err(50));
        assert!(bucket.take(100).is_ok());
        // A long idle refills to the burst, never past it.
        assert!(bucket.take(10_000).is_ok());
        assert!(bucket.take(10_000).is_ok());
        assert_eq!(bucket.take(10_000), Err(100));
        // A burst of 0 still admits one.
        let mut one = TokenBucket::new(&RateLimitConfig {
            per_second: 1.0,
            burst: 0,
        });
        assert!(one.take(0).is_ok());
        assert_eq!(one.take(0), Err(1_000));
    }

    fn tenant(id: &str, key: &str, max_concurrent: Option<u32>) -> TenantConfig {
        TenantConfig {
            id: id.into(),
            api_key_sha256: vec![key_hash(key).to_ascii_uppercase()],
            role: Role::Client,
            rate_limit: None,
            max_concurrent,
        }
    }

    // covers: ORCH-6001, ORCH-6002
    #[test]
    fn keys_name_their_tenant_and_no_keys_means_the_open_default() {
        let open = Tenants::new(&[]);
        assert!(!open.keys_required());
        let Auth::Tenant(default) = open.authenticate(None) else {
            panic!("no keys configured: every call is the default tenant")
        };
        assert_eq!(
            (default.id.as_str(), default.role),
            (DEFAULT_TENANT, Role::Admin)
        );

        assert_eq!(
            key_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let tenants = Tenants::new(&[tenant("a", "key-a", None), tenant("b", "key-b", None)]);
        assert!(tenants.keys_required());
        assert!(matches!(tenants.authenticate(None), Auth::Missing));
        assert!(matches!(tenants.authenticate(Some("guess")), Auth::Invalid));
        // Hashes are compared in lowercase whatever the config's case.
        let Auth::Tenant(b) = tenants.authenticate(Some("key-b")) else {
            panic!("key-b is b's")
        };
        assert_eq!(b.id, "b");
        assert!(tenants.get("a").is_some() && tenants.get(DEFAULT_TENANT).is_none());
    }

    // covers: ORCH-3011
    #[test]
    fn the_concurrency_quota_counts_running_tasks() {
        let tenants = Tenants::new(&[tenant("a", "k", Some(2))]);
        let a = tenants.get("a").unwrap();
        assert!(a.may_start());
        a.started();
        assert!(a.may_start());
        a.started();
        assert!(!a.may_start(), "two running, quota two");
        a.stopped();
        assert!(a.may_start());
        a.stopped();
        a.stopped();
        a.started();
        a.started();
        assert!(!a.may_start(), "a stop below zero is not banked");
        assert!(
            Tenants::new(&[tenant("u", "k", None)])
                .get("u")
                .unwrap()
                .may_start()
        );
    }

    // covers: ORCH-3010
    #[test]
    fn a_tenant_with_a_rate_limit_admits_through_its_bucket() {
        let mut limited = tenant("a", "k", None);
        limited.rate_limit = Some(RateLimitConfig {
            per_second: 2.0,
            burst: 1,
        });
        let tenants = Tenants::new(&[limited, tenant("b", "k2", None)]);
        let a = tenants.get("a").unwrap();
        assert_eq!(a.admit(0), Ok(()));
        assert_eq!(a.admit(0), Err(500));
        assert_eq!(a.admit(500), Ok(()));
        let b = tenants.get("b").unwrap();
        assert!(
            (0..100).all(|_| b.admit(0).is_ok()),
            "no limit configured: no limit"
        );
    }
}
