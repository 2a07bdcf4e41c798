//! The price catalog: every model's dated price periods, loaded from `catalog/*.toml` and validated.
//!
//! The shipped files are compiled in ([`Catalog::embedded`]); users add or override
//! models and prices with extra directories ([`Catalog::load`]) or config snippets
//! ([`Catalog::add_toml`]). The file format, every field and the merge rule are
//! documented in `catalog/README.md`.
//!
//! Merge rule, per file, in load order: a model is matched by provider and by id or
//! alias (case-insensitive). For a match, fields present in the file replace the old
//! ones (aliases are appended) and each period replaces the period with the same
//! region and `effective_from`, or is added. An unmatched model is new and must give
//! `context_window`, `max_output` and at least one period; its default region is the
//! model's `default_region`, else the file's, else the one an earlier file declared for
//! the provider, else `global`. A file is applied whole or not at all.

mod fx;
mod parse;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, NaiveTime, Timelike, Utc};
use serde::Serialize;

use crate::money::{Currency, Decimal};

pub use fx::{Conversion, FxEntry, FxError, FxTable, YearMonth};
pub use parse::zone_offset;

/// The shipped catalog, one file per vendor plus the FX table.
const EMBEDDED: [(&str, &str); 13] = [
    (
        "catalog/openai.toml",
        include_str!("../../../catalog/openai.toml"),
    ),
    (
        "catalog/anthropic.toml",
        include_str!("../../../catalog/anthropic.toml"),
    ),
    (
        "catalog/gemini.toml",
        include_str!("../../../catalog/gemini.toml"),
    ),
    (
        "catalog/mistral.toml",
        include_str!("../../../catalog/mistral.toml"),
    ),
    (
        "catalog/deepseek.toml",
        include_str!("../../../catalog/deepseek.toml"),
    ),
    (
        "catalog/moonshot.toml",
        include_str!("../../../catalog/moonshot.toml"),
    ),
    (
        "catalog/zhipu.toml",
        include_str!("../../../catalog/zhipu.toml"),
    ),
    (
        "catalog/doubao.toml",
        include_str!("../../../catalog/doubao.toml"),
    ),
    (
        "catalog/qwen.toml",
        include_str!("../../../catalog/qwen.toml"),
    ),
    (
        "catalog/ernie.toml",
        include_str!("../../../catalog/ernie.toml"),
    ),
    (
        "catalog/spark.toml",
        include_str!("../../../catalog/spark.toml"),
    ),
    (
        "catalog/hunyuan.toml",
        include_str!("../../../catalog/hunyuan.toml"),
    ),
    ("catalog/fx.toml", include_str!("../../../catalog/fx.toml")),
];

/// Region used when neither the period, the model nor the file names one.
pub const DEFAULT_REGION: &str = "global";

/// A catalog file was refused. The message names the file, the model and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogError {
    /// Not valid TOML.
    Parse { file: String, message: String },
    /// Valid TOML, but a field is wrong: `file: model m: field message`.
    Invalid {
        file: String,
        model: Option<String>,
        field: String,
        message: String,
    },
    /// A user catalog directory or file could not be read.
    Io { path: String, message: String },
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CatalogError::Parse { file, message } => write!(f, "{file}: {message}"),
            CatalogError::Invalid {
                file,
                model,
                field,
                message,
            } => match model {
                Some(m) => write!(f, "{file}: model {m}: {field} {message}"),
                None => write!(f, "{file}: {field} {message}"),
            },
            CatalogError::Io { path, message } => write!(f, "{path}: {message}"),
        }
    }
}

impl std::error::Error for CatalogError {}

/// What a model can do, as the vendor documents it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    pub tools: bool,
    pub vision: bool,
    pub json_mode: bool,
    pub streaming: bool,
}

impl Capabilities {
    /// The flag named `name` (`tools`, `vision`, `json_mode`/`json`, `streaming`);
    /// `None` for an unknown name.
    pub fn has(&self, name: &str) -> Option<bool> {
        match name.trim().to_ascii_lowercase().as_str() {
            "tools" | "tool" | "function_calling" => Some(self.tools),
            "vision" | "image" | "images" => Some(self.vision),
            "json_mode" | "json" => Some(self.json_mode),
            "streaming" | "stream" => Some(self.streaming),
            _ => None,
        }
    }
}

/// A quality score with the public benchmark it comes from (e.g. LMArena text Elo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quality {
    pub score: Decimal,
    /// What the number is, e.g. "lmarena-text-elo".
    pub metric: String,
    /// Where and when it was read.
    pub source: String,
    pub as_of: Option<NaiveDate>,
}

/// Limits of a free model or free quota, where the vendor publishes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FreeTier {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// Requests per day.
    pub rpd: Option<u64>,
    pub daily_tokens: Option<u64>,
    pub concurrency: Option<u64>,
    /// A one-off free token grant (e.g. Qwen's 1M tokens per model)...
    pub quota_tokens: Option<u64>,
    /// ...valid for this many days.
    pub quota_days: Option<u64>,
    pub estimate: bool,
    pub note: Option<String>,
    pub source: String,
}

/// How far a price can be trusted; the CSV's `[high]`/`[med]`/`[low]` tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    Low,
    Med,
    High,
}

impl Confidence {
    pub fn as_str(&self) -> &'static str {
        match self {
            Confidence::High => "high",
            Confidence::Med => "med",
            Confidence::Low => "low",
        }
    }
}

/// Prices of one tier, in nano-units of the period's currency per 1M tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Prices {
    pub input: i128,
    pub output: i128,
    /// Cache reads; absent = billed as ordinary input.
    pub cached_input: Option<i128>,
    /// Cache writes (Anthropic); absent = billed as ordinary input.
    pub cache_write: Option<i128>,
    /// Output price when the response has reasoning tokens (thinking mode); absent =
    /// the ordinary output price.
    pub thinking_output: Option<i128>,
}

impl Prices {
    pub fn cached_or_input(&self) -> i128 {
        self.cached_input.unwrap_or(self.input)
    }
    pub fn cache_write_or_input(&self) -> i128 {
        self.cache_write.unwrap_or(self.input)
    }
    pub fn thinking_or_output(&self) -> i128 {
        self.thinking_output.unwrap_or(self.output)
    }
    pub fn is_free(&self) -> bool {
        self.input == 0
            && self.output == 0
            && self.cached_or_input() == 0
            && self.cache_write_or_input() == 0
            && self.thinking_or_output() == 0
    }
    /// Every effective price of `self` is at least the one of `lower`.
    fn dominates(&self, lower: &Prices) -> bool {
        self.input >= lower.input
            && self.output >= lower.output
            && self.cached_or_input() >= lower.cached_or_input()
            && self.cache_write_or_input() >= lower.cache_write_or_input()
            && self.thinking_or_output() >= lower.thinking_or_output()
    }
}

/// A request-shape band of a period. The first tier whose limits the request meets
/// prices the WHOLE request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tier {
    pub name: String,
    /// Applies when `prompt_tokens <= max_prompt_tokens` (none = no limit).
    pub max_prompt_tokens: Option<u64>,
    /// Applies when `completion_tokens <= max_completion_tokens` (none = no limit).
    pub max_completion_tokens: Option<u64>,
    pub prices: Prices,
}

impl Tier {
    fn admits(&self, prompt: u64, completion: u64) -> bool {
        self.max_prompt_tokens.is_none_or(|m| prompt <= m)
            && self.max_completion_tokens.is_none_or(|m| completion <= m)
    }
}

/// A daily local-time window with cheaper prices (DeepSeek's off-peak hours).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OffPeak {
    /// Local start, inclusive.
    pub start: NaiveTime,
    /// Local end, exclusive; before `start` when the window crosses midnight.
    pub end: NaiveTime,
    /// As written in the file, e.g. "Asia/Shanghai".
    pub time_zone: String,
    /// The zone's fixed offset from UTC (only fixed-offset zones are supported).
    pub utc_offset_minutes: i32,
    /// Discounted prices, one per tier of the period.
    pub tiers: Vec<Prices>,
}

impl OffPeak {
    /// Whether the instant falls inside the window.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        let local = at + chrono::Duration::minutes(i64::from(self.utc_offset_minutes));
        let t = local.time();
        let t = NaiveTime::from_hms_opt(t.hour(), t.minute(), t.second()).unwrap_or(t);
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

/// One price period of a model: prices in force from `effective_from` (a UTC calendar
/// date) until the next period of the same region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PricePeriod {
    /// Stable id recorded in the ledger: `provider/model@date`, plus `:region` when the
    /// region is not the model's default, e.g. `deepseek/deepseek-chat@2025-02-26:intl`.
    pub id: String,
    pub effective_from: NaiveDate,
    pub region: String,
    pub currency: Currency,
    /// At least one; a period without tiers in the file has one unlimited tier.
    pub tiers: Vec<Tier>,
    /// A fixed fee per request, in nano-units of `currency`.
    pub request_fee: Option<i128>,
    pub off_peak: Option<OffPeak>,
    pub confidence: Confidence,
    /// Low confidence or otherwise unverified (the README lists these).
    pub estimate: bool,
    pub note: Option<String>,
    pub source: String,
    /// Lines of `catalog/source/prices-history.csv` this period comes from.
    pub csv_lines: Vec<u32>,
}

impl PricePeriod {
    /// The first (cheapest) tier's prices.
    pub fn base(&self) -> &Prices {
        match self.tiers.first() {
            Some(t) => &t.prices,
            None => &ZERO_PRICES,
        }
    }

    /// Index and tier that price a request of this shape.
    pub fn tier_for(&self, prompt_tokens: u64, completion_tokens: u64) -> Option<(usize, &Tier)> {
        self.tiers
            .iter()
            .enumerate()
            .find(|(_, t)| t.admits(prompt_tokens, completion_tokens))
    }

    /// Every price of every tier is zero and there is no fee.
    pub fn is_free(&self) -> bool {
        self.tiers.iter().all(|t| t.prices.is_free()) && self.request_fee.unwrap_or(0) == 0
    }
}

static ZERO_PRICES: Prices = Prices {
    input: 0,
    output: 0,
    cached_input: None,
    cache_write: None,
    thinking_output: None,
};

/// A model with its metadata and price history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelEntry {
    pub provider: String,
    pub id: String,
    /// Other names the vendor's API or docs use for the same priced model.
    pub aliases: Vec<String>,
    pub context_window: u64,
    pub max_output: u64,
    pub capabilities: Capabilities,
    pub quality: Option<Quality>,
    pub free_tier: Option<FreeTier>,
    /// Region whose periods [`ModelEntry::price_at`] uses (`cn` for DeepSeek/Moonshot/Zhipu).
    pub default_region: String,
    pub note: Option<String>,
    /// Sorted by (effective_from, region).
    pub periods: Vec<PricePeriod>,
    /// The file that first defined the model.
    pub file: String,
}

impl ModelEntry {
    /// The period of the default region in force at `at`.
    pub fn price_at(&self, at: DateTime<Utc>) -> Option<&PricePeriod> {
        self.price_at_region(at, &self.default_region)
    }

    /// The period of `region` in force at `at` (the latest one starting on or before
    /// `at`'s UTC date).
    pub fn price_at_region(&self, at: DateTime<Utc>, region: &str) -> Option<&PricePeriod> {
        let day = at.date_naive();
        self.periods
            .iter()
            .rev()
            .find(|p| p.region == region && p.effective_from <= day)
    }

    /// Regions that have periods, sorted.
    pub fn regions(&self) -> Vec<&str> {
        let mut r: Vec<&str> = self.periods.iter().map(|p| p.region.as_str()).collect();
        r.sort_unstable();
        r.dedup();
        r
    }

    /// Whether `name` is the id or an alias (case-insensitive).
    pub fn is_named(&self, name: &str) -> bool {
        self.id.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }

    fn recompute_ids(&mut self) {
        for p in &mut self.periods {
            p.id = if p.region == self.default_region {
                format!("{}/{}@{}", self.provider, self.id, p.effective_from)
            } else {
                format!(
                    "{}/{}@{}:{}",
                    self.provider, self.id, p.effective_from, p.region
                )
            };
        }
    }
}

/// Every known model and the FX table.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    models: Vec<ModelEntry>,
    fx: FxTable,
    /// (provider, lowercase id or alias) -> index in `models`.
    index: HashMap<(String, String), usize>,
    /// provider -> default region declared by its files (`default_region` at top level).
    provider_regions: HashMap<String, String>,
    files: Vec<String>,
}

impl Catalog {
    /// An empty catalog (no models, no FX rates).
    pub fn empty() -> Catalog {
        Catalog::default()
    }

    /// The catalog shipped in `catalog/`, compiled in.
    pub fn embedded() -> Result<Catalog, CatalogError> {
        let mut c = Catalog::empty();
        for (label, text) in EMBEDDED {
            c.add_toml(label, text)?;
        }
        Ok(c)
    }

    /// The embedded catalog, then every `*.toml` file of each directory (in file-name
    /// order), merged with the rule in the module docs.
    pub fn load(extra_dirs: &[PathBuf]) -> Result<Catalog, CatalogError> {
        let mut c = Catalog::embedded()?;
        for dir in extra_dirs {
            for path in toml_files(dir)? {
                let text = std::fs::read_to_string(&path).map_err(|e| CatalogError::Io {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                c.add_toml(&path.display().to_string(), &text)?;
            }
        }
        Ok(c)
    }

    /// Merges one catalog file's text (models and/or `[fx]` rates). On error the catalog
    /// is unchanged.
    pub fn add_toml(&mut self, file_label: &str, text: &str) -> Result<(), CatalogError> {
        let raw = parse::parse_file(file_label, text)?;
        let mut next = self.clone();
        next.merge(file_label, raw)?;
        next.files.push(file_label.to_owned());
        *self = next;
        Ok(())
    }

    /// The model named `model` (id or alias, case-insensitive) of `provider`.
    pub fn find(&self, provider: &str, model: &str) -> Option<&ModelEntry> {
        let key = (provider.to_ascii_lowercase(), model.to_ascii_lowercase());
        self.index.get(&key).and_then(|&i| self.models.get(i))
    }

    /// `provider/model`, or a bare model name looked up across providers (the first
    /// provider in catalog order that knows it).
    pub fn find_any(&self, name: &str) -> Option<&ModelEntry> {
        if let Some((p, m)) = name.split_once('/') {
            if let Some(e) = self.find(p, m) {
                return Some(e);
            }
        }
        self.models.iter().find(|e| e.is_named(name))
    }

    pub fn models(&self) -> impl Iterator<Item = &ModelEntry> {
        self.models.iter()
    }

    pub fn fx(&self) -> &FxTable {
        &self.fx
    }

    pub fn fx_mut(&mut self) -> &mut FxTable {
        &mut self.fx
    }

    /// Labels of the files merged so far, in order.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    fn merge(&mut self, file: &str, raw: parse::RawFile) -> Result<(), CatalogError> {
        let invalid = |model: Option<&str>, field: String, message: String| CatalogError::Invalid {
            file: file.to_owned(),
            model: model.map(str::to_owned),
            field,
            message,
        };
        if let Some(fx) = raw.fx {
            if let Some(s) = &fx.source {
                self.fx.set_source(s);
            }
            for m in fx.months {
                for (base, quote, entry) in m.quotes {
                    self.fx
                        .set_entry(m.month, base, quote, entry)
                        .map_err(|e| {
                            invalid(None, format!("fx.months[{}]", m.index), e.to_string())
                        })?;
                }
            }
        }
        if raw.models.is_empty() {
            return Ok(());
        }
        let provider = match raw.provider {
            Some(p) => p,
            None => {
                return Err(invalid(
                    None,
                    "provider".to_owned(),
                    "is missing; a file with models must name its provider".to_owned(),
                ))
            }
        };
        if let Some(r) = &raw.default_region {
            self.provider_regions.insert(provider.clone(), r.clone());
        }
        let file_region = self
            .provider_regions
            .get(&provider)
            .cloned()
            .unwrap_or_else(|| DEFAULT_REGION.to_owned());
        for m in raw.models {
            let id = m.id.clone();
            let err = |field: String, message: String| invalid(Some(&id), field, message);
            let existing = self
                .index
                .get(&(provider.clone(), m.id.to_ascii_lowercase()))
                .copied();
            let mut entry = match existing {
                Some(i) => self.models[i].clone(),
                None => {
                    let need = |v: Option<u64>, f: &str| {
                        v.ok_or_else(|| {
                            err(
                                f.to_owned(),
                                "is missing (required for a new model)".to_owned(),
                            )
                        })
                    };
                    ModelEntry {
                        provider: provider.clone(),
                        id: m.id.clone(),
                        aliases: Vec::new(),
                        context_window: need(m.context_window, "context_window")?,
                        max_output: need(m.max_output, "max_output")?,
                        capabilities: Capabilities {
                            streaming: true,
                            ..Capabilities::default()
                        },
                        quality: None,
                        free_tier: None,
                        default_region: m
                            .default_region
                            .clone()
                            .unwrap_or_else(|| file_region.clone()),
                        note: None,
                        periods: Vec::new(),
                        file: file.to_owned(),
                    }
                }
            };
            if let Some(v) = m.context_window {
                entry.context_window = v;
            }
            if let Some(v) = m.max_output {
                entry.max_output = v;
            }
            if let Some(c) = m.capabilities {
                c.apply(&mut entry.capabilities);
            }
            if let Some(r) = m.default_region {
                entry.default_region = r;
            }
            if m.note.is_some() {
                entry.note = m.note;
            }
            if m.quality.is_some() {
                entry.quality = m.quality;
            }
            if m.free_tier.is_some() {
                entry.free_tier = m.free_tier;
            }
            for (i, a) in m.aliases.iter().enumerate() {
                let key = (provider.clone(), a.to_ascii_lowercase());
                match self.index.get(&key) {
                    Some(&j) if Some(j) != existing => {
                        return Err(err(
                            format!("aliases[{i}]"),
                            format!("`{a}` already names model {}", self.models[j].id),
                        ))
                    }
                    _ => {}
                }
                if !entry.is_named(a) {
                    entry.aliases.push(a.clone());
                }
            }
            // Periods of this file: resolve regions, check order and overlap, then merge.
            let mut seen: Vec<(NaiveDate, String, usize)> = Vec::new();
            let mut last: Option<(NaiveDate, usize)> = None;
            for p in m.periods {
                let region = p
                    .region
                    .clone()
                    .unwrap_or_else(|| entry.default_region.clone());
                if let Some((d, j)) = last {
                    if p.effective_from < d {
                        return Err(err(
                            format!("periods[{}].effective_from", p.index),
                            format!(
                                "{} is earlier than periods[{j}] ({d}); periods must be sorted by date",
                                p.effective_from
                            ),
                        ));
                    }
                }
                last = Some((p.effective_from, p.index));
                if let Some((_, _, j)) = seen
                    .iter()
                    .find(|(d, r, _)| *d == p.effective_from && *r == region)
                {
                    return Err(err(
                        format!("periods[{}].effective_from", p.index),
                        format!("{} overlaps periods[{j}]", p.effective_from),
                    ));
                }
                seen.push((p.effective_from, region.clone(), p.index));
                let period = PricePeriod {
                    id: String::new(),
                    effective_from: p.effective_from,
                    region,
                    currency: p.currency,
                    tiers: p.tiers,
                    request_fee: p.request_fee,
                    off_peak: p.off_peak,
                    confidence: p.confidence,
                    estimate: p.estimate,
                    note: p.note,
                    source: p.source,
                    csv_lines: p.csv_lines,
                };
                match entry.periods.iter_mut().find(|q| {
                    q.effective_from == period.effective_from && q.region == period.region
                }) {
                    Some(q) => *q = period,
                    None => entry.periods.push(period),
                }
            }
            entry
                .periods
                .sort_by(|a, b| (a.effective_from, &a.region).cmp(&(b.effective_from, &b.region)));
            if entry.periods.is_empty() {
                return Err(err(
                    "periods".to_owned(),
                    "is empty; a model needs at least one price period".to_owned(),
                ));
            }
            if !entry
                .periods
                .iter()
                .any(|p| p.region == entry.default_region)
            {
                return Err(err(
                    "default_region".to_owned(),
                    format!(
                        "`{}` has no price period (regions: {})",
                        entry.default_region,
                        entry.regions().join(", ")
                    ),
                ));
            }
            entry.recompute_ids();
            let idx = match existing {
                Some(i) => {
                    self.models[i] = entry;
                    i
                }
                None => {
                    self.models.push(entry);
                    self.models.len() - 1
                }
            };
            let e = &self.models[idx];
            for name in std::iter::once(&e.id).chain(e.aliases.iter()) {
                self.index
                    .insert((provider.clone(), name.to_ascii_lowercase()), idx);
            }
        }
        Ok(())
    }
}

fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, CatalogError> {
    let io = |e: std::io::Error| CatalogError::Io {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    let mut files = Vec::new();
    for ent in std::fs::read_dir(dir).map_err(io)? {
        let p = ent.map_err(io)?.path();
        if p.is_file() && p.extension().is_some_and(|x| x == "toml") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests;
