//! Usage reports from the ledger, for `tollgate usage` and `GET /admin/usage`: totals
//! grouped by key, model, provider or day, or one line per request, in one currency
//! (each row converted at the FX rate of its own date).

use chrono::{DateTime, Utc};
use serde::Serialize;
use tollgate_core::money::format_nanos;
use tollgate_core::{Catalog, Currency, Money};
use tollgate_store::{GroupBy, LedgerFilter, LedgerRow, LedgerStore};

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

/// The report: lines and a total line. A listing of requests (`by=request`) comes in
/// pages: `total` then sums the page's lines, and `next_after` is the request id to
/// pass as `after` for the next page (`null` on the last page, and for every other
/// grouping, which is never paged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageReport {
    pub by: String,
    pub currency: String,
    pub lines: Vec<UsageLine>,
    pub total: UsageLine,
    pub next_after: Option<String>,
}

/// Requests a page of a `by=request` listing over HTTP holds unless `limit` says
/// otherwise (`tollgate usage` lists the whole window unless told).
pub const DEFAULT_PAGE: u64 = 1_000;
/// The most requests one page may hold.
pub const MAX_PAGE: u64 = 100_000;

/// Why a report could not be made.
#[derive(Debug)]
pub enum ReportError {
    /// The caller's fault (`param`, message): a paging option where there is no paging,
    /// a limit out of range, a cursor naming no request.
    Param(&'static str, String),
    /// The store's or the catalog's (for the operator's log).
    Internal(String),
}

/// The page size of a report (`None`: no limit). `by=request` listings may be paged
/// (`limit`, else `default`, at most [`MAX_PAGE`]; `after`, a request id); other
/// groupings take neither option.
pub fn page_size(
    by: GroupBy,
    limit: Option<u64>,
    after: Option<&str>,
    default: Option<u64>,
) -> Result<Option<u64>, ReportError> {
    if by != GroupBy::Request {
        if limit.is_some() || after.is_some() {
            let param = if limit.is_some() { "limit" } else { "after" };
            return Err(ReportError::Param(
                param,
                format!("'{param}' pages a listing of requests: it needs by=request"),
            ));
        }
        return Ok(None);
    }
    match limit.or(default) {
        None => Ok(None),
        Some(n @ 1..=MAX_PAGE) => Ok(Some(n)),
        Some(n) => Err(ReportError::Param(
            "limit",
            format!("'limit' must be between 1 and {MAX_PAGE} (got {n})"),
        )),
    }
}

/// A report over `filter`'s window, read row by row ([`LedgerStore::scan`]): grouped
/// totals, or single requests, at most `page` of them (`None`: all) after the request
/// `after`.
pub fn report(
    store: &dyn LedgerStore,
    catalog: &Catalog,
    by: GroupBy,
    currency: Currency,
    filter: &LedgerFilter,
    page: Option<u64>,
    after: Option<&str>,
) -> Result<UsageReport, ReportError> {
    let page = page_size(by, page, after, None)?;
    let mut filter = filter.clone();
    if let Some(id) = after {
        let at = store
            .position(id)
            .map_err(|e| ReportError::Internal(e.to_string()))?;
        filter.after = Some(at.ok_or_else(|| {
            ReportError::Param(
                "after",
                format!("no request in the ledger has the id '{id}'"),
            )
        })?);
    }
    // One row more than the page: whether it exists says whether there is a next page.
    filter.limit = page.map(|n| n + 1);
    let mut b = UsageBuilder::new(catalog, by, currency);
    let mut rows = 0u64;
    let mut more = false;
    store
        .scan(&filter, &mut |r| {
            rows += 1;
            if page.is_some_and(|n| rows > n) {
                more = true;
                return Ok(());
            }
            b.add(&r).map_err(tollgate_store::StoreError::Invalid)
        })
        .map_err(|e| ReportError::Internal(e.to_string()))?;
    let next_after = if more {
        b.lines.last().map(|l| l.group.clone())
    } else {
        None
    };
    let mut rep = b.finish();
    rep.next_after = next_after;
    Ok(rep)
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
        let i = if by == GroupBy::Request {
            // A line per row (ids are unique): no index to keep.
            lines.push(empty(group, currency));
            lines.len() - 1
        } else {
            *self.index.entry(group.clone()).or_insert_with(|| {
                lines.push(empty(group, currency));
                lines.len() - 1
            })
        };
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
            next_after: None,
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
    /// A page of single requests holds `limit` lines in the ledger's order, totals just
    /// them, and names the last as the cursor only when more follow; paging options
    /// elsewhere, a limit out of range and a cursor naming no request are refused.
    #[test]
    fn request_listings_come_in_pages() {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-reports-test-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        let store = tollgate_store::SqliteStore::open(&dir).unwrap();
        let cat = Catalog::embedded().unwrap();
        let ts = 1_764_000_000_000;
        // Seven requests; two share a millisecond (ordered by id).
        let rows: Vec<LedgerRow> = (0..7)
            .map(|i| row(&format!("r{i}"), ts + i.min(5), "m", 10 + i, "CNY"))
            .collect();
        store.append(&rows).unwrap();
        let all = LedgerFilter::default();
        let http_page = |limit: Option<u64>| {
            page_size(GroupBy::Request, limit, None, Some(DEFAULT_PAGE))
                .map_err(|e| format!("{e:?}"))
        };
        let page = |limit: Option<u64>, after: Option<&str>| {
            report(
                &store,
                &cat,
                GroupBy::Request,
                Currency::Cny,
                &all,
                limit,
                after,
            )
        };
        let ids = |r: &UsageReport| r.lines.iter().map(|l| l.group.clone()).collect::<Vec<_>>();

        let p1 = page(Some(3), None).unwrap();
        assert_eq!(ids(&p1), ["r0", "r1", "r2"]);
        assert_eq!(p1.next_after.as_deref(), Some("r2"));
        assert_eq!(p1.total.requests, 3);
        assert_eq!(p1.total.cost, "0.000000033");
        let p2 = page(Some(3), Some("r2")).unwrap();
        assert_eq!(ids(&p2), ["r3", "r4", "r5"]);
        let p3 = page(Some(3), Some("r5")).unwrap();
        assert_eq!(ids(&p3), ["r6"]);
        assert_eq!(p3.next_after, None);
        // Exactly a page left: no cursor to an empty page.
        let p = page(Some(4), Some("r2")).unwrap();
        assert_eq!((ids(&p).len(), p.next_after), (4, None));
        // No page size: the whole window (the CLI's default); after a cursor, the rest.
        let p = page(None, None).unwrap();
        assert_eq!((ids(&p).len(), p.next_after), (7, None));
        assert_eq!(ids(&page(None, Some("r4")).unwrap()), ["r5", "r6"]);
        // Over HTTP a page holds DEFAULT_PAGE unless `limit` says otherwise.
        assert_eq!(http_page(None), Ok(Some(DEFAULT_PAGE)));
        assert_eq!(http_page(Some(7)), Ok(Some(7)));
        assert!(http_page(Some(0)).is_err());
        // Groupings are never paged.
        let by_model = report(
            &store,
            &cat,
            GroupBy::Model,
            Currency::Cny,
            &all,
            None,
            None,
        );
        assert_eq!(by_model.unwrap().total.requests, 7);

        let refused = |r: Result<UsageReport, ReportError>| match r {
            Err(ReportError::Param(p, _)) => p,
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(refused(page(Some(0), None)), "limit");
        assert_eq!(refused(page(Some(MAX_PAGE + 1), None)), "limit");
        assert_eq!(refused(page(Some(2), Some("r9"))), "after");
        let keyed = |limit, after| {
            report(
                &store,
                &cat,
                GroupBy::Key,
                Currency::Cny,
                &all,
                limit,
                after,
            )
        };
        assert_eq!(refused(keyed(Some(2), None)), "limit");
        assert_eq!(refused(keyed(None, Some("r1"))), "after");
        std::fs::remove_dir_all(dir).ok();
    }
}
