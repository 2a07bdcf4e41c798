//! Reads one catalog TOML file into raw structs: exact decimal text, every key checked, errors with paths.
//!
//! `toml_edit` keeps the text of each number as written, so `0.075` is read as the
//! digits `0.075`, never through an `f64`. Unknown keys are errors.

use chrono::{NaiveDate, NaiveTime};
use toml_edit::{DocumentMut, Item, TableLike, Value};

use super::{
    Capabilities, CatalogError, Confidence, FreeTier, FxEntry, OffPeak, Prices, Quality, Tier,
    YearMonth,
};
use crate::money::{parse_nanos, Currency, Decimal};

pub(super) struct RawFile {
    pub provider: Option<String>,
    pub default_region: Option<String>,
    pub models: Vec<RawModel>,
    pub fx: Option<RawFx>,
}

pub(super) struct RawModel {
    pub id: String,
    pub aliases: Vec<String>,
    pub context_window: Option<u64>,
    pub max_output: Option<u64>,
    pub capabilities: Option<RawCaps>,
    pub default_region: Option<String>,
    pub note: Option<String>,
    pub quality: Option<Quality>,
    pub free_tier: Option<FreeTier>,
    pub periods: Vec<RawPeriod>,
}

/// Capability flags given in a file; absent flags keep their old (or default) value.
pub(super) struct RawCaps {
    tools: Option<bool>,
    vision: Option<bool>,
    json_mode: Option<bool>,
    streaming: Option<bool>,
}

impl RawCaps {
    pub fn apply(&self, c: &mut Capabilities) {
        let set = |dst: &mut bool, v: Option<bool>| {
            if let Some(v) = v {
                *dst = v;
            }
        };
        set(&mut c.tools, self.tools);
        set(&mut c.vision, self.vision);
        set(&mut c.json_mode, self.json_mode);
        set(&mut c.streaming, self.streaming);
    }
}

pub(super) struct RawPeriod {
    pub index: usize,
    pub effective_from: NaiveDate,
    pub region: Option<String>,
    pub currency: Currency,
    pub tiers: Vec<Tier>,
    pub request_fee: Option<i128>,
    pub off_peak: Option<OffPeak>,
    pub confidence: Confidence,
    pub estimate: bool,
    pub note: Option<String>,
    pub source: String,
    pub csv_lines: Vec<u32>,
}

pub(super) struct RawFx {
    pub source: Option<String>,
    pub months: Vec<RawFxMonth>,
}

pub(super) struct RawFxMonth {
    pub index: usize,
    pub month: YearMonth,
    pub quotes: Vec<(Currency, Currency, FxEntry)>,
}

const FILE_KEYS: &[&str] = &["provider", "default_region", "models", "fx"];
const MODEL_KEYS: &[&str] = &[
    "id",
    "aliases",
    "context_window",
    "max_output",
    "capabilities",
    "default_region",
    "note",
    "quality",
    "free_tier",
    "periods",
];
const CAP_KEYS: &[&str] = &["tools", "vision", "json_mode", "streaming"];
const QUALITY_KEYS: &[&str] = &["score", "metric", "source", "as_of"];
const FREE_KEYS: &[&str] = &[
    "rpm",
    "tpm",
    "rpd",
    "daily_tokens",
    "concurrency",
    "quota_tokens",
    "quota_days",
    "estimate",
    "note",
    "source",
];
const PRICE_KEYS: &[&str] = &[
    "input",
    "output",
    "cached_input",
    "cache_write",
    "thinking_output",
];
const PERIOD_KEYS: &[&str] = &[
    "effective_from",
    "region",
    "currency",
    "input",
    "output",
    "cached_input",
    "cache_write",
    "thinking_output",
    "tiers",
    "request_fee",
    "off_peak",
    "confidence",
    "estimate",
    "note",
    "source",
    "csv_lines",
];
const TIER_KEYS: &[&str] = &[
    "name",
    "max_prompt_tokens",
    "max_completion_tokens",
    "input",
    "output",
    "cached_input",
    "cache_write",
    "thinking_output",
];
const OFF_PEAK_KEYS: &[&str] = &[
    "start",
    "end",
    "time_zone",
    "discount_percent",
    "input",
    "output",
    "cached_input",
    "cache_write",
    "thinking_output",
];
const FX_KEYS: &[&str] = &["source", "months"];
const FX_MONTH_KEYS: &[&str] = &[
    "month", "usd_cny", "eur_usd", "eur_cny", "fixings", "estimate", "note", "source",
];

/// Where an error is: the file and, once known, the model.
struct Cx<'a> {
    file: &'a str,
    model: Option<&'a str>,
}

impl Cx<'_> {
    fn err(&self, field: &str, message: impl Into<String>) -> CatalogError {
        CatalogError::Invalid {
            file: self.file.to_owned(),
            model: self.model.map(str::to_owned),
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn check_keys(
    cx: &Cx,
    path: &str,
    t: &dyn TableLike,
    allowed: &[&str],
) -> Result<(), CatalogError> {
    for (k, _) in t.iter() {
        if !allowed.contains(&k) {
            return Err(cx.err(
                &join(path, k),
                format!(
                    "is not a known key (expected one of: {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn value<'a>(t: &'a dyn TableLike, key: &str) -> Option<&'a Value> {
    t.get(key).and_then(Item::as_value)
}

fn get_str(
    cx: &Cx,
    path: &str,
    t: &dyn TableLike,
    key: &str,
) -> Result<Option<String>, CatalogError> {
    match t.get(key) {
        None => Ok(None),
        Some(it) => match it.as_str() {
            Some(s) => Ok(Some(s.to_owned())),
            None => Err(cx.err(&join(path, key), "must be a string")),
        },
    }
}

fn get_u64(cx: &Cx, path: &str, t: &dyn TableLike, key: &str) -> Result<Option<u64>, CatalogError> {
    match t.get(key) {
        None => Ok(None),
        Some(it) => match it.as_integer().and_then(|i| u64::try_from(i).ok()) {
            Some(v) => Ok(Some(v)),
            None => Err(cx.err(&join(path, key), "must be a non-negative integer")),
        },
    }
}

fn get_bool(
    cx: &Cx,
    path: &str,
    t: &dyn TableLike,
    key: &str,
) -> Result<Option<bool>, CatalogError> {
    match t.get(key) {
        None => Ok(None),
        Some(it) => match it.as_bool() {
            Some(v) => Ok(Some(v)),
            None => Err(cx.err(&join(path, key), "must be true or false")),
        },
    }
}

/// The decimal text of a string, integer or float value, exactly as written.
fn number_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.value().trim().to_owned()),
        Value::Integer(i) => Some(i.value().to_string()),
        Value::Float(f) => f
            .as_repr()
            .and_then(|r| r.as_raw().as_str())
            .map(|s| s.trim().to_owned()),
        _ => None,
    }
}

/// A price: decimal text or a TOML number, exact to the nano-unit, never negative.
fn get_price(
    cx: &Cx,
    path: &str,
    t: &dyn TableLike,
    key: &str,
) -> Result<Option<i128>, CatalogError> {
    let field = join(path, key);
    let Some(it) = t.get(key) else {
        return Ok(None);
    };
    let text = it.as_value().and_then(number_text).ok_or_else(|| {
        cx.err(
            &field,
            "must be a decimal number or a decimal string like \"0.8\"",
        )
    })?;
    let nanos = parse_nanos(&text).map_err(|e| cx.err(&field, e.to_string()))?;
    if nanos < 0 {
        return Err(cx.err(&field, format!("is negative ({text}); prices must be >= 0")));
    }
    Ok(Some(nanos))
}

fn get_decimal(
    cx: &Cx,
    path: &str,
    t: &dyn TableLike,
    key: &str,
) -> Result<Option<Decimal>, CatalogError> {
    let field = join(path, key);
    let Some(it) = t.get(key) else {
        return Ok(None);
    };
    let text = it
        .as_value()
        .and_then(number_text)
        .ok_or_else(|| cx.err(&field, "must be a decimal number or a decimal string"))?;
    Decimal::parse(&text)
        .map(Some)
        .map_err(|e| cx.err(&field, e.to_string()))
}

fn get_date(
    cx: &Cx,
    path: &str,
    t: &dyn TableLike,
    key: &str,
) -> Result<Option<NaiveDate>, CatalogError> {
    let field = join(path, key);
    let bad = || cx.err(&field, "must be a date like 2024-05-11");
    match value(t, key) {
        None if t.get(key).is_none() => Ok(None),
        None => Err(bad()),
        Some(Value::Datetime(dt)) => {
            let dt = dt.value();
            match (dt.date, dt.time, dt.offset) {
                (Some(d), None, None) => {
                    NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
                        .map(Some)
                        .ok_or_else(bad)
                }
                _ => Err(bad()),
            }
        }
        Some(Value::String(s)) => NaiveDate::parse_from_str(s.value().trim(), "%Y-%m-%d")
            .map(Some)
            .map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

fn get_str_list(
    cx: &Cx,
    path: &str,
    t: &dyn TableLike,
    key: &str,
) -> Result<Vec<String>, CatalogError> {
    let field = join(path, key);
    let Some(it) = t.get(key) else {
        return Ok(Vec::new());
    };
    let arr = it
        .as_array()
        .ok_or_else(|| cx.err(&field, "must be a list of strings"))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| cx.err(&format!("{field}[{i}]"), "must be a non-empty string"))
        })
        .collect()
}

/// `[[key]]` tables or `key = [{..}, ..]` inline tables, uniformly.
fn table_list<'a>(
    cx: &Cx,
    path: &str,
    t: &'a dyn TableLike,
    key: &str,
) -> Result<Vec<&'a dyn TableLike>, CatalogError> {
    let field = join(path, key);
    match t.get(key) {
        None => Ok(Vec::new()),
        Some(Item::ArrayOfTables(a)) => Ok(a.iter().map(|t| t as &dyn TableLike).collect()),
        Some(Item::Value(Value::Array(a))) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_inline_table()
                    .map(|t| t as &dyn TableLike)
                    .ok_or_else(|| cx.err(&format!("{field}[{i}]"), "must be a table"))
            })
            .collect(),
        Some(_) => Err(cx.err(&field, "must be a list of tables")),
    }
}

fn sub_table<'a>(
    cx: &Cx,
    path: &str,
    t: &'a dyn TableLike,
    key: &str,
) -> Result<Option<&'a dyn TableLike>, CatalogError> {
    match t.get(key) {
        None => Ok(None),
        Some(it) => it
            .as_table_like()
            .map(Some)
            .ok_or_else(|| cx.err(&join(path, key), "must be a table")),
    }
}

fn req<T>(cx: &Cx, path: &str, key: &str, v: Option<T>) -> Result<T, CatalogError> {
    v.ok_or_else(|| cx.err(&join(path, key), "is missing"))
}

pub(super) fn parse_file(file: &str, text: &str) -> Result<RawFile, CatalogError> {
    let doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| CatalogError::Parse {
            file: file.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
    let root = doc.as_table() as &dyn TableLike;
    let cx = Cx { file, model: None };
    check_keys(&cx, "", root, FILE_KEYS)?;
    let provider = get_str(&cx, "", root, "provider")?.map(|p| p.trim().to_ascii_lowercase());
    if let Some(p) = &provider {
        if p.is_empty()
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(cx.err(
                "provider",
                format!("`{p}` is not a provider id (letters, digits, _ and -)"),
            ));
        }
    }
    let default_region = get_str(&cx, "", root, "default_region")?;
    let mut models = Vec::new();
    for (i, t) in table_list(&cx, "", root, "models")?.into_iter().enumerate() {
        models.push(parse_model(file, i, t)?);
    }
    let mut ids: Vec<String> = Vec::new();
    for m in &models {
        let low = m.id.to_ascii_lowercase();
        if ids.contains(&low) {
            return Err(Cx {
                file,
                model: Some(&m.id),
            }
            .err("id", "appears twice in this file"));
        }
        ids.push(low);
    }
    let fx = match sub_table(&cx, "", root, "fx")? {
        Some(t) => Some(parse_fx(&cx, t)?),
        None => None,
    };
    Ok(RawFile {
        provider,
        default_region,
        models,
        fx,
    })
}

fn parse_model(file: &str, index: usize, t: &dyn TableLike) -> Result<RawModel, CatalogError> {
    let anon = Cx { file, model: None };
    let id = get_str(&anon, &format!("models[{index}]"), t, "id")?
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anon.err(&format!("models[{index}].id"), "is missing"))?;
    let cx = Cx {
        file,
        model: Some(&id),
    };
    check_keys(&cx, "", t, MODEL_KEYS)?;
    let capabilities = match sub_table(&cx, "", t, "capabilities")? {
        Some(c) => {
            check_keys(&cx, "capabilities", c, CAP_KEYS)?;
            Some(RawCaps {
                tools: get_bool(&cx, "capabilities", c, "tools")?,
                vision: get_bool(&cx, "capabilities", c, "vision")?,
                json_mode: get_bool(&cx, "capabilities", c, "json_mode")?,
                streaming: get_bool(&cx, "capabilities", c, "streaming")?,
            })
        }
        None => None,
    };
    let quality = match sub_table(&cx, "", t, "quality")? {
        Some(q) => {
            check_keys(&cx, "quality", q, QUALITY_KEYS)?;
            Some(Quality {
                score: req(
                    &cx,
                    "quality",
                    "score",
                    get_decimal(&cx, "quality", q, "score")?,
                )?,
                metric: req(
                    &cx,
                    "quality",
                    "metric",
                    get_str(&cx, "quality", q, "metric")?,
                )?,
                source: nonempty(
                    &cx,
                    "quality",
                    "source",
                    get_str(&cx, "quality", q, "source")?,
                )?,
                as_of: get_date(&cx, "quality", q, "as_of")?,
            })
        }
        None => None,
    };
    let free_tier = match sub_table(&cx, "", t, "free_tier")? {
        Some(f) => {
            let p = "free_tier";
            check_keys(&cx, p, f, FREE_KEYS)?;
            Some(FreeTier {
                rpm: get_u64(&cx, p, f, "rpm")?,
                tpm: get_u64(&cx, p, f, "tpm")?,
                rpd: get_u64(&cx, p, f, "rpd")?,
                daily_tokens: get_u64(&cx, p, f, "daily_tokens")?,
                concurrency: get_u64(&cx, p, f, "concurrency")?,
                quota_tokens: get_u64(&cx, p, f, "quota_tokens")?,
                quota_days: get_u64(&cx, p, f, "quota_days")?,
                estimate: get_bool(&cx, p, f, "estimate")?.unwrap_or(false),
                note: get_str(&cx, p, f, "note")?,
                source: nonempty(&cx, p, "source", get_str(&cx, p, f, "source")?)?,
            })
        }
        None => None,
    };
    let mut periods = Vec::new();
    for (i, p) in table_list(&cx, "", t, "periods")?.into_iter().enumerate() {
        periods.push(parse_period(&cx, i, p)?);
    }
    Ok(RawModel {
        aliases: get_str_list(&cx, "", t, "aliases")?,
        context_window: get_u64(&cx, "", t, "context_window")?,
        max_output: get_u64(&cx, "", t, "max_output")?,
        default_region: get_str(&cx, "", t, "default_region")?,
        note: get_str(&cx, "", t, "note")?,
        capabilities,
        quality,
        free_tier,
        periods,
        id,
    })
}

fn nonempty(cx: &Cx, path: &str, key: &str, v: Option<String>) -> Result<String, CatalogError> {
    match v {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(cx.err(&join(path, key), "is missing; every entry needs a source")),
    }
}

fn parse_prices(cx: &Cx, path: &str, t: &dyn TableLike) -> Result<Prices, CatalogError> {
    Ok(Prices {
        input: req(cx, path, "input", get_price(cx, path, t, "input")?)?,
        output: req(cx, path, "output", get_price(cx, path, t, "output")?)?,
        cached_input: get_price(cx, path, t, "cached_input")?,
        cache_write: get_price(cx, path, t, "cache_write")?,
        thinking_output: get_price(cx, path, t, "thinking_output")?,
    })
}

fn parse_period(cx: &Cx, index: usize, t: &dyn TableLike) -> Result<RawPeriod, CatalogError> {
    let path = format!("periods[{index}]");
    let p = path.as_str();
    check_keys(cx, p, t, PERIOD_KEYS)?;
    let effective_from = req(
        cx,
        p,
        "effective_from",
        get_date(cx, p, t, "effective_from")?,
    )?;
    let cur_text = req(cx, p, "currency", get_str(cx, p, t, "currency")?)?;
    let currency: Currency = cur_text
        .parse()
        .map_err(|e: crate::money::MoneyError| cx.err(&join(p, "currency"), e.to_string()))?;
    let tier_tables = table_list(cx, p, t, "tiers")?;
    let tiers = if tier_tables.is_empty() {
        if t.get("tiers").is_some() {
            return Err(cx.err(&join(p, "tiers"), "is empty"));
        }
        vec![Tier {
            name: "all".to_owned(),
            max_prompt_tokens: None,
            max_completion_tokens: None,
            prices: parse_prices(cx, p, t)?,
        }]
    } else {
        if let Some(k) = PRICE_KEYS.iter().find(|k| t.get(k).is_some()) {
            return Err(cx.err(
                &join(p, k),
                "cannot be combined with tiers; put the prices in the tiers",
            ));
        }
        let mut tiers = Vec::new();
        for (i, tt) in tier_tables.into_iter().enumerate() {
            let tp = format!("{p}.tiers[{i}]");
            check_keys(cx, &tp, tt, TIER_KEYS)?;
            let max_prompt_tokens = get_u64(cx, &tp, tt, "max_prompt_tokens")?;
            let max_completion_tokens = get_u64(cx, &tp, tt, "max_completion_tokens")?;
            let name = get_str(cx, &tp, tt, "name")?.unwrap_or_else(|| {
                match (max_prompt_tokens, max_completion_tokens) {
                    (Some(mp), Some(mc)) => format!("prompt<={mp},completion<={mc}"),
                    (Some(mp), None) => format!("prompt<={mp}"),
                    (None, Some(mc)) => format!("completion<={mc}"),
                    (None, None) => String::new(),
                }
            });
            tiers.push(Tier {
                name,
                max_prompt_tokens,
                max_completion_tokens,
                prices: parse_prices(cx, &tp, tt)?,
            });
        }
        validate_tiers(cx, p, &mut tiers)?;
        tiers
    };
    let off_peak = match sub_table(cx, p, t, "off_peak")? {
        Some(o) => Some(parse_off_peak(cx, &join(p, "off_peak"), o, &tiers)?),
        None => None,
    };
    let confidence = match get_str(cx, p, t, "confidence")?.as_deref() {
        Some("high") => Confidence::High,
        Some("med") | Some("medium") => Confidence::Med,
        Some("low") => Confidence::Low,
        Some(other) => {
            return Err(cx.err(
                &join(p, "confidence"),
                format!("`{other}` is not high, med or low"),
            ))
        }
        None => return Err(cx.err(&join(p, "confidence"), "is missing (high, med or low)")),
    };
    let estimate = get_bool(cx, p, t, "estimate")?.unwrap_or(confidence == Confidence::Low);
    let csv_lines = match t.get("csv_lines") {
        None => Vec::new(),
        Some(it) => it
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|v| v.as_integer().and_then(|i| u32::try_from(i).ok()))
                    .collect::<Option<Vec<u32>>>()
            })
            .ok_or_else(|| cx.err(&join(p, "csv_lines"), "must be a list of line numbers"))?,
    };
    let source = get_str(cx, p, t, "source")?
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            cx.err(
                &join(p, "source"),
                "is missing; every price period needs a source",
            )
        })?;
    Ok(RawPeriod {
        index,
        effective_from,
        region: get_str(cx, p, t, "region")?.map(|r| r.trim().to_ascii_lowercase()),
        currency,
        tiers,
        request_fee: get_price(cx, p, t, "request_fee")?,
        off_peak,
        confidence,
        estimate,
        note: get_str(cx, p, t, "note")?,
        source,
        csv_lines,
    })
}

/// Tiers must be ordered by prompt limit, the last one unlimited, and never cheaper than
/// an earlier tier (so a longer request never costs less).
fn validate_tiers(cx: &Cx, p: &str, tiers: &mut [Tier]) -> Result<(), CatalogError> {
    let n = tiers.len();
    for i in 0..n {
        let f = format!("{p}.tiers[{i}]");
        let t = &tiers[i];
        if i + 1 == n && (t.max_prompt_tokens.is_some() || t.max_completion_tokens.is_some()) {
            return Err(cx.err(
                &f,
                "is the last tier and must have no max_prompt_tokens/max_completion_tokens",
            ));
        }
        if i + 1 < n && t.max_prompt_tokens.is_none() && t.max_completion_tokens.is_none() {
            return Err(cx.err(&f, "has no limit but is not the last tier"));
        }
        if i > 0 {
            let prev = &tiers[i - 1];
            let (a, b) = (
                prev.max_prompt_tokens.unwrap_or(u64::MAX),
                t.max_prompt_tokens.unwrap_or(u64::MAX),
            );
            if b < a || (b == a && prev.max_completion_tokens.is_none()) {
                return Err(cx.err(
                    &format!("{f}.max_prompt_tokens"),
                    format!(
                        "tiers must be ordered by max_prompt_tokens (tiers[{}] allows {a})",
                        i - 1
                    ),
                ));
            }
            if !t.prices.dominates(&prev.prices) {
                return Err(cx.err(
                    &f,
                    format!(
                        "is cheaper than tiers[{}]; a later tier may not be cheaper",
                        i - 1
                    ),
                ));
            }
        }
    }
    for (i, t) in tiers.iter_mut().enumerate() {
        if t.name.is_empty() {
            t.name = if i == 0 {
                "all".to_owned()
            } else {
                format!("tier{}", i + 1)
            };
        }
    }
    // An unlimited last tier after limited ones reads better as "above the previous limit".
    if n > 1 {
        if let (Some(prev_max), Some(last)) = (tiers[n - 2].max_prompt_tokens, tiers.last_mut()) {
            if last.name.starts_with("tier") {
                last.name = format!("prompt>{prev_max}");
            }
        }
    }
    Ok(())
}

/// Fixed-offset zones accepted in `time_zone` (minutes east of UTC): a few named zones
/// without daylight saving (`Asia/Shanghai`, `UTC`, ...) and offsets like `+08:00`.
pub fn zone_offset(tz: &str) -> Option<i32> {
    let known = [
        ("Asia/Shanghai", 480),
        ("Asia/Chongqing", 480),
        ("Asia/Hong_Kong", 480),
        ("Asia/Singapore", 480),
        ("Asia/Taipei", 480),
        ("Asia/Tokyo", 540),
        ("UTC", 0),
        ("Etc/UTC", 0),
    ];
    if let Some((_, off)) = known.iter().find(|(n, _)| n.eq_ignore_ascii_case(tz)) {
        return Some(*off);
    }
    // "+08:00" / "-05:30" / "UTC+8"
    let s = tz.strip_prefix("UTC").unwrap_or(tz);
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let h: i32 = h.parse().ok()?;
    let m: i32 = m.parse().ok()?;
    (h <= 14 && m < 60).then_some(sign * (h * 60 + m))
}

fn parse_off_peak(
    cx: &Cx,
    p: &str,
    t: &dyn TableLike,
    tiers: &[Tier],
) -> Result<OffPeak, CatalogError> {
    check_keys(cx, p, t, OFF_PEAK_KEYS)?;
    let time = |key: &str| -> Result<NaiveTime, CatalogError> {
        let s = req(cx, p, key, get_str(cx, p, t, key)?)?;
        NaiveTime::parse_from_str(&s, "%H:%M")
            .map_err(|_| cx.err(&join(p, key), format!("`{s}` is not a time like 00:30")))
    };
    let start = time("start")?;
    let end = time("end")?;
    if start == end {
        return Err(cx.err(&join(p, "end"), "equals start; the window would be empty"));
    }
    let time_zone = req(cx, p, "time_zone", get_str(cx, p, t, "time_zone")?)?;
    let utc_offset_minutes = zone_offset(&time_zone).ok_or_else(|| {
        cx.err(
            &join(p, "time_zone"),
            format!("`{time_zone}` is not a supported fixed-offset zone (e.g. Asia/Shanghai, UTC, +08:00)"),
        )
    })?;
    let pct = get_decimal(cx, p, t, "discount_percent")?;
    let has_prices = PRICE_KEYS.iter().any(|k| t.get(k).is_some());
    let off_tiers = match (pct, has_prices) {
        (Some(_), true) => {
            return Err(cx.err(
                &join(p, "discount_percent"),
                "cannot be combined with explicit off-peak prices",
            ))
        }
        (None, false) => {
            return Err(cx.err(p, "needs either discount_percent or input/output prices"));
        }
        (None, true) => {
            if tiers.len() != 1 {
                return Err(cx.err(p, "explicit off-peak prices need an untiered period; use discount_percent with tiers"));
            }
            vec![parse_prices(cx, p, t)?]
        }
        (Some(pct), false) => {
            let hundred = Decimal::from_int(100);
            if pct.is_negative() || pct > hundred {
                return Err(cx.err(&join(p, "discount_percent"), "must be between 0 and 100"));
            }
            let f = join(p, "discount_percent");
            let scale = 10i128.pow(pct.scale());
            let keep = 100 * scale - pct.mantissa(); // (100 - pct) * 10^scale
            let den = 100 * scale;
            let apply = |v: i128| -> Result<i128, CatalogError> {
                let num = v.checked_mul(keep).ok_or_else(|| cx.err(&f, "overflows"))?;
                if num % den != 0 {
                    return Err(cx.err(
                        &f,
                        "gives a price finer than 1e-9; write explicit off-peak prices",
                    ));
                }
                Ok(num / den)
            };
            let opt = |v: Option<i128>| v.map(apply).transpose();
            tiers
                .iter()
                .map(|tier| {
                    let pr = &tier.prices;
                    Ok(Prices {
                        input: apply(pr.input)?,
                        output: apply(pr.output)?,
                        cached_input: opt(pr.cached_input)?,
                        cache_write: opt(pr.cache_write)?,
                        thinking_output: opt(pr.thinking_output)?,
                    })
                })
                .collect::<Result<Vec<_>, CatalogError>>()?
        }
    };
    for (i, (o, tier)) in off_tiers.iter().zip(tiers).enumerate() {
        if !tier.prices.dominates(o) {
            return Err(cx.err(
                p,
                format!(
                    "is dearer than the standard price of tiers[{i}]; off-peak must be a discount"
                ),
            ));
        }
    }
    Ok(OffPeak {
        start,
        end,
        time_zone,
        utc_offset_minutes,
        tiers: off_tiers,
    })
}

fn parse_fx(cx: &Cx, t: &dyn TableLike) -> Result<RawFx, CatalogError> {
    check_keys(cx, "fx", t, FX_KEYS)?;
    let source = get_str(cx, "fx", t, "source")?;
    let mut months = Vec::new();
    for (i, m) in table_list(cx, "fx", t, "months")?.into_iter().enumerate() {
        let p = format!("fx.months[{i}]");
        check_keys(cx, &p, m, FX_MONTH_KEYS)?;
        let mtext = req(cx, &p, "month", get_str(cx, &p, m, "month")?)?;
        let month: YearMonth = mtext
            .parse()
            .map_err(|e: super::FxError| cx.err(&join(&p, "month"), e.to_string()))?;
        let estimate = get_bool(cx, &p, m, "estimate")?.unwrap_or(false);
        let note = get_str(cx, &p, m, "note")?;
        let msource = get_str(cx, &p, m, "source")?.or_else(|| source.clone());
        let _ = get_u64(cx, &p, m, "fixings")?;
        let mut quotes = Vec::new();
        for (key, base, quote) in [
            ("usd_cny", Currency::Usd, Currency::Cny),
            ("eur_usd", Currency::Eur, Currency::Usd),
            ("eur_cny", Currency::Eur, Currency::Cny),
        ] {
            if let Some(rate) = get_decimal(cx, &p, m, key)? {
                if rate.is_negative() || rate.is_zero() {
                    return Err(cx.err(&join(&p, key), "must be greater than zero"));
                }
                quotes.push((
                    base,
                    quote,
                    FxEntry {
                        rate,
                        estimate,
                        note: note.clone(),
                        source: msource.clone(),
                    },
                ));
            }
        }
        if quotes.is_empty() {
            return Err(cx.err(&p, "has no rate (usd_cny, eur_usd or eur_cny)"));
        }
        months.push(RawFxMonth {
            index: i,
            month,
            quotes,
        });
    }
    Ok(RawFx { source, months })
}
