//! Configuration: one TOML file, parsed into [`RawConfig`] (unknown keys are errors that
//! name their path), `${ENV_VAR}` substituted in every string, then validated into a
//! typed [`Config`] with no leftover options. Secrets are [`Secret`]s and print `*****`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tollgate_core::{ProviderKind, Secret};
use tollgate_providers::{Credentials, Mode};

/// The file as written. Every key is documented in the README's config reference.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address to listen on. Default `127.0.0.1:8300`.
    pub listen: Option<String>,
    /// Directory for the SQLite database. Default `./tollgate-data`.
    pub data_dir: Option<PathBuf>,
    /// The admin key for `/admin/*` (use `${TOLLGATE_ADMIN_KEY}`). Without it the admin
    /// API is off.
    pub admin_key: Option<String>,
    /// Currency costs are reported in besides the vendor's own: `CNY` or `USD`.
    pub reporting_currency: Option<String>,
    /// Largest accepted request body in bytes. Default 8 MiB.
    pub max_body_bytes: Option<usize>,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT. Default 30.
    pub shutdown_grace_secs: Option<u64>,
    /// Threads serving connections, each with its own event loop and upstream
    /// connection pool. Default: the number of CPUs.
    pub threads: Option<usize>,
    /// Upstream timeouts.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Upstream providers, by id (the `provider` in `provider/model`).
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    /// Extra catalog directories (TOML files in our catalog's format) whose models and
    /// price periods are added to, or override, the built-in catalog.
    #[serde(default)]
    pub catalog_dirs: Vec<PathBuf>,
    /// FX overrides: `"2026-11" = { USD_CNY = "7.10" }` (units of the second currency
    /// per one of the first).
    #[serde(default)]
    pub fx: BTreeMap<String, BTreeMap<String, String>>,
    /// Group (team/project) budgets; a key joins one with `--group NAME`.
    #[serde(default)]
    pub groups: BTreeMap<String, tollgate_store::BudgetSpec>,
    /// Per-model rate limits across all keys: `"deepseek/deepseek-chat" = { rpm = 60, tpm = 100000 }`.
    #[serde(default)]
    pub limits: BTreeMap<String, RawLimit>,
    /// Virtual models: names clients use as `model`, routed over candidates (see the
    /// routing section at the end of this file).
    #[serde(default)]
    pub virtual_models: BTreeMap<String, RawVirtualModel>,
    /// Routing defaults and the circuit breaker.
    #[serde(default)]
    pub routing: RawRouting,
    /// Free-tier limits per `provider/model`, overriding the catalog's.
    #[serde(default)]
    pub free_tiers: BTreeMap<String, RawFreeTier>,
    /// Switches for tests; never on in production.
    #[serde(default)]
    pub testing: RawTesting,
}

/// `[limits."provider/model"]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
}

/// `[timeouts]`, in milliseconds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP (+TLS) connect. Default 5000.
    pub connect_ms: Option<u64>,
    /// From sending the request to the response head (the first byte). Default 60000.
    pub first_byte_ms: Option<u64>,
    /// Longest silence between two chunks of a body or stream. Default 60000.
    pub idle_ms: Option<u64>,
}

/// `[providers.ID]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// Protocol: one of the twelve vendor ids or `openai_compatible`. Defaults to the
    /// table's id when that is a known kind.
    pub kind: Option<String>,
    /// `native` (default) or `openai` (the vendor's OpenAI-compatible endpoint).
    pub mode: Option<String>,
    /// API root. Defaults to the vendor's public endpoint.
    pub base_url: Option<String>,
    /// Key, APIKey, SecretId or `id.secret`, as the vendor needs.
    pub api_key: Option<String>,
    /// Secret Key, APISecret or SecretKey, for vendors that sign.
    pub secret_key: Option<String>,
    /// App id (iFlytek) where needed.
    pub app_id: Option<String>,
    /// Model ids this provider serves. Required for `openai_compatible` unless
    /// `passthrough` is set.
    #[serde(default)]
    pub models: Vec<String>,
    /// Served model id → the id sent upstream (e.g. a Doubao endpoint id `ep-...`).
    #[serde(default)]
    pub model_map: BTreeMap<String, String>,
    /// Accept any model name for this provider and forward it unchanged.
    #[serde(default)]
    pub passthrough: bool,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub admin_key: Option<Secret>,
    pub reporting_currency: String,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    /// Threads serving connections (each a single-threaded event loop).
    pub threads: usize,
    pub timeouts: Timeouts,
    pub providers: Vec<ProviderConfig>,
    pub catalog_dirs: Vec<PathBuf>,
    /// (month, base, quote, rate)
    pub fx: Vec<(
        String,
        tollgate_core::Currency,
        tollgate_core::Currency,
        String,
    )>,
    pub groups: BTreeMap<String, tollgate_store::BudgetSpec>,
    pub model_limits: BTreeMap<String, crate::limits::Spec>,
    /// Routing: virtual models, defaults, breaker, free-tier overrides, test clock.
    pub routing: Routing,
}

/// Upstream timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// One validated provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub id: String,
    pub kind: ProviderKind,
    pub mode: Mode,
    pub base_url: String,
    pub credentials: Credentials,
    pub models: Vec<String>,
    pub model_map: BTreeMap<String, String>,
    pub passthrough: bool,
}

/// One serving thread per CPU.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl Config {
    /// Defaults, no providers.
    pub fn empty(data_dir: PathBuf) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8300)),
            data_dir,
            admin_key: None,
            reporting_currency: "CNY".to_owned(),
            max_body_bytes: 8 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            threads: default_threads(),
            timeouts: Timeouts::default(),
            providers: Vec::new(),
            catalog_dirs: Vec::new(),
            fx: Vec::new(),
            groups: BTreeMap::new(),
            model_limits: BTreeMap::new(),
            routing: Routing::default(),
        }
    }

    /// Reads, substitutes and validates a config file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, |k| std::env::var(k).ok(), base)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses TOML text; `env` resolves `${VAR}`; relative paths are taken from `base`.
    pub fn from_toml(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
        base: &Path,
    ) -> Result<Config, String> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        substitute(&mut value, &env, "")?;
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            }
        })?;
        raw.validate(base)
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string of `v`.
fn substitute(
    v: &mut toml::Value,
    env: &impl Fn(&str) -> Option<String>,
    path: &str,
) -> Result<(), String> {
    match v {
        toml::Value::String(s) => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("{path}: unclosed '${{' in value"))?;
                let expr = &after[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (expr, None),
                };
                match (env(name), default) {
                    (Some(val), _) => out.push_str(&val),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => {
                        return Err(format!("{path}: environment variable {name} is not set"))
                    }
                }
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        toml::Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                substitute(x, env, &format!("{path}[{i}]"))?;
            }
        }
        toml::Value::Table(t) => {
            for (k, x) in t.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                substitute(x, env, &p)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn secret(s: Option<String>) -> Option<Secret> {
    s.filter(|s| !s.is_empty()).map(Secret::new)
}

impl RawConfig {
    /// Checks values and fills defaults.
    pub fn validate(self, base: &Path) -> Result<Config, String> {
        let listen = match self.listen {
            Some(l) => l
                .parse()
                .map_err(|_| format!("listen: '{l}' is not an address like 127.0.0.1:8300"))?,
            None => SocketAddr::from(([127, 0, 0, 1], 8300)),
        };
        let data_dir = match self.data_dir {
            Some(d) if d.is_absolute() => d,
            Some(d) => base.join(d),
            None => base.join("tollgate-data"),
        };
        let reporting_currency = self.reporting_currency.unwrap_or_else(|| "CNY".to_owned());
        if !matches!(reporting_currency.as_str(), "CNY" | "USD" | "EUR") {
            return Err(format!(
                "reporting_currency: '{reporting_currency}' is not CNY, USD or EUR"
            ));
        }
        let max_body_bytes = self.max_body_bytes.unwrap_or(8 * 1024 * 1024);
        if max_body_bytes < 1024 {
            return Err("max_body_bytes: must be at least 1024".to_owned());
        }
        let threads = self.threads.unwrap_or_else(default_threads);
        if !(1..=256).contains(&threads) {
            return Err(format!("threads: {threads} is not between 1 and 256"));
        }
        let d = Timeouts::default();
        let ms = |v: Option<u64>, dflt: Duration, name: &str| -> Result<Duration, String> {
            match v {
                Some(0) => Err(format!("timeouts.{name}: must be more than 0")),
                Some(v) => Ok(Duration::from_millis(v)),
                None => Ok(dflt),
            }
        };
        let timeouts = Timeouts {
            connect: ms(self.timeouts.connect_ms, d.connect, "connect_ms")?,
            first_byte: ms(self.timeouts.first_byte_ms, d.first_byte, "first_byte_ms")?,
            idle: ms(self.timeouts.idle_ms, d.idle, "idle_ms")?,
        };
        let mut providers = Vec::new();
        for (id, p) in self.providers {
            if id.is_empty() || id.contains('/') {
                return Err(format!(
                    "providers.{id}: a provider id may not be empty or contain '/'"
                ));
            }
            let kind_name = p.kind.clone().unwrap_or_else(|| id.clone());
            let kind: ProviderKind = kind_name
                .parse()
                .map_err(|e| format!("providers.{id}.kind: {e}"))?;
            let mode: Mode = match &p.mode {
                Some(m) => m.parse().map_err(|e| format!("providers.{id}.mode: {e}"))?,
                None => Mode::Native,
            };
            let base_url = p
                .base_url
                .unwrap_or_else(|| {
                    tollgate_providers::registry::default_base_url(kind, mode).to_owned()
                })
                .trim_end_matches('/')
                .to_owned();
            if !(base_url.starts_with("http://")
                || base_url.starts_with("https://")
                || base_url.starts_with("ws://")
                || base_url.starts_with("wss://"))
            {
                return Err(format!(
                    "providers.{id}.base_url: '{base_url}' is not an http(s) or ws(s) URL"
                ));
            }
            if kind == ProviderKind::OpenAiCompatible && p.models.is_empty() && !p.passthrough {
                return Err(format!(
                    "providers.{id}.models: an openai_compatible provider must list its models (or set passthrough = true)"
                ));
            }
            providers.push(ProviderConfig {
                id,
                kind,
                mode,
                base_url,
                credentials: Credentials {
                    api_key: secret(p.api_key),
                    secret_key: secret(p.secret_key),
                    app_id: p.app_id.filter(|s| !s.is_empty()),
                    access_token: None,
                },
                models: p.models,
                model_map: p.model_map,
                passthrough: p.passthrough,
            });
        }
        let catalog_dirs = self
            .catalog_dirs
            .into_iter()
            .map(|d| if d.is_absolute() { d } else { base.join(d) })
            .collect();
        let mut fx = Vec::new();
        for (month, pairs) in self.fx {
            for (pair, rate) in pairs {
                let (b, q) = pair
                    .split_once('_')
                    .ok_or_else(|| format!("fx.{month}.{pair}: write the pair as USD_CNY"))?;
                let cur = |c: &str| {
                    c.parse::<tollgate_core::Currency>()
                        .map_err(|_| format!("fx.{month}.{pair}: unknown currency '{c}'"))
                };
                fx.push((month.clone(), cur(b)?, cur(q)?, rate));
            }
        }
        for (g, spec) in &self.groups {
            crate::metering::parse_budget(&format!("group:{g}"), g, spec)
                .map_err(|_| format!("groups.{g}: invalid budget (amount, currency CNY/USD/EUR, period day/month/total, time_zone)"))?;
        }
        let mut model_limits = BTreeMap::new();
        for (m, l) in self.limits {
            if !m.contains('/') {
                return Err(format!("limits.{m}: name the model as provider/model"));
            }
            model_limits.insert(
                m,
                crate::limits::Spec {
                    rpm: l.rpm,
                    tpm: l.tpm,
                },
            );
        }
        let routing = validate_routing(
            self.virtual_models,
            self.routing,
            self.free_tiers,
            self.testing,
        )?;
        Ok(Config {
            routing,
            catalog_dirs,
            fx,
            groups: self.groups,
            model_limits,
            listen,
            data_dir,
            admin_key: secret(self.admin_key),
            reporting_currency,
            max_body_bytes,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs.unwrap_or(30)),
            threads,
            timeouts,
            providers,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Routing: virtual models, routing defaults, the circuit breaker, free-tier overrides.
// ---------------------------------------------------------------------------------------

/// `[virtual_models.NAME]`: a model name clients use, served by candidates in the order
/// of a strategy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVirtualModel {
    /// `provider/model` entries, in order (the order `ordered` keeps and ties follow).
    #[serde(default)]
    pub candidates: Vec<String>,
    /// Adds every served catalog model that matches.
    pub filter: Option<RawFilter>,
    /// `cheapest` (default), `free-first`, `latency`, `weighted` or `ordered`.
    pub strategy: Option<String>,
    /// Minimum quality score (catalog `quality.score`, e.g. an LMArena Elo).
    pub quality_floor: Option<toml::Value>,
    /// `weighted`: `{ "provider/model" = 3 }`; unlisted candidates weigh 1.
    #[serde(default)]
    pub weights: BTreeMap<String, u32>,
    /// Most candidates tried for one request. Default 3.
    pub max_attempts: Option<u32>,
    /// No new attempt starts after this many ms from the first. Default 30000.
    pub deadline_ms: Option<u64>,
    /// Backoff before the 2nd attempt; doubles each time, with jitter. Default 50.
    pub backoff_ms: Option<u64>,
    /// Backoff cap. Default 1000.
    pub backoff_max_ms: Option<u64>,
}

/// `filter = { capability = "tools", min_quality = 1200, providers = [...] }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilter {
    /// One capability or a list: `tools`, `vision`, `json_mode`, `streaming`.
    pub capability: Option<toml::Value>,
    pub min_quality: Option<toml::Value>,
    /// Only these provider ids (default: all configured).
    #[serde(default)]
    pub providers: Vec<String>,
    /// Only models free by price or with a free quota.
    #[serde(default)]
    pub free: bool,
}

/// `[routing]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    /// Currency costs are compared in. Default: `reporting_currency`.
    pub currency: Option<String>,
    /// Output tokens estimates assume when a request sets no `max_tokens`. Default 1024.
    pub default_max_tokens: Option<u64>,
    /// `latency`: per thousand requests, how many try another candidate first. Default 50.
    pub explore_per_mille: Option<u32>,
    #[serde(default)]
    pub breaker: RawBreaker,
}

/// `[routing.breaker]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Consecutive failures that open a circuit. Default 5.
    pub failures: Option<u32>,
    /// Error rate (percent) over the window that opens it... Default 50.
    pub error_rate_percent: Option<u32>,
    /// ...once the window holds at least this many calls. Default 20.
    pub min_requests: Option<u32>,
    /// The window, seconds. Default 60.
    pub window_secs: Option<u64>,
    /// Seconds an open circuit waits before one probe. Default 30.
    pub cool_down_secs: Option<u64>,
}

/// `[free_tiers."provider/model"]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFreeTier {
    pub rpm: Option<u64>,
    pub rpd: Option<u64>,
    pub tpm: Option<u64>,
    pub daily_tokens: Option<u64>,
    pub quota_tokens: Option<u64>,
}

/// `[testing]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTesting {
    /// Honour an `x-tollgate-now: RFC3339` request header as the instant routing prices
    /// at (to test off-peak routing). Never enable in production.
    #[serde(default)]
    pub clock_override: bool,
}

/// Validated routing settings.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    pub virtual_models: BTreeMap<String, VirtualModel>,
    /// `None`: the reporting currency.
    pub currency: Option<tollgate_core::Currency>,
    pub default_max_tokens: u64,
    pub explore_per_mille: u32,
    pub breaker: crate::health::BreakerConfig,
    pub free_tiers: BTreeMap<String, crate::health::FreeLimits>,
    pub clock_override: bool,
}

/// One validated virtual model.
#[derive(Debug, Clone)]
pub struct VirtualModel {
    pub name: String,
    pub candidates: Vec<String>,
    pub filter: Option<Filter>,
    pub strategy: tollgate_core::routing::Strategy,
    pub quality_floor: Option<tollgate_core::money::Decimal>,
    pub weights: BTreeMap<String, u32>,
    pub retry: Retry,
}

impl VirtualModel {
    /// A one-candidate route: how a plain `provider/model` is planned (for `max_cost`
    /// checks and `tollgate route` on a served model).
    pub fn single(name: String) -> Self {
        VirtualModel {
            candidates: vec![name.clone()],
            name,
            filter: None,
            strategy: tollgate_core::routing::Strategy::Ordered,
            quality_floor: None,
            weights: BTreeMap::new(),
            retry: Retry::default(),
        }
    }
}

/// A validated catalog filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub capabilities: Vec<String>,
    pub min_quality: Option<tollgate_core::money::Decimal>,
    pub providers: Vec<String>,
    pub free: bool,
}

/// Retry and fallback settings of a virtual model.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub max_attempts: u32,
    pub deadline: Duration,
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: 3,
            deadline: Duration::from_secs(30),
            backoff: Duration::from_millis(50),
            backoff_max: Duration::from_millis(1000),
        }
    }
}

fn decimal(v: &toml::Value, path: &str) -> Result<tollgate_core::money::Decimal, String> {
    let text = match v {
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::String(s) => s.clone(),
        toml::Value::Float(f) => f.to_string(),
        _ => return Err(format!("{path}: expected a number")),
    };
    tollgate_core::money::Decimal::parse(&text)
        .map_err(|e| format!("{path}: '{text}' is not a number: {e}"))
}

fn validate_routing(
    vms: BTreeMap<String, RawVirtualModel>,
    raw: RawRouting,
    free: BTreeMap<String, RawFreeTier>,
    testing: RawTesting,
) -> Result<Routing, String> {
    let currency = match raw.currency {
        Some(c) => Some(
            c.parse::<tollgate_core::Currency>()
                .map_err(|_| format!("routing.currency: '{c}' is not CNY, USD or EUR"))?,
        ),
        None => None,
    };
    let b = raw.breaker;
    let d = crate::health::BreakerConfig::default();
    let breaker = crate::health::BreakerConfig {
        failure_threshold: b.failures.unwrap_or(d.failure_threshold).max(1),
        error_rate_percent: b.error_rate_percent.unwrap_or(d.error_rate_percent),
        min_requests: b.min_requests.unwrap_or(d.min_requests).max(1),
        window: b.window_secs.map(Duration::from_secs).unwrap_or(d.window),
        cool_down: b
            .cool_down_secs
            .map(Duration::from_secs)
            .unwrap_or(d.cool_down),
        ewma_alpha: d.ewma_alpha,
    };
    if breaker.error_rate_percent == 0 || breaker.error_rate_percent > 100 {
        return Err("routing.breaker.error_rate_percent: must be 1..=100".to_owned());
    }
    let mut virtual_models = BTreeMap::new();
    for (name, v) in vms {
        let path = format!("virtual_models.{name}");
        if name.is_empty() || name.contains('/') {
            return Err(format!(
                "{path}: a virtual model name may not be empty or contain '/'"
            ));
        }
        for c in &v.candidates {
            if !c.contains('/') {
                return Err(format!("{path}.candidates: '{c}' must be provider/model"));
            }
        }
        if v.candidates.is_empty() && v.filter.is_none() {
            return Err(format!("{path}: give candidates, a filter, or both"));
        }
        let strategy = match &v.strategy {
            Some(s) => s.parse().map_err(|e| format!("{path}.strategy: {e}"))?,
            None => tollgate_core::routing::Strategy::Cheapest,
        };
        let quality_floor = v
            .quality_floor
            .as_ref()
            .map(|q| decimal(q, &format!("{path}.quality_floor")))
            .transpose()?;
        let filter = match v.filter {
            None => None,
            Some(f) => {
                let capabilities = match f.capability {
                    None => Vec::new(),
                    Some(toml::Value::String(s)) => vec![s],
                    Some(toml::Value::Array(a)) => a
                        .into_iter()
                        .map(|x| match x {
                            toml::Value::String(s) => Ok(s),
                            _ => Err(format!("{path}.filter.capability: expected strings")),
                        })
                        .collect::<Result<_, _>>()?,
                    Some(_) => {
                        return Err(format!(
                            "{path}.filter.capability: expected a string or a list"
                        ))
                    }
                };
                for c in &capabilities {
                    if tollgate_core::Capabilities::default().has(c).is_none() {
                        return Err(format!(
                            "{path}.filter.capability: unknown capability '{c}' (tools, vision, json_mode, streaming)"
                        ));
                    }
                }
                Some(Filter {
                    capabilities,
                    min_quality: f
                        .min_quality
                        .as_ref()
                        .map(|q| decimal(q, &format!("{path}.filter.min_quality")))
                        .transpose()?,
                    providers: f.providers,
                    free: f.free,
                })
            }
        };
        let dr = Retry::default();
        let retry = Retry {
            max_attempts: v.max_attempts.unwrap_or(dr.max_attempts).max(1),
            deadline: v
                .deadline_ms
                .map(Duration::from_millis)
                .unwrap_or(dr.deadline),
            backoff: v
                .backoff_ms
                .map(Duration::from_millis)
                .unwrap_or(dr.backoff),
            backoff_max: v
                .backoff_max_ms
                .map(Duration::from_millis)
                .unwrap_or(dr.backoff_max),
        };
        virtual_models.insert(
            name.clone(),
            VirtualModel {
                name,
                candidates: v.candidates,
                filter,
                strategy,
                quality_floor,
                weights: v.weights,
                retry,
            },
        );
    }
    let mut free_tiers = BTreeMap::new();
    for (m, f) in free {
        if !m.contains('/') {
            return Err(format!("free_tiers.{m}: name the model as provider/model"));
        }
        free_tiers.insert(
            m,
            crate::health::FreeLimits {
                rpm: f.rpm,
                rpd: f.rpd,
                tpm: f.tpm,
                daily_tokens: f.daily_tokens,
                quota_tokens: f.quota_tokens,
            },
        );
    }
    Ok(Routing {
        virtual_models,
        currency,
        default_max_tokens: raw.default_max_tokens.unwrap_or(1024).max(1),
        explore_per_mille: raw.explore_per_mille.unwrap_or(50).min(1000),
        breaker,
        free_tiers,
        clock_override: testing.clock_override,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        (k == "DS_KEY").then(|| "sk-ds".to_owned())
    }

    #[test]
    fn parses_substitutes_and_defaults() {
        let c = Config::from_toml(
            r#"
            admin_key = "${ADMIN:-adm}"
            [providers.deepseek]
            api_key = "${DS_KEY}"
            models = ["deepseek-chat"]
            [providers.local]
            kind = "openai_compatible"
            base_url = "http://127.0.0.1:8000/v1/"
            models = ["llama3"]
            "#,
            env,
            Path::new("/etc/tollgate"),
        )
        .unwrap();
        assert_eq!(c.admin_key.as_ref().map(Secret::expose), Some("adm"));
        assert_eq!(c.data_dir, PathBuf::from("/etc/tollgate/tollgate-data"));
        let ds = c.providers.iter().find(|p| p.id == "deepseek").unwrap();
        assert_eq!(ds.kind, ProviderKind::DeepSeek);
        assert_eq!(ds.base_url, "https://api.deepseek.com");
        assert_eq!(
            ds.credentials.api_key.as_ref().map(Secret::expose),
            Some("sk-ds")
        );
        let local = c.providers.iter().find(|p| p.id == "local").unwrap();
        assert_eq!(local.base_url, "http://127.0.0.1:8000/v1");
        // Secrets never print.
        assert!(!format!("{c:?}").contains("sk-ds"));
    }

    #[test]
    fn errors_name_the_path() {
        let e = Config::from_toml("[providers.openai]\napi_kye = \"x\"\n", env, Path::new("."))
            .unwrap_err();
        assert!(e.starts_with("providers.openai"), "{e}");
        assert!(e.contains("api_kye"), "{e}");
        let e = Config::from_toml(
            "[providers.openai]\napi_key = \"${NOPE}\"\n",
            env,
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "providers.openai.api_key: environment variable NOPE is not set"
        );
        let e = Config::from_toml("[providers.foo]\n", env, Path::new(".")).unwrap_err();
        assert!(
            e.starts_with("providers.foo.kind: unknown provider kind 'foo'"),
            "{e}"
        );
        let e = Config::from_toml("listen = \"nope\"\n", env, Path::new(".")).unwrap_err();
        assert!(e.starts_with("listen:"), "{e}");
        let e = Config::from_toml(
            "[providers.x]\nkind=\"openai_compatible\"\n",
            env,
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("must list its models"), "{e}");
        let e = Config::from_toml("threads = 0\n", env, Path::new(".")).unwrap_err();
        assert_eq!(e, "threads: 0 is not between 1 and 256");
        let c = Config::from_toml("threads = 3\n", env, Path::new(".")).unwrap();
        assert_eq!(c.threads, 3);
        assert!(Config::from_toml("", env, Path::new(".")).unwrap().threads >= 1);
    }

    #[test]
    fn virtual_models_parse_and_validate() {
        let c = Config::from_toml(
            r#"
            [virtual_models.cheap]
            candidates = ["deepseek/deepseek-chat", "openai/gpt-4o-mini"]
            strategy = "free_first"
            quality_floor = 1200
            max_attempts = 2
            [virtual_models.tools]
            filter = { capability = ["tools", "json"], min_quality = "1250.5", providers = ["openai"] }
            [routing]
            currency = "USD"
            [routing.breaker]
            failures = 2
            cool_down_secs = 5
            [free_tiers."zhipu/glm-4-flash"]
            rpd = 100
            [testing]
            clock_override = true
            "#,
            env,
            Path::new("."),
        )
        .unwrap();
        let r = &c.routing;
        let cheap = &r.virtual_models["cheap"];
        assert_eq!(cheap.strategy, tollgate_core::routing::Strategy::FreeFirst);
        assert_eq!(cheap.quality_floor.unwrap().to_string(), "1200");
        assert_eq!(cheap.retry.max_attempts, 2);
        let f = r.virtual_models["tools"].filter.as_ref().unwrap();
        assert_eq!(f.capabilities, vec!["tools", "json"]);
        assert_eq!(r.currency, Some(tollgate_core::Currency::Usd));
        assert_eq!(r.breaker.failure_threshold, 2);
        assert_eq!(r.free_tiers["zhipu/glm-4-flash"].rpd, Some(100));
        assert!(r.clock_override);
        for (bad, want) in [
            ("[virtual_models.x]\n", "give candidates"),
            (
                "[virtual_models.x]\ncandidates=[\"a\"]\n",
                "must be provider/model",
            ),
            (
                "[virtual_models.x]\ncandidates=[\"a/b\"]\nstrategy=\"fast\"\n",
                "unknown strategy",
            ),
            (
                "[virtual_models.x]\nfilter={capability=\"fly\"}\n",
                "unknown capability",
            ),
            ("[virtual_models.x]\ncandidates=[\"a/b\"]\nnope=1\n", "nope"),
        ] {
            let e = Config::from_toml(bad, env, Path::new(".")).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
            assert!(e.starts_with("virtual_models.x"), "{e}");
        }
    }
}
