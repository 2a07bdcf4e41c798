//! `tollgate usage`: what was spent, from the ledger.

use clap::Args;
use tollgate_core::Currency;
use tollgate_server::reports::ReportError;
use tollgate_store::{GroupBy, SqliteStore};

use crate::StoreArgs;

/// Options of `tollgate usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Group by key, model, provider, day, or list each request.
    #[arg(long, default_value = "key")]
    pub by: String,
    /// From this date (YYYY-MM-DD, UTC), inclusive.
    #[arg(long)]
    pub since: Option<String>,
    /// Until this date (YYYY-MM-DD, UTC), inclusive.
    #[arg(long)]
    pub until: Option<String>,
    /// Report in CNY, USD or EUR. Default: the config's reporting currency.
    #[arg(long)]
    pub currency: Option<String>,
    /// JSON instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// CSV instead of a table.
    #[arg(long)]
    pub csv: bool,
    /// With --by request: at most this many requests (at most 100000; default: every
    /// request of the window).
    #[arg(long)]
    pub limit: Option<u64>,
    /// With --by request: the page after this request id (printed at the end of the
    /// page before, and in the JSON as `next_after`).
    #[arg(long)]
    pub after: Option<String>,
}

pub fn run(args: UsageArgs) -> anyhow::Result<()> {
    let cfg = args.store.config()?;
    let catalog = tollgate_server::state::load_catalog(&cfg).map_err(anyhow::Error::msg)?;
    let by: GroupBy = args.by.parse().map_err(anyhow::Error::msg)?;
    let cur = args
        .currency
        .unwrap_or_else(|| cfg.reporting_currency.clone());
    let currency: Currency = cur
        .parse()
        .map_err(|_| anyhow::anyhow!("unknown currency '{cur}' (CNY, USD, EUR)"))?;
    let filter = tollgate_server::api::date_range(args.since.as_deref(), args.until.as_deref())
        .map_err(|e| anyhow::anyhow!(e.message))?;
    // The options are checked before anything is opened.
    let page = tollgate_server::reports::page_size(by, args.limit, args.after.as_deref(), None)
        .map_err(report_error)?;
    let store = SqliteStore::open(&cfg.data_dir)?;
    // Rows a running (or killed) gateway has journaled but not yet imported.
    tollgate_store::journal::import_all(&cfg.data_dir, &store)?;
    // Row by row: a report over a busy month must not hold the month in memory.
    let rep = tollgate_server::reports::report(
        &store,
        &catalog,
        by,
        currency,
        &filter,
        page,
        args.after.as_deref(),
    )
    .map_err(report_error)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else if args.csv {
        print!("{}", tollgate_server::reports::render_csv(&rep));
    } else {
        print!("{}", tollgate_server::reports::render_table(&rep));
    }
    if let (Some(id), false) = (&rep.next_after, args.json) {
        eprintln!("more requests follow: the next page is --after {id}");
    }
    Ok(())
}

fn report_error(e: ReportError) -> anyhow::Error {
    match e {
        ReportError::Param(param, m) => anyhow::anyhow!("--{param}: {m}"),
        ReportError::Internal(m) => anyhow::anyhow!(m),
    }
}
