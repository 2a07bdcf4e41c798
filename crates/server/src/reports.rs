//! Usage reports from the ledger, for `tollgate usage` and `GET /admin/usage`: totals
//! grouped by key, model, provider or day, or one line per request, in one currency
//! (each row converted at the FX rate of its own date).

use chrono::{DateTime, Utc};
use serde::Serialize;
use tollgate_core::money::format_nanos;
use tollgate_core::{Catalog, Currency, Money};
use tollgate_store::{GroupBy, LedgerRow};

/// One line of a grouped report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageLine {
    /// The group's name (key name, `provider/model`, provider, day) or the request id.
    pub group: String,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    /// Requests whose usage was estimated by tollgate (the vendor reported none).
    pub estimated: u64,
    /// Total cost in `currency`, exact decimal text.
    pub cost: String,
    pub currency: String,
    /// For `--by request`: time, key, model, status and the native cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<RequestDetail>,
    #[serde(skip)]
    cost_nanos: i128,
}

/// Per-request columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestDetail {
    pub time: String,
    pub key: String,
    pub requested_model: String,
    pub model: String,
    pub status: String,
    pub usage_source: String,
    pub native_cost: String,
    pub price_id: Option<String>,
}

/// The report: lines and a total line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageReport {
    pub by: String,
    pub currency: String,
    pub lines: Vec<UsageLine>,
    pub total: UsageLine,
}

fn cost_in(catalog: &Catalog, r: &LedgerRow, to: Currency) -> Result<i128, String> {
    if r.cost_nanos == 0 {
        return Ok(0);
    }
    if r.cost_currency == to.as_str() {
        return Ok(i128::from(r.cost_nanos));
    }
    if r.report_currency == to.as_str() {
        return Ok(i128::from(r.report_cost_nanos));
    }
    let from: Currency = r
        .cost_currency
        .parse()
        .map_err(|_| format!("row {}: unknown currency", r.id))?;
    let at = DateTime::<Utc>::from_timestamp_millis(r.ts_ms)
        .unwrap_or_default()
        .date_naive();
    catalog
        .fx()
        .convert(&Money::new(i128::from(r.cost_nanos), from), to, at)
        .map(|c| c.amount.nanos)
        .map_err(|e| e.to_string())
}

fn empty(group: String, currency: Currency) -> UsageLine {
    UsageLine {
        group,
        requests: 0,
        errors: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        cached_tokens: 0,
        estimated: 0,
        cost: String::new(),
        currency: currency.to_string(),
        detail: None,
        cost_nanos: 0,
    }
}

fn add(l: &mut UsageLine, r: &LedgerRow, nanos: i128) {
    l.requests += 1;
    if r.status != "ok" {
        l.errors += 1;
    }
    l.prompt_tokens += r.prompt_tokens.max(0) as u64;
    l.completion_tokens += r.completion_tokens.max(0) as u64;
    l.cached_tokens += r.cached_tokens.max(0) as u64;
    if r.usage_source == "estimated" {
        l.estimated += 1;
    }
    l.cost_nanos += nanos;
}

/// Groups `rows` by `by`, costs in `currency`.
pub fn usage_report(
    catalog: &Catalog,
    rows: &[LedgerRow],
    by: GroupBy,
    currency: Currency,
) -> Result<UsageReport, String> {
    let mut b = UsageBuilder::new(catalog, by, currency);
    for r in rows {
        b.add(r)?;
    }
    Ok(b.finish())
}

/// A usage report built one row at a time ([`LedgerStore::scan`]), so that a report
/// over months of traffic holds its lines, not the ledger's rows.
///
/// [`LedgerStore::scan`]: tollgate_store::LedgerStore::scan
pub struct UsageBuilder<'a> {
    catalog: &'a Catalog,
    by: GroupBy,
    currency: Currency,
    lines: Vec<UsageLine>,
    index: std::collections::HashMap<String, usize>,
    total: UsageLine,
}

impl<'a> UsageBuilder<'a> {
    pub fn new(catalog: &'a Catalog, by: GroupBy, currency: Currency) -> Self {
        UsageBuilder {
            catalog,
            by,
            currency,
            lines: Vec::new(),
            index: std::collections::HashMap::new(),
            total: empty("TOTAL".into(), currency),
        }
    }

    /// Counts one row in its group and in the total.
    pub fn add(&mut self, r: &LedgerRow) -> Result<(), String> {
        let (by, currency) = (self.by, self.currency);
        let nanos = cost_in(self.catalog, r, currency)?;
        add(&mut self.total, r, nanos);
        let time = DateTime::<Utc>::from_timestamp_millis(r.ts_ms).unwrap_or_default();
        let group = match by {
            GroupBy::Key => r.key_name.clone(),
            GroupBy::Model => format!("{}/{}", r.provider, r.model),
            GroupBy::Provider => r.provider.clone(),
            GroupBy::Day => time.format("%Y-%m-%d").to_string(),
            GroupBy::Request => r.id.clone(),
        };
        let lines = &mut self.lines;
        let i = *self.index.entry(group.clone()).or_insert_with(|| {
            lines.push(empty(group, currency));
            lines.len() - 1
        });
        add(&mut lines[i], r, nanos);
        if by == GroupBy::Request {
            lines[i].detail = Some(RequestDetail {
                time: time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                key: r.key_name.clone(),
                requested_model: r.requested_model.clone(),
                model: format!("{}/{}", r.provider, r.model),
                status: r.status.clone(),
                usage_source: r.usage_source.clone(),
                native_cost: format!(
                    "{} {}",
                    format_nanos(i128::from(r.cost_nanos), 6),
                    r.cost_currency
                ),
                price_id: r.price_id.clone(),
            });
        }
        Ok(())
    }

    /// The report: costs as decimal text, lines sorted by cost (days and requests stay
    /// in time order).
    pub fn finish(self) -> UsageReport {
        let UsageBuilder {
            by,
            currency,
            mut lines,
            mut total,
            ..
        } = self;
        for l in lines.iter_mut().chain(std::iter::once(&mut total)) {
            l.cost = format_nanos(l.cost_nanos, 6);
        }
        if by != GroupBy::Request && by != GroupBy::Day {
            lines.sort_by(|a, b| b.cost_nanos.cmp(&a.cost_nanos).then(a.group.cmp(&b.group)));
        }
        let by = format!("{by:?}").to_lowercase();
        UsageReport {
            by,
            currency: currency.to_string(),
            lines,
            total,
        }
    }
}

/// An aligned table for people.
pub fn render_table(rep: &UsageReport) -> String {
    let mut out = String::new();
    let detail = rep.by == "request";
    let head = if detail {
        format!(
            "{:<30} {:<24} {:<14} {:<34} {:<20} {:>8} {:>8} {:>16} {:<20}\n",
            "REQUEST",
            "TIME",
            "KEY",
            "MODEL",
            "STATUS",
            "PROMPT",
            "COMPL",
            format!("COST {}", rep.currency),
            "NATIVE COST"
        )
    } else {
        format!(
            "{:<36} {:>9} {:>7} {:>12} {:>12} {:>10} {:>18}\n",
            rep.by.to_uppercase(),
            "REQUESTS",
            "ERRORS",
            "PROMPT",
            "COMPLETION",
            "CACHED",
            format!("COST {}", rep.currency)
        )
    };
    out.push_str(&head);
    for l in rep.lines.iter().chain(std::iter::once(&rep.total)) {
        match (&l.detail, detail) {
            (Some(d), true) => out.push_str(&format!(
                "{:<30} {:<24} {:<14} {:<34} {:<20} {:>8} {:>8} {:>16} {:<20}\n",
                l.group,
                d.time,
                d.key,
                d.model,
                if d.usage_source == "estimated" {
                    format!("{} (est.)", d.status)
                } else {
                    d.status.clone()
                },
                l.prompt_tokens,
                l.completion_tokens,
                l.cost,
                d.native_cost
            )),
            _ => out.push_str(&format!(
                "{:<36} {:>9} {:>7} {:>12} {:>12} {:>10} {:>18}\n",
                l.group,
                l.requests,
                l.errors,
                l.prompt_tokens,
                l.completion_tokens,
                l.cached_tokens,
                l.cost
            )),
        }
    }
    out
}

/// CSV with a header line.
pub fn render_csv(rep: &UsageReport) -> String {
    let esc = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    };
    let mut out = String::from(
        "group,requests,errors,prompt_tokens,completion_tokens,cached_tokens,estimated,cost,currency,time,key,model,status,native_cost\n",
    );
    for l in rep.lines.iter().chain(std::iter::once(&rep.total)) {
        let d = l.detail.as_ref();
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            esc(&l.group),
            l.requests,
            l.errors,
            l.prompt_tokens,
            l.completion_tokens,
            l.cached_tokens,
            l.estimated,
            l.cost,
            l.currency,
            d.map(|d| esc(&d.time)).unwrap_or_default(),
            d.map(|d| esc(&d.key)).unwrap_or_default(),
            d.map(|d| esc(&d.model)).unwrap_or_default(),
            d.map(|d| esc(&d.status)).unwrap_or_default(),
            d.map(|d| esc(&d.native_cost)).unwrap_or_default(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, ts: i64, model: &str, cost: i64, cur: &str) -> LedgerRow {
        LedgerRow {
            id: id.into(),
            ts_ms: ts,
            key_id: "k".into(),
            key_name: "team".into(),
            provider: "p".into(),
            model: model.into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            usage_source: "vendor".into(),
            cost_nanos: cost,
            cost_currency: cur.into(),
            report_currency: "CNY".into(),
            report_cost_nanos: cost,
            status: "ok".into(),
            ..Default::default()
        }
    }

    #[test]
    fn groups_and_totals_exactly() {
        let cat = Catalog::embedded().unwrap();
        let ts = 1_764_000_000_000; // 2025-11-24
        let rows = vec![
            row("a", ts, "m1", 1_000, "CNY"),
            row("b", ts, "m2", 3, "CNY"),
            row("c", ts, "m1", 7, "CNY"),
        ];
        let rep = usage_report(&cat, &rows, GroupBy::Model, Currency::Cny).unwrap();
        assert_eq!(rep.lines[0].group, "p/m1");
        assert_eq!(rep.lines[0].cost, "0.000001007");
        assert_eq!(rep.total.cost, "0.00000101");
        assert_eq!(rep.total.requests, 3);
        let usd = usage_report(
            &cat,
            &[row("d", ts, "m", 7_000_000_000, "CNY")],
            GroupBy::Day,
            Currency::Usd,
        )
        .unwrap();
        assert!(usd.total.cost.starts_with("0.9"), "{}", usd.total.cost);
        assert!(render_table(&rep).contains("TOTAL"));
        assert!(render_csv(&rep).lines().count() == 4);
    }
}
