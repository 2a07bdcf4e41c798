//! The gateway's shared state: configured providers with their codecs, the model index
//! that resolves what a client names, the key cache, the store and the upstream client.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::HeaderValue;
use tokio::time::Instant;
use tollgate_core::error::ErrorKind;
use tollgate_core::{Catalog, GatewayError, ModelEntry, ModelRef, ProviderKind};
use tollgate_providers::Codec;
use tollgate_store::{hash_key, KeyRecord, KeyStore, LedgerStore};

use crate::budget::Budgets;
use crate::config::{Config, ProviderConfig};
use crate::health::Health;
use crate::ledger::LedgerWriter;
use crate::limits::Limits;
use crate::route::VirtualRoutes;
use crate::upstream::{TokenCache, Upstream};
use crate::FastMap;

/// A configured provider and its codec.
pub struct Provider {
    pub cfg: ProviderConfig,
    pub codec: Arc<dyn Codec>,
    /// Models served, as clients name them (after `provider/`).
    pub models: Vec<String>,
    /// Catalog entries of served models and of their aliases, by name.
    pub entries: FastMap<String, Arc<ModelEntry>>,
    /// `provider/model` of every model named in the config or the catalog, and its
    /// `x-tollgate-model` header value, made once rather than for each request.
    names: FastMap<String, (Arc<str>, Option<HeaderValue>)>,
    /// The `x-tollgate-provider` header value (`None`: the id is not a valid one).
    pub id_header: Option<HeaderValue>,
    /// The config's per-model rate limits (`[limits."provider/model"]`) of this provider,
    /// by model, with the scope name the limiter knows them by.
    limits: FastMap<String, (Arc<str>, crate::limits::Spec)>,
}

impl Provider {
    /// The id sent upstream for a served model.
    pub fn upstream_model(&self, model: &str) -> String {
        self.cfg
            .model_map
            .get(model)
            .cloned()
            .unwrap_or_else(|| model.to_owned())
    }

    /// `model` of this provider, resolved: its upstream id, catalog entry, `provider/model`
    /// name and header value (the last two made once per model, see `names`).
    fn resolved(this: &Arc<Provider>, model: &str) -> Resolved {
        let (name, model_header) = match this.names.get(model) {
            Some(n) => n.clone(),
            None => names_for(&this.cfg.id, model),
        };
        Resolved {
            upstream_model: this.upstream_model(model),
            model: model.to_owned(),
            entry: this.entries.get(model).cloned(),
            name,
            model_header,
            provider: this.clone(),
        }
    }

    /// The config's rate limit on `model` across all keys: its scope name and spec.
    pub fn limit_of(&self, model: &str) -> Option<&(Arc<str>, crate::limits::Spec)> {
        self.limits.get(model)
    }

    fn serves(&self, model: &str) -> bool {
        self.cfg.passthrough
            || self.models.iter().any(|m| m == model)
            || self.entries.contains_key(model)
    }
}

/// `provider/model`, and `model` as a header value.
fn names_for(provider: &str, model: &str) -> (Arc<str>, Option<HeaderValue>) {
    (
        Arc::from(format!("{provider}/{model}")),
        shared_header(model.to_owned()),
    )
}

/// A header value over `s`'s own bytes (no copy); clones share them.
pub fn shared_header(s: String) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).ok()
}

/// What a client's `model` resolved to.
#[derive(Clone)]
pub struct Resolved {
    pub provider: Arc<Provider>,
    /// The served model id (without the provider prefix).
    pub model: String,
    pub upstream_model: String,
    /// The model's catalog entry (prices, limits), if it has one.
    pub entry: Option<Arc<ModelEntry>>,
    name: Arc<str>,
    /// `x-tollgate-model`, when `model` is a valid header value.
    pub model_header: Option<HeaderValue>,
}

impl Resolved {
    /// `provider/model`, the name health and routing know it by.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What admission derives from a key record, once per key: its budgets (its own and its
/// group's) and the name of its rate-limit scope.
pub struct KeyMeta {
    pub budgets: Vec<crate::budget::Budget>,
    /// `key 'NAME'`: the limiter's scope for the key's RPM/TPM, and how refusals name it.
    pub rate_scope: Arc<str>,
}

/// A key's [`KeyMeta`], with the budget spec, group and name it was made from (kept to
/// notice a change).
pub type KeyBudgets = (
    Option<tollgate_store::BudgetSpec>,
    Option<String>,
    String,
    Arc<KeyMeta>,
);

/// The stores the gateway writes to.
pub struct Stores {
    pub keys: Arc<dyn KeyStore>,
    /// For reads (reports, budget spend at start-up).
    pub ledger: Arc<dyn LedgerStore>,
    /// Given to the ledger importer thread; its own connection where the backend has them.
    pub ledger_writer: Arc<dyn LedgerStore>,
    /// Where the ledger journal lives (`<data_dir>/journal`).
    pub data_dir: std::path::PathBuf,
    /// For [`LedgerStore::maintain`], on a background thread.
    pub maintenance: Arc<dyn LedgerStore>,
}

impl Stores {
    /// SQLite in `data_dir`.
    pub fn sqlite(data_dir: &std::path::Path) -> Result<Self, tollgate_store::StoreError> {
        let main = Arc::new(tollgate_store::SqliteStore::open(data_dir)?);
        let writer = Arc::new(tollgate_store::SqliteStore::open_for_writes(data_dir)?);
        let maintenance = Arc::new(tollgate_store::SqliteStore::open(data_dir)?);
        Ok(Stores {
            keys: main.clone(),
            ledger: main,
            ledger_writer: writer,
            data_dir: data_dir.to_path_buf(),
            maintenance,
        })
    }
}

/// Everything a handler needs.
pub struct AppState {
    pub config: Config,
    pub providers: BTreeMap<String, Arc<Provider>>,
    /// Bare model id → providers serving it.
    by_model: FastMap<String, Vec<Arc<Provider>>>,
    pub keys: KeyCache,
    /// [`KeyMeta`] per key id, with the spec, group and name it was made from.
    pub key_budgets: RwLock<FastMap<String, KeyBudgets>>,
    pub store: Arc<dyn KeyStore>,
    pub ledger_store: Arc<dyn LedgerStore>,
    pub ledger: LedgerWriter,
    pub upstream: Upstream,
    /// Access tokens fetched for codecs that need them (ERNIE).
    pub tokens: TokenCache,
    pub catalog: Arc<Catalog>,
    pub budgets: Budgets,
    pub limits: Limits,
    /// Circuit breakers, TTFT EWMAs and free-tier usage per `provider/model`.
    pub health: Health,
    /// Virtual models by name, with their candidates resolved.
    pub virtual_models: VirtualRoutes,
    /// Counters for `GET /metrics`.
    pub metrics: crate::metrics::Metrics,
}

/// The catalog: ours, plus the config's extra directories and FX overrides.
pub fn load_catalog(config: &Config) -> Result<Catalog, String> {
    let mut catalog = Catalog::load(&config.catalog_dirs).map_err(|e| e.to_string())?;
    for (month, base, quote, rate) in &config.fx {
        catalog
            .fx_mut()
            .set_rate(month, *base, *quote, rate)
            .map_err(|e| format!("fx.{month}: {e}"))?;
    }
    Ok(catalog)
}

impl AppState {
    /// Builds the state; fails when a provider's codec is missing.
    pub fn new(config: Config, stores: Stores) -> Result<Arc<Self>, String> {
        let upstream = Upstream::new(config.timeouts, config.threads)?;
        let catalog = Arc::new(load_catalog(&config)?);
        let mut providers = BTreeMap::new();
        let mut by_model: FastMap<String, Vec<Arc<Provider>>> = FastMap::default();
        for p in &config.providers {
            let codec = tollgate_providers::codec_for(p.kind, p.mode);
            let vendor: Vec<&ModelEntry> = if p.kind == ProviderKind::OpenAiCompatible {
                Vec::new()
            } else {
                catalog
                    .models()
                    .filter(|e| e.provider == p.kind.as_str())
                    .collect()
            };
            let mut models = p.models.clone();
            if models.is_empty() {
                // No list: serve every catalog model of the vendor.
                models = vendor.iter().map(|e| e.id.clone()).collect();
            }
            for m in p.model_map.keys() {
                if !models.contains(m) {
                    models.push(m.clone());
                }
            }
            let mut entries = FastMap::default();
            for m in &models {
                match catalog.find(p.kind.as_str(), m) {
                    Some(e) => {
                        let e = Arc::new(e.clone());
                        for alias in &e.aliases {
                            if models.contains(&e.id) || models.contains(alias) {
                                entries.entry(alias.clone()).or_insert_with(|| e.clone());
                            }
                        }
                        entries.insert(m.clone(), e);
                    }
                    None => tracing::warn!(
                        provider = %p.id,
                        model = %m,
                        "model has no price in the catalog: its cost is reported as unpriced and budgets refuse it"
                    ),
                }
            }
            let names = models
                .iter()
                .chain(entries.keys())
                .map(|m| (m.clone(), names_for(&p.id, m)))
                .collect();
            let prefix = format!("{}/", p.id);
            let limits = config
                .model_limits
                .iter()
                .filter_map(|(name, spec)| {
                    let model = name.strip_prefix(&prefix)?;
                    Some((
                        model.to_owned(),
                        (Arc::from(format!("model {name}")), *spec),
                    ))
                })
                .collect();
            let prov = Arc::new(Provider {
                cfg: p.clone(),
                codec,
                models: models.clone(),
                entries,
                names,
                id_header: shared_header(p.id.clone()),
                limits,
            });
            let mut names: Vec<String> = models;
            names.extend(
                prov.entries
                    .keys()
                    .filter(|k| !prov.models.contains(k))
                    .cloned(),
            );
            for m in names {
                by_model.entry(m).or_default().push(prov.clone());
            }
            providers.insert(p.id.clone(), prov);
        }
        let ledger =
            LedgerWriter::spawn(&stores.data_dir, stores.ledger_writer, stores.maintenance)?;
        let health = Health::new(config.routing.breaker);
        let mut state = AppState {
            config,
            providers,
            by_model,
            keys: KeyCache::new(Duration::from_millis(500)),
            key_budgets: RwLock::new(FastMap::default()),
            store: stores.keys,
            ledger_store: stores.ledger,
            ledger,
            upstream,
            tokens: TokenCache::default(),
            catalog,
            budgets: Budgets::new(),
            limits: Limits::new(),
            health,
            virtual_models: VirtualRoutes::new(),
            metrics: crate::metrics::Metrics::new(),
        };
        let mut routes = VirtualRoutes::new();
        for (name, vm) in &state.config.routing.virtual_models {
            if state.providers.contains_key(name) || state.by_model.contains_key(name) {
                tracing::warn!(virtual_model = %name, "a virtual model shadows a served model or provider of the same name");
            }
            routes.insert(name.clone(), crate::route::expand(&state, vm)?);
        }
        state.virtual_models = routes;
        Ok(Arc::new(state))
    }

    /// Resolves `provider/model` or a bare model id.
    pub fn resolve(&self, name: &str) -> Result<Resolved, GatewayError> {
        let r = ModelRef::parse(name, |p| self.providers.contains_key(p));
        let not_found = || {
            GatewayError::new(
                ErrorKind::NotFound,
                format!("The model '{name}' does not exist or is not served by this gateway"),
            )
            .with_param("model")
            .with_code("model_not_found")
        };
        match r.provider {
            Some(p) => {
                let provider = self.providers.get(p).ok_or_else(not_found)?;
                if !provider.serves(r.model) {
                    return Err(not_found());
                }
                Ok(Provider::resolved(provider, r.model))
            }
            None => {
                let serving = self.by_model.get(r.model).map(Vec::as_slice).unwrap_or(&[]);
                match serving {
                    [one] => Ok(Provider::resolved(one, r.model)),
                    [] => Err(not_found()),
                    many => {
                        let ids: Vec<_> = many
                            .iter()
                            .map(|p| format!("{}/{}", p.cfg.id, r.model))
                            .collect();
                        Err(GatewayError::invalid_param(
                            "model",
                            &format!(
                                "The model '{name}' is served by several providers; name one of: {}",
                                ids.join(", ")
                            ),
                        ))
                    }
                }
            }
        }
    }

    /// Authenticates a presented key.
    pub async fn authenticate(
        self: &Arc<Self>,
        presented: Option<&str>,
    ) -> Result<Arc<KeyRecord>, GatewayError> {
        let key = presented.filter(|k| !k.is_empty()).ok_or_else(|| {
            GatewayError::unauthenticated(
                "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.",
            )
        })?;
        let hash = hash_key(key);
        let rec = match self.keys.lookup(&hash, Instant::now()) {
            Cached::Fresh(r) => r,
            Cached::Refresh(r, generation) => {
                // Still trusted: answered from the cache, while one background read
                // renews it before it expires (so a busy key never waits for a read).
                let state = self.clone();
                let h = hash.clone();
                tokio::task::spawn_blocking(move || match state.store.find_key(&h) {
                    Ok(found) => state.keys.put(h, found.map(Arc::new), generation),
                    Err(e) => tracing::error!(error = %e, "key lookup failed"),
                });
                r
            }
            Cached::Miss(generation) => {
                let store = self.store.clone();
                let h = hash.clone();
                let found = tokio::task::spawn_blocking(move || store.find_key(&h))
                    .await
                    .map_err(|_| GatewayError::internal())?
                    .map_err(|e| {
                        tracing::error!(error = %e, "key lookup failed");
                        GatewayError::internal()
                    })?;
                let found = found.map(Arc::new);
                self.keys.put(hash, found.clone(), generation);
                found
            }
        };
        match rec {
            Some(r) if r.is_active() => Ok(r),
            Some(_) => Err(GatewayError::unauthenticated(
                "This API key has been revoked.",
            )),
            None => Err(GatewayError::unauthenticated("Incorrect API key provided.")),
        }
    }
}

/// A cached key record (`None`: no such key), when it was read, and whether a read to
/// renew it is under way.
struct CachedKey {
    at: Instant,
    rec: Option<Arc<KeyRecord>>,
    renewing: bool,
}

/// What the key cache holds for a key hash.
#[derive(Debug)]
pub enum Cached {
    /// A record (or the knowledge that there is none) to trust.
    Fresh(Option<Arc<KeyRecord>>),
    /// The same, past half its life: this caller (and no other) starts a read to renew
    /// it and [`KeyCache::put`]s the result with this generation.
    Refresh(Option<Arc<KeyRecord>>, u64),
    /// Nothing to trust: read the store, then [`KeyCache::put`] with this generation.
    Miss(u64),
}

/// Key records by hash, each trusted for `ttl` from its read: a key revoked elsewhere
/// (the CLI, another replica) stops working within `ttl`. Unknown keys are cached too,
/// so a flood of bad keys does not become a flood of database reads.
///
/// A record past half its `ttl` is renewed by one background read while requests go on
/// using it. Before, every request in flight for a key missed at once when its record
/// expired, each with its own blocking-pool read contending for the SQLite connection
/// with the ledger importer: at 32 clients on one key, every 500 ms. The renewal gained
/// ~4% of throughput there (bench/README, session 9).
pub struct KeyCache {
    ttl: Duration,
    map: RwLock<HashMap<String, CachedKey>>,
    /// Bumped by [`KeyCache::clear`]: a read that started before it must not put back a
    /// record it may have read before a revocation.
    generation: std::sync::atomic::AtomicU64,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        KeyCache {
            ttl,
            map: RwLock::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// What to do for `hash` at `now`.
    pub fn lookup(&self, hash: &str, now: Instant) -> Cached {
        // The generation is read before the record: a clear() in between makes the
        // caller's put() a no-op rather than letting it restore an old record.
        let generation = self.generation();
        let age = |e: &CachedKey| now.saturating_duration_since(e.at);
        {
            let Ok(map) = self.map.read() else {
                return Cached::Miss(generation);
            };
            match map.get(hash) {
                None => return Cached::Miss(generation),
                Some(e) if age(e) >= self.ttl => return Cached::Miss(generation),
                Some(e) if e.renewing || age(e) < self.ttl / 2 => {
                    return Cached::Fresh(e.rec.clone())
                }
                Some(_) => {}
            }
        }
        // Past half its life: claim the renewal under the write lock (one caller wins).
        let Ok(mut map) = self.map.write() else {
            return Cached::Miss(generation);
        };
        match map.get_mut(hash) {
            Some(e) if age(e) < self.ttl => {
                if e.renewing {
                    Cached::Fresh(e.rec.clone())
                } else {
                    e.renewing = true;
                    Cached::Refresh(e.rec.clone(), generation)
                }
            }
            _ => Cached::Miss(generation),
        }
    }

    /// Caches what a read that started at `generation` found, trusted from now, unless
    /// the cache was cleared since.
    pub fn put(&self, hash: String, rec: Option<Arc<KeyRecord>>, generation: u64) {
        if let Ok(mut map) = self.map.write() {
            if self.generation() != generation {
                return;
            }
            if map.len() > 100_000 {
                map.clear();
            }
            let e = CachedKey {
                at: Instant::now(),
                rec,
                renewing: false,
            };
            map.insert(hash, e);
        }
    }

    /// Forgets everything (after a revocation through this process), including what
    /// reads under way would put back.
    pub fn clear(&self) {
        if let Ok(mut map) = self.map.write() {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            map.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> Option<Arc<KeyRecord>> {
        Some(Arc::new(KeyRecord {
            id: format!("key_{name}"),
            name: name.into(),
            prefix: "tg-".into(),
            models: Vec::new(),
            created_at: 0,
            revoked_at: None,
            group: None,
            budget: None,
            rpm: None,
            tpm: None,
        }))
    }

    fn name(r: &Option<Arc<KeyRecord>>) -> &str {
        r.as_ref().map_or("-", |r| r.name.as_str())
    }

    /// A record is trusted for its ttl; past half of it exactly one caller is told to
    /// renew it while everyone keeps using it; a renewal restarts its life; past the ttl
    /// nobody trusts it, renewal or not.
    #[test]
    fn one_caller_renews_a_key_before_it_expires() {
        let cache = KeyCache::new(Duration::from_millis(1_000));
        let Cached::Miss(g) = cache.lookup("h", Instant::now()) else {
            panic!("an empty cache has nothing")
        };
        cache.put("h".into(), record("a"), g);
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        assert!(matches!(cache.lookup("h", ms(100)), Cached::Fresh(ref r) if name(r) == "a"));
        let Cached::Refresh(r, g) = cache.lookup("h", ms(600)) else {
            panic!("past half its life the first caller renews")
        };
        assert_eq!(name(&r), "a");
        for _ in 0..3 {
            assert!(matches!(cache.lookup("h", ms(700)), Cached::Fresh(ref r) if name(r) == "a"));
        }
        assert!(matches!(cache.lookup("h", ms(1_100)), Cached::Miss(_)));
        // The renewal lands: a new life, and the record it read.
        cache.put("h".into(), record("b"), g);
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        assert!(matches!(cache.lookup("h", ms(400)), Cached::Fresh(ref r) if name(r) == "b"));
        assert!(matches!(cache.lookup("h", ms(600)), Cached::Refresh(..)));
        assert!(matches!(cache.lookup("other", ms(0)), Cached::Miss(_)));
    }

    /// A read that started before a clear() (a revocation through this process) does not
    /// put back what it read, whether it was a miss's read or a renewal.
    #[test]
    fn reads_started_before_a_clear_are_not_cached() {
        let cache = KeyCache::new(Duration::from_millis(1_000));
        let Cached::Miss(before) = cache.lookup("h", Instant::now()) else {
            panic!()
        };
        cache.clear();
        cache.put("h".into(), record("stale"), before);
        assert!(matches!(cache.lookup("h", Instant::now()), Cached::Miss(_)));

        let Cached::Miss(g) = cache.lookup("h", Instant::now()) else {
            panic!()
        };
        cache.put("h".into(), record("a"), g);
        let later = Instant::now() + Duration::from_millis(600);
        let Cached::Refresh(_, renewing) = cache.lookup("h", later) else {
            panic!()
        };
        cache.clear();
        cache.put("h".into(), record("stale"), renewing);
        assert!(matches!(cache.lookup("h", Instant::now()), Cached::Miss(_)));
        // A read after the clear is cached as usual.
        let Cached::Miss(after) = cache.lookup("h", Instant::now()) else {
            panic!()
        };
        cache.put("h".into(), record("fresh"), after);
        assert!(
            matches!(cache.lookup("h", Instant::now()), Cached::Fresh(ref r) if name(r) == "fresh")
        );
    }
}
