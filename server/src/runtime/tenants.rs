//! Tenants: API keys (stored as SHA-256 hashes) to tenant, roles, per-tenant
//! token-bucket rate limits (ORCH-3010) and concurrency quotas (ORCH-3011).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use contracts::config::{RateLimitConfig, Role, TenantConfig, TokenRateLimitConfig};
use sha2::{Digest, Sha256};

/// The tenant of every call when no keys are configured.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug)]
pub struct Tenant {
    pub id: String,
    /// `id`, shared by the keys of its tasks.
    pub shared_id: std::sync::Arc<str>,
    pub role: Role,
    pub max_concurrent: Option<u32>,
    /// Its share of each queue (ORCH-3015).
    pub weight: u32,
    bucket: Option<Mutex<TokenBucket>>,
    /// Tokens its admissions may cost (ORCH-3017).
    token_bucket: Option<Mutex<TokenBucket>>,
    running: AtomicU32,
}

impl Tenant {
    fn new(config: &TenantConfig) -> Self {
        Self {
            id: config.id.clone(),
            shared_id: config.id.as_str().into(),
            role: config.role,
            max_concurrent: config.max_concurrent,
            weight: config.weight.max(1),
            bucket: config
                .rate_limit
                .as_ref()
                .map(|r| Mutex::new(TokenBucket::new(r))),
            token_bucket: config
                .token_rate_limit
                .as_ref()
                .map(|r| Mutex::new(TokenBucket::of_tokens(r))),
            running: AtomicU32::new(0),
        }
    }

    fn open(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            shared_id: id.into(),
            role: Role::Admin,
            max_concurrent: None,
            weight: 1,
            bucket: None,
            token_bucket: None,
            running: AtomicU32::new(0),
        }
    }

    /// Take one admission from the bucket, or the ms until one is available.
    pub fn admit(&self, now_ms: u64) -> Result<(), u64> {
        match &self.bucket {
            Some(bucket) => bucket.lock().unwrap().take(1.0, now_ms),
            None => Ok(()),
        }
    }

    /// The most tokens its token bucket holds, if it has one (ORCH-3017).
    pub fn token_burst(&self) -> Option<u64> {
        let bucket = self.token_bucket.as_ref()?;
        Some(bucket.lock().unwrap().capacity as u64)
    }

    /// Take an admission's `cost` in tokens from the token bucket
    /// (ORCH-3017), or the ms until it holds them; a cost above
    /// [`Self::token_burst`] is refused before, for good.
    pub fn take_tokens(&self, cost: u64, now_ms: u64) -> Result<(), u64> {
        match &self.token_bucket {
            Some(bucket) => bucket.lock().unwrap().take(cost as f64, now_ms),
            None => Ok(()),
        }
    }

    /// Put back `unused` tokens of an admission's cost (ORCH-3017).
    pub fn give_back_tokens(&self, unused: u64, now_ms: u64) {
        if let Some(bucket) = &self.token_bucket {
            bucket.lock().unwrap().give_back(unused as f64, now_ms);
        }
    }

    /// The tokens its bucket holds now, if it has one.
    pub fn tokens_available(&self, now_ms: u64) -> Option<u64> {
        let bucket = self.token_bucket.as_ref()?;
        let mut bucket = bucket.lock().unwrap();
        bucket.refill(now_ms);
        Some(bucket.tokens.floor() as u64)
    }

    /// Whether another of this tenant's tasks may start now.
    pub fn may_start(&self) -> bool {
        self.max_concurrent
            .is_none_or(|max| self.running.load(Ordering::SeqCst) < max)
    }

    /// Its tasks running now, over every pool.
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::SeqCst)
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

/// A token bucket: `burst` admissions (or tokens) at once, refilled at a
/// steady rate.
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

    /// A bucket of `burst` tokens (default `per_minute`) refilled at
    /// `per_minute` (ORCH-3017).
    pub fn of_tokens(config: &TokenRateLimitConfig) -> Self {
        let capacity = config.burst.unwrap_or(config.per_minute).max(1) as f64;
        Self {
            capacity,
            per_ms: config.per_minute.max(1) as f64 / 60_000.0,
            tokens: capacity,
            last_ms: None,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        if let Some(last) = self.last_ms {
            let elapsed = now_ms.saturating_sub(last) as f64;
            self.tokens = (self.tokens + elapsed * self.per_ms).min(self.capacity);
        }
        self.last_ms = Some(now_ms.max(self.last_ms.unwrap_or(0)));
    }

    /// Take `amount`, or the ms until the bucket will hold it.
    pub fn take(&mut self, amount: f64, now_ms: u64) -> Result<(), u64> {
        self.refill(now_ms);
        if self.tokens >= amount {
            self.tokens -= amount;
            return Ok(());
        }
        Err(((amount - self.tokens) / self.per_ms).ceil() as u64)
    }

    /// Put back what was taken and not used, never past the capacity.
    pub fn give_back(&mut self, amount: f64, now_ms: u64) {
        self.refill(now_ms);
        self.tokens = (self.tokens + amount).min(self.capacity);
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

    /// Every tenant's id.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.by_id.keys().map(String::as_str)
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
        assert!(bucket.take(1.0, 0).is_ok());
        assert!(bucket.take(1.0, 0).is_ok());
        assert_eq!(bucket.take(1.0, 0), Err(100));
        assert_eq!(bucket.take(1.0, 50), Err(50));
        assert!(bucket.take(1.0, 100).is_ok());
        // A long idle refills to the burst, never past it.
        assert!(bucket.take(1.0, 10_000).is_ok());
        assert!(bucket.take(1.0, 10_000).is_ok());
        assert_eq!(bucket.take(1.0, 10_000), Err(100));
        // A burst of 0 still admits one.
        let mut one = TokenBucket::new(&RateLimitConfig {
            per_second: 1.0,
            burst: 0,
        });
        assert!(one.take(1.0, 0).is_ok());
        assert_eq!(one.take(1.0, 0), Err(1_000));
    }

    // covers: ORCH-3017
    #[test]
    fn a_token_bucket_takes_costs_gives_back_the_unused_and_refuses_what_it_never_holds() {
        let mut limited = tenant("a", "k", None);
        limited.token_rate_limit = Some(TokenRateLimitConfig {
            per_minute: 6_000,
            burst: Some(1_000),
        });
        let tenants = Tenants::new(&[limited]);
        let a = tenants.get("a").unwrap();
        assert_eq!(a.take_tokens(600, 0), Ok(()));
        // 400 left; 600 more are there after 200 tokens at 100 per second.
        assert_eq!(a.take_tokens(600, 0), Err(2_000));
        assert_eq!(a.tokens_available(0), Some(400));
        a.give_back_tokens(500, 0);
        assert_eq!(a.tokens_available(0), Some(900));
        a.give_back_tokens(500, 0);
        assert_eq!(a.tokens_available(0), Some(1_000), "never past the burst");
        assert_eq!(a.token_burst(), Some(1_000));
        assert_eq!(a.take_tokens(1_000, 0), Ok(()));
        assert_eq!(a.take_tokens(100, 500), Err(500));
        assert_eq!(a.take_tokens(100, 1_000), Ok(()));
        // The burst defaults to a minute's tokens.
        let mut default_burst = tenant("b", "k2", None);
        default_burst.token_rate_limit = Some(TokenRateLimitConfig {
            per_minute: 120,
            burst: None,
        });
        let tenants = Tenants::new(&[default_burst]);
        let b = tenants.get("b").unwrap();
        assert_eq!(b.token_burst(), Some(120));
        assert_eq!(b.take_tokens(120, 0), Ok(()));
        assert_eq!(b.take_tokens(1, 0), Err(500));
    }

    fn tenant(id: &str, key: &str, max_concurrent: Option<u32>) -> TenantConfig {
        TenantConfig {
            weight: 1,
            token_rate_limit: None,
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
        assert_eq!(a.running(), 2);
        a.stopped();
        assert!(a.may_start());
        assert_eq!(a.running(), 1);
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
