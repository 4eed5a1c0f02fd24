//! The inference API's keys as tenants. A key the registry holds has a name (its tenant),
//! the models it may call (names or globs), and optional limits: requests and rows per
//! second (token buckets with a burst), requests in flight, and a default priority. The keys
//! of the configuration file (and `SWITCHYARD_API_KEY`) admit everything, with no limits.
//!
//! [`ApiKeys`] holds the set in force, swapped whole when the registry's keys change (the
//! control plane's key follower); the request path reads it without a lock. A request's
//! [`Tenant`] travels with it from the key check to the pipeline, which asks it for
//! admission ([`Tenant::admit`]) and records what the request came to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::auth::{Sha256Digest, decode_hex, digest, presented_secret};
use crate::error::{ErrorKind, GatewayError, quoted};
use crate::priority::Priority;
use crate::telemetry::keys::{KeyFigures, Refusal};

/// The most keys the registry's set may hold (revoked ones included).
pub const MAX_KEYS: usize = 10_000;
/// The most model names or globs one key may name.
pub const MAX_MODEL_PATTERNS: usize = 64;
const MAX_RATE: f64 = 1_000_000.0;
/// The slowest rate: a token every 1000 s.
const MIN_RATE: f64 = 0.001;
/// The longest a refusal tells a caller to wait.
const MAX_WAIT: Duration = Duration::from_secs(86_400);
const MAX_BURST: u32 = 1_000_000;
const MAX_IN_FLIGHT: u32 = 100_000;

/// What a key may do, as the registry keeps it (a JSON object) and the management API takes
/// it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// The models it may call: names, or globs with `*` (any run of characters) and `?` (one
    /// character). Empty: every model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    /// Its requests' priority when they name none (Triton's `priority` parameter), and the
    /// highest they may name: 1 is the highest, 10 the lowest; 5 unless set (and then any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10)]
    pub priority: Option<u32>,
}

/// Limits of a key, or of a model for every caller. Each is optional: none set, none holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per second, sustained (a token bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.001, maximum = 1000000.0)]
    pub requests_per_s: Option<f64>,
    /// Requests that may come at once above the rate; the rate (at least 1) unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub requests_burst: Option<u32>,
    /// Rows per second (the first dimension of a request's first input, Triton's batch
    /// dimension), sustained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.001, maximum = 1000000.0)]
    pub rows_per_s: Option<f64>,
    /// Rows that may come at once above the rate; the rate (at least 1) unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub rows_burst: Option<u32>,
    /// Requests being handled at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100000)]
    pub in_flight: Option<u32>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// Every bound in range, and no burst without its rate.
    pub fn check(&self) -> Result<(), String> {
        for (name, rate) in [
            ("requests_per_s", self.requests_per_s),
            ("rows_per_s", self.rows_per_s),
        ] {
            if let Some(rate) = rate
                && !(MIN_RATE..=MAX_RATE).contains(&rate)
            {
                return Err(format!(
                    "limits.{name} must be {MIN_RATE} to {MAX_RATE}, not {rate}"
                ));
            }
        }
        for (name, burst, rate) in [
            ("requests_burst", self.requests_burst, self.requests_per_s),
            ("rows_burst", self.rows_burst, self.rows_per_s),
        ] {
            match (burst, rate) {
                (Some(burst), _) if !(1..=MAX_BURST).contains(&burst) => {
                    return Err(format!(
                        "limits.{name} must be 1 to {MAX_BURST}, not {burst}"
                    ));
                }
                (Some(_), None) => {
                    return Err(format!("limits.{name} needs its rate set too"));
                }
                _ => {}
            }
        }
        if let Some(in_flight) = self.in_flight
            && !(1..=MAX_IN_FLIGHT).contains(&in_flight)
        {
            return Err(format!(
                "limits.in_flight must be 1 to {MAX_IN_FLIGHT}, not {in_flight}"
            ));
        }
        Ok(())
    }
}

impl KeySpec {
    /// The spec in bounds: its globs well formed and few enough, its limits and priority in
    /// range.
    pub fn check(&self) -> Result<(), String> {
        if self.models.len() > MAX_MODEL_PATTERNS {
            return Err(format!(
                "a key names at most {MAX_MODEL_PATTERNS} models or globs, not {}",
                self.models.len()
            ));
        }
        for pattern in &self.models {
            let valid = !pattern.is_empty()
                && pattern.len() <= 128
                && pattern
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '*' | '?'));
            if !valid {
                return Err(format!(
                    "'{}' is not a model name or glob (1 to 128 letters, digits, '_', '-', '.', \
                     '*' or '?')",
                    quoted(pattern)
                ));
            }
        }
        self.limits.check()?;
        if let Some(priority) = self.priority
            && Priority::new(u64::from(priority)).is_none()
        {
            return Err(format!(
                "priority must be 1 (the highest) to {}, not {priority}",
                Priority::LEVELS
            ));
        }
        Ok(())
    }

    /// Whether `model` is one this key may call.
    pub fn allows(&self, model: &str) -> bool {
        // No model's name is longer; the bound keeps a glob's cost on a client's name small.
        self.models.is_empty()
            || (model.len() <= 128 && self.models.iter().any(|pattern| glob_match(pattern, model)))
    }
}

/// `*` matches any run of characters, `?` any one; the rest matches itself. Linear in the
/// name for each star (names and patterns are at most 128 bytes).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.as_bytes(), name.as_bytes());
    let (mut p, mut n) = (0, 0);
    // Where the last star was, and the name position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((star_at, tried)) = star {
            p = star_at + 1;
            n = tried + 1;
            star = Some((star_at, tried + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A token bucket: `rate` tokens a second up to `burst`, each request taking its cost. Its
/// rate and burst are scaled by a share (1 alone; a node's part of the cluster's limit).
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// The share of the rate and burst this gateway holds, as f64 bits.
    share: AtomicU64,
    state: Mutex<BucketState>,
}

struct BucketState {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: Option<u32>) -> TokenBucket {
        let burst = burst.map_or(rate.max(1.0), f64::from);
        TokenBucket {
            rate,
            burst,
            share: AtomicU64::new(1f64.to_bits()),
            state: Mutex::new(BucketState {
                tokens: burst,
                updated: Instant::now(),
            }),
        }
    }

    /// Sets this gateway's part of the limit, in (0, 1].
    pub fn set_share(&self, share: f64) {
        self.share
            .store(share.clamp(1e-6, 1.0).to_bits(), Ordering::Relaxed);
    }

    pub fn share(&self) -> f64 {
        f64::from_bits(self.share.load(Ordering::Relaxed))
    }

    /// Takes `cost` tokens, or says how long until they would be there. A cost above the
    /// burst waits for a full bucket and then takes it, going into debt (of one burst at
    /// most, whatever the cost a client claims), so that a request larger than the burst is
    /// slowed, not refused for ever.
    pub fn take(&self, cost: f64, now: Instant) -> Result<(), Duration> {
        let share = self.share();
        let (rate, burst) = (self.rate * share, (self.burst * share).max(1.0));
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(state.updated).as_secs_f64();
        state.tokens = (state.tokens + elapsed * rate).min(burst);
        state.updated = now.max(state.updated);
        let needed = cost.min(burst);
        if state.tokens >= needed {
            state.tokens = (state.tokens - cost).max(-burst);
            return Ok(());
        }
        let wait = Duration::try_from_secs_f64((needed - state.tokens) / rate).unwrap_or(MAX_WAIT);
        Err(wait.min(MAX_WAIT))
    }
}

/// One key of the registry, as the request path holds it.
pub struct Tenant {
    pub id: Arc<str>,
    /// The tenant: what its requests are counted and captured under.
    pub name: Arc<str>,
    pub spec: KeySpec,
    requests: Option<Arc<TokenBucket>>,
    rows: Option<Arc<TokenBucket>>,
    in_flight: Arc<AtomicU32>,
    /// Set once the key is revoked, rotated away from or changed: a caller that identified
    /// with it before (an open gRPC stream) is refused from then on.
    retired: std::sync::atomic::AtomicBool,
    /// Requests that reached its rate limits, admitted or not: the demand a cluster's nodes
    /// split its rates by.
    offered: AtomicU64,
    pub figures: Arc<KeyFigures>,
}

/// A request's place under an in-flight cap (a key's or a model's), given back when dropped.
pub struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a place under `cap` (none: no cap), or refuses `who` with when to retry.
fn take_slot(
    count: &Arc<AtomicU32>,
    cap: Option<u32>,
    who: std::fmt::Arguments<'_>,
) -> Result<Slot, GatewayError> {
    let held = count.fetch_add(1, Ordering::Relaxed);
    let slot = Slot(count.clone());
    match cap {
        Some(cap) if held >= cap => Err(over_limit(
            format!("{who} has its limit of {cap} requests in flight; retry shortly"),
            Duration::from_secs(1),
        )),
        _ => Ok(slot),
    }
}

/// Takes `cost` from `bucket` (none: no limit), or refuses `who` with when to retry.
fn charge(
    bucket: Option<&TokenBucket>,
    cost: f64,
    what: &str,
    who: std::fmt::Arguments<'_>,
) -> Result<(), GatewayError> {
    let Some(bucket) = bucket else {
        return Ok(());
    };
    bucket.take(cost, Instant::now()).map_err(|wait| {
        over_limit(
            format!(
                "{who} is over its limit of {} {what} per second",
                bucket.rate
            ),
            wait,
        )
    })
}

/// The refusal of a request over a limit: 429 / RESOURCE_EXHAUSTED, with when to retry.
pub fn over_limit(message: String, wait: Duration) -> GatewayError {
    let seconds = u32::try_from(wait.as_secs_f64().ceil() as u64).unwrap_or(u32::MAX);
    GatewayError::new(ErrorKind::RateLimited, message).retry_after(seconds)
}

impl Tenant {
    /// The key `entry` as the request path holds it. What the same key held before
    /// (`before`: rotated, or its spec changed) carries over: its requests in flight, and each
    /// bucket whose limits did not change. A new bucket starts at `share` of its rates.
    fn new(
        entry: &KeyEntry,
        figures: Arc<KeyFigures>,
        before: Option<&Tenant>,
        share: f64,
    ) -> Tenant {
        let limits = entry.spec.limits;
        let bucket = |rate: Option<f64>,
                      burst: Option<u32>,
                      kept: Option<&Arc<TokenBucket>>|
         -> Option<Arc<TokenBucket>> {
            let rate = rate?;
            match kept.filter(|kept| {
                kept.rate == rate && kept.burst == burst.map_or(rate.max(1.0), f64::from)
            }) {
                Some(kept) => Some(kept.clone()),
                None => {
                    let bucket = TokenBucket::new(rate, burst);
                    bucket.set_share(share);
                    Some(Arc::new(bucket))
                }
            }
        };
        Tenant {
            id: entry.id.as_str().into(),
            name: entry.name.as_str().into(),
            spec: entry.spec.clone(),
            requests: bucket(
                limits.requests_per_s,
                limits.requests_burst,
                before.and_then(|before| before.requests.as_ref()),
            ),
            rows: bucket(
                limits.rows_per_s,
                limits.rows_burst,
                before.and_then(|before| before.rows.as_ref()),
            ),
            in_flight: before.map_or_else(Arc::default, |before| before.in_flight.clone()),
            retired: std::sync::atomic::AtomicBool::new(false),
            offered: AtomicU64::new(before.map_or(0, Tenant::offered)),
            figures,
        }
    }

    /// Admits one request for `model`, or refuses it (and counts why): a model the key may
    /// not call is 403; over its in-flight cap or its rate, 429 with when to retry.
    pub fn admit(&self, model: &str) -> Result<Slot, GatewayError> {
        if self.retired.load(Ordering::Relaxed) {
            return Err(GatewayError::new(
                ErrorKind::Unauthenticated,
                format!(
                    "key '{}' was revoked or replaced; send its current secret",
                    self.name
                ),
            ));
        }
        if !self.spec.allows(model) {
            self.figures.refused(Refusal::Model);
            return Err(GatewayError::new(
                ErrorKind::PermissionDenied,
                format!("key '{}' may not call model '{}'", self.name, quoted(model)),
            ));
        }
        let who = format_args!("key '{}'", self.name);
        let slot = take_slot(&self.in_flight, self.spec.limits.in_flight, who)
            .inspect_err(|_| self.figures.refused(Refusal::InFlight))?;
        if self.has_rates() {
            self.offered.fetch_add(1, Ordering::Relaxed);
        }
        charge(self.requests.as_deref(), 1.0, "requests", who)
            .inspect_err(|_| self.figures.refused(Refusal::Rate))?;
        Ok(slot)
    }

    /// Charges a request's rows to the key's rows per second, or refuses it.
    pub fn charge_rows(&self, rows: u64) -> Result<(), GatewayError> {
        let who = format_args!("key '{}'", self.name);
        charge(self.rows.as_deref(), rows.max(1) as f64, "rows", who)
            .inspect_err(|_| self.figures.refused(Refusal::Rows))
    }

    /// The priority its requests take when they name none.
    pub fn priority(&self) -> Priority {
        self.spec
            .priority
            .and_then(|level| Priority::new(u64::from(level)))
            .unwrap_or_default()
    }

    /// The highest priority its requests may ask for: its own, when it sets one (a batch
    /// key cannot jump the queues by naming priority 1).
    pub fn highest_priority(&self) -> Priority {
        self.spec
            .priority
            .and_then(|level| Priority::new(u64::from(level)))
            .unwrap_or(Priority::HIGHEST)
    }

    /// Sets this gateway's share of the key's rates (a cluster's nodes split them).
    pub fn set_share(&self, share: f64) {
        for bucket in [&self.requests, &self.rows].into_iter().flatten() {
            bucket.set_share(share);
        }
    }

    pub fn share(&self) -> f64 {
        self.requests
            .as_ref()
            .or(self.rows.as_ref())
            .map_or(1.0, |bucket| bucket.share())
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests that reached its rate limits so far.
    pub fn offered(&self) -> u64 {
        self.offered.load(Ordering::Relaxed)
    }

    /// Whether the key has a rate its cluster must share.
    pub fn has_rates(&self) -> bool {
        self.requests.is_some() || self.rows.is_some()
    }
}

/// One model's limits for every caller, as the request path holds them.
pub struct ModelLimit {
    pub limits: Limits,
    requests: Option<TokenBucket>,
    rows: Option<TokenBucket>,
    in_flight: Arc<AtomicU32>,
}

/// A request held against its model's in-flight cap, given back when dropped.
pub struct ModelPass {
    _slot: Slot,
    limit: Arc<ModelLimit>,
}

impl ModelPass {
    /// The limits it holds a place under.
    pub fn limit(&self) -> &ModelLimit {
        &self.limit
    }
}

impl ModelLimit {
    fn new(limits: Limits) -> ModelLimit {
        ModelLimit {
            limits,
            requests: limits
                .requests_per_s
                .map(|rate| TokenBucket::new(rate, limits.requests_burst)),
            rows: limits
                .rows_per_s
                .map(|rate| TokenBucket::new(rate, limits.rows_burst)),
            in_flight: Arc::default(),
        }
    }

    /// Admits one request to `model`, or refuses it with when to retry.
    pub fn admit(self: &Arc<Self>, model: &str) -> Result<ModelPass, GatewayError> {
        let who = format_args!("model '{}'", quoted(model));
        let slot = take_slot(&self.in_flight, self.limits.in_flight, who)?;
        charge(self.requests.as_ref(), 1.0, "requests", who)?;
        Ok(ModelPass {
            _slot: slot,
            limit: self.clone(),
        })
    }

    /// Charges a request's rows to the model's rows per second, or refuses it.
    pub fn charge_rows(&self, model: &str, rows: u64) -> Result<(), GatewayError> {
        let who = format_args!("model '{}'", quoted(model));
        charge(self.rows.as_ref(), rows.max(1) as f64, "rows", who)
    }
}

/// Every model's limits, swapped whole when the registry's change; read without a lock.
#[derive(Clone, Default)]
pub struct ModelLimits(Arc<ArcSwap<HashMap<String, Arc<ModelLimit>>>>);

impl ModelLimits {
    /// Puts these limits in force; a model whose limits are unchanged keeps its buckets.
    pub fn replace(&self, entries: Vec<(String, Limits)>) {
        let old = self.0.load_full();
        let next = entries
            .into_iter()
            .map(|(model, limits)| {
                let limit = match old.get(&model).filter(|kept| kept.limits == limits) {
                    Some(kept) => kept.clone(),
                    None => Arc::new(ModelLimit::new(limits)),
                };
                (model, limit)
            })
            .collect();
        self.0.store(Arc::new(next));
    }

    pub fn of(&self, model: &str) -> Option<Arc<ModelLimit>> {
        let limits = self.0.load();
        if limits.is_empty() {
            return None;
        }
        limits.get(model).cloned()
    }
}

/// A key as the registry gives it to [`ApiKeys::replace`].
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub id: String,
    pub name: String,
    /// SHA-256 of the secret, as 64 hex digits.
    pub digest: String,
    pub spec: KeySpec,
    pub revoked: bool,
}

/// The set in force: the registry's live keys by digest, and whether a key is required.
#[derive(Default)]
struct KeySet {
    /// Keys are required once any is configured or the registry ever held one: revoking the
    /// last key must not open the API.
    required: bool,
    by_digest: HashMap<Sha256Digest, Arc<Tenant>>,
}

/// The inference API's keys: the configured ones (no limits) and the registry's tenants.
#[derive(Clone, Default)]
pub struct ApiKeys(Arc<KeysInner>);

#[derive(Default)]
struct KeysInner {
    configured: Vec<Sha256Digest>,
    current: ArcSwap<KeySet>,
    /// Each key name's figures, kept across reloads and rotations.
    figures: Mutex<HashMap<Arc<str>, Arc<KeyFigures>>>,
    /// The live nodes of this gateway's cluster (1 alone): a key's new buckets start at an
    /// equal share of its rates until the heartbeats say how its demand falls.
    nodes: std::sync::atomic::AtomicUsize,
}

/// Who a request's key says it is.
#[derive(Clone)]
pub enum Caller {
    /// No key is required, or a configured key: no limits.
    Unlimited,
    Tenant(Arc<Tenant>),
    /// Another node of this gateway's cluster, forwarding a request it admitted under its
    /// caller's key and the model's limits already.
    Peer,
}

impl Caller {
    pub fn tenant(&self) -> Option<&Arc<Tenant>> {
        match self {
            Caller::Unlimited | Caller::Peer => None,
            Caller::Tenant(tenant) => Some(tenant),
        }
    }
}

impl ApiKeys {
    /// From configured digests (hex) and, if set, the plain key in `SWITCHYARD_API_KEY`.
    pub fn new(configured: &[String]) -> ApiKeys {
        let mut keys: Vec<Sha256Digest> = configured
            .iter()
            .filter_map(|hex| {
                let parsed = decode_hex::<32>(hex);
                if parsed.is_none() {
                    tracing::error!("ignoring an API key whose sha256 is not 64 hex digits");
                }
                parsed
            })
            .collect();
        if let Ok(key) = std::env::var("SWITCHYARD_API_KEY")
            && !key.is_empty()
        {
            keys.push(digest(&key));
        }
        let required = !keys.is_empty();
        ApiKeys(Arc::new(KeysInner {
            configured: keys,
            current: ArcSwap::from_pointee(KeySet {
                required,
                by_digest: HashMap::new(),
            }),
            figures: Mutex::new(HashMap::new()),
            nodes: std::sync::atomic::AtomicUsize::new(1),
        }))
    }

    /// How many live nodes share the keys' rates (the cluster's heartbeat sets it).
    pub fn set_nodes(&self, nodes: usize) {
        self.0.nodes.store(nodes.max(1), Ordering::Relaxed);
    }

    /// Puts the registry's keys in force. A key whose id, secret and spec are unchanged keeps
    /// its buckets and in-flight count; figures are kept by name.
    pub fn replace(&self, entries: &[KeyEntry]) {
        let old = self.0.current.load_full();
        let mut figures = self
            .0
            .figures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old_by_id: HashMap<&str, &Arc<Tenant>> = old
            .by_digest
            .values()
            .map(|tenant| (&*tenant.id, tenant))
            .collect();
        let share = 1.0 / self.0.nodes.load(Ordering::Relaxed).max(1) as f64;
        let mut by_digest = HashMap::new();
        for entry in entries.iter().filter(|entry| !entry.revoked) {
            let Some(digest) = decode_hex::<32>(&entry.digest) else {
                tracing::error!(key = %entry.id, "ignoring a key whose digest is not 64 hex digits");
                continue;
            };
            let kept = old.by_digest.get(&digest).filter(|tenant| {
                &*tenant.id == entry.id.as_str()
                    && &*tenant.name == entry.name.as_str()
                    && tenant.spec == entry.spec
            });
            let tenant = match kept {
                Some(tenant) => tenant.clone(),
                None => {
                    let name: Arc<str> = entry.name.as_str().into();
                    let figures = figures.entry(name).or_default().clone();
                    let before = old_by_id.get(entry.id.as_str()).map(|before| &***before);
                    Arc::new(Tenant::new(entry, figures, before, share))
                }
            };
            by_digest.insert(digest, tenant);
        }
        // What is no longer in force refuses the callers that still hold it.
        for tenant in old.by_digest.values() {
            if !by_digest.values().any(|kept| Arc::ptr_eq(kept, tenant)) {
                tenant.retired.store(true, Ordering::Relaxed);
            }
        }
        let required = !self.0.configured.is_empty() || !entries.is_empty();
        self.0.current.store(Arc::new(KeySet {
            required,
            by_digest,
        }));
    }

    /// Who the request's key says it is, or `None` when it presents no valid key and one is
    /// required. The lookup is by the secret's digest: its timing can tell only about the
    /// digest, which says nothing of the secret.
    pub fn identify(&self, headers: &HeaderMap) -> Option<Caller> {
        let set = self.0.current.load();
        if !set.required {
            return Some(Caller::Unlimited);
        }
        let presented = digest(presented_secret(headers)?);
        if let Some(tenant) = set.by_digest.get(&presented) {
            return Some(Caller::Tenant(tenant.clone()));
        }
        self.0
            .configured
            .iter()
            .any(|key| crate::auth::same_digest(key, &presented))
            .then_some(Caller::Unlimited)
    }

    /// The live tenants, for the figures and the cluster's shares.
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        let mut tenants: Vec<Arc<Tenant>> =
            self.0.current.load().by_digest.values().cloned().collect();
        tenants.sort_by(|a, b| a.id.cmp(&b.id));
        tenants
    }

    /// Every key name's figures, by name.
    pub fn figures(&self) -> Vec<(Arc<str>, Arc<KeyFigures>)> {
        let figures = self
            .0
            .figures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<_> = figures
            .iter()
            .map(|(name, figures)| (name.clone(), figures.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names_as_shells_do() {
        for (pattern, name, matches) in [
            ("mlp", "mlp", true),
            ("mlp", "mlp2", false),
            ("mlp*", "mlp", true),
            ("mlp*", "mlp_heavy", true),
            ("*heavy", "mlp_heavy", true),
            ("*", "anything", true),
            ("m?p", "mlp", true),
            ("m?p", "mp", false),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b", "xxaxxbxxc", false),
            ("resnet-*-v?", "resnet-50-v1", true),
            ("resnet-*-v?", "resnet-50-v12", false),
        ] {
            assert_eq!(glob_match(pattern, name), matches, "{pattern} ~ {name}");
        }
    }

    #[test]
    fn a_bucket_admits_its_burst_then_its_rate() {
        let bucket = TokenBucket::new(10.0, Some(5));
        let start = Instant::now();
        for _ in 0..5 {
            assert!(bucket.take(1.0, start).is_ok());
        }
        let wait = bucket.take(1.0, start).expect_err("the burst is spent");
        assert!(
            (wait.as_secs_f64() - 0.1).abs() < 1e-6,
            "one token comes in 100 ms: {wait:?}"
        );
        assert!(bucket.take(1.0, start + Duration::from_millis(100)).is_ok());
        assert!(
            bucket
                .take(1.0, start + Duration::from_millis(100))
                .is_err()
        );
        // Half the share: half the rate, a token in 200 ms.
        bucket.set_share(0.5);
        let at = |ms| start + Duration::from_millis(ms);
        assert!(bucket.take(1.0, at(250)).is_err());
        assert!(bucket.take(1.0, at(320)).is_ok());
        assert!(bucket.take(1.0, at(320)).is_err());
        // A cost above the burst waits for a full bucket, then goes into debt.
        let big = TokenBucket::new(10.0, Some(5));
        assert!(big.take(8.0, start).is_ok());
        assert!(big.take(1.0, start + Duration::from_millis(300)).is_err());
        assert!(big.take(1.0, start + Duration::from_millis(450)).is_ok());
    }

    #[test]
    fn specs_out_of_bounds_are_refused() {
        let spec = |json: serde_json::Value| serde_json::from_value::<KeySpec>(json);
        let bad = [
            serde_json::json!({"limits": {"requests_per_s": 0}}),
            serde_json::json!({"limits": {"requests_per_s": -1}}),
            serde_json::json!({"limits": {"requests_per_s": 1e9}}),
            serde_json::json!({"limits": {"requests_burst": 5}}),
            serde_json::json!({"limits": {"requests_per_s": 5, "requests_burst": 0}}),
            serde_json::json!({"limits": {"in_flight": 0}}),
            serde_json::json!({"priority": 0}),
            serde_json::json!({"priority": 11}),
            serde_json::json!({"models": ["../etc"]}),
            serde_json::json!({"models": [""]}),
        ];
        for json in bad {
            let parsed = spec(json.clone()).expect("well-typed");
            assert!(parsed.check().is_err(), "{json}");
        }
        assert!(
            spec(serde_json::json!({"limit": {}})).is_err(),
            "unknown field"
        );
        assert!(
            spec(
                serde_json::json!({"models": ["mlp*"], "limits": {"requests_per_s": 5,
                "requests_burst": 10, "rows_per_s": 100, "in_flight": 4}, "priority": 1})
            )
            .expect("well-typed")
            .check()
            .is_ok()
        );
    }

    fn entry(id: &str, secret: &str, spec: KeySpec, revoked: bool) -> KeyEntry {
        KeyEntry {
            id: id.into(),
            name: format!("team-{id}"),
            digest: hex::encode(digest(secret)),
            spec,
            revoked,
        }
    }

    fn headers(secret: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", secret.parse().expect("ascii"));
        headers
    }

    #[test]
    fn the_set_follows_the_registry_and_never_opens_once_it_held_a_key() {
        let keys = ApiKeys::new(&[]);
        assert!(matches!(
            keys.identify(&HeaderMap::new()),
            Some(Caller::Unlimited)
        ));
        let limited = KeySpec {
            limits: Limits {
                requests_per_s: Some(1.0),
                ..Limits::default()
            },
            ..KeySpec::default()
        };
        keys.replace(&[entry("a", "secret-a", limited.clone(), false)]);
        assert!(keys.identify(&HeaderMap::new()).is_none(), "now required");
        let Some(Caller::Tenant(tenant)) = keys.identify(&headers("secret-a")) else {
            panic!("secret-a is a tenant");
        };
        let pass = tenant.admit("mlp").expect("within its burst");
        drop(pass);
        assert_eq!(
            tenant.admit("mlp").err().map(|e| e.kind),
            Some(ErrorKind::RateLimited)
        );
        // The same key again: its bucket is kept, still empty.
        keys.replace(&[entry("a", "secret-a", limited.clone(), false)]);
        let Some(Caller::Tenant(again)) = keys.identify(&headers("secret-a")) else {
            panic!("still a tenant");
        };
        assert!(Arc::ptr_eq(&tenant, &again));
        // Rotated: the new secret carries the spent bucket and the requests in flight; the
        // old secret is refused, and so is a caller that still holds the old tenant (an
        // open gRPC stream).
        let held = again.admit("mlp").err();
        assert_eq!(held.map(|e| e.kind), Some(ErrorKind::RateLimited));
        let mut rotated = entry("a", "secret-a2", limited.clone(), false);
        rotated.id = "a".into();
        keys.replace(&[rotated]);
        assert!(keys.identify(&headers("secret-a")).is_none());
        let Some(Caller::Tenant(fresh)) = keys.identify(&headers("secret-a2")) else {
            panic!("the new secret is the tenant");
        };
        assert_eq!(
            fresh.admit("mlp").err().map(|e| e.kind),
            Some(ErrorKind::RateLimited),
            "the bucket carried over"
        );
        assert_eq!(
            tenant.admit("mlp").err().map(|e| e.kind),
            Some(ErrorKind::Unauthenticated),
            "the old tenant is retired"
        );
        let tenant = fresh;
        // Revoked, and the last: refused, and the API stays closed.
        keys.replace(&[entry("a", "secret-a2", limited, true)]);
        assert!(keys.identify(&headers("secret-a2")).is_none());
        assert_eq!(
            tenant.admit("mlp").err().map(|e| e.kind),
            Some(ErrorKind::Unauthenticated)
        );
        assert!(keys.identify(&HeaderMap::new()).is_none());
        assert_eq!(
            keys.figures()[0].1.refusals(Refusal::Rate),
            3,
            "figures are kept by name, across the rotation"
        );
    }
}
