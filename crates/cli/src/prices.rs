//! `tollgate prices`: the catalog as a table, at any date, in any currency.

use clap::Args;
use tollgate_core::pricing::{
    history_rows, price_rows, render_history_table, render_price_table, PriceQuery,
};
use tollgate_core::Currency;

use crate::StoreArgs;

/// Options of `tollgate prices`.
#[derive(Debug, Args)]
pub struct PricesArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Prices in force on this date (YYYY-MM-DD). Default: today.
    #[arg(long)]
    pub at: Option<String>,
    /// Convert to CNY, USD or EUR with that month's FX rate. Default: the config's
    /// reporting currency (`--currency native` keeps each vendor's currency).
    #[arg(long)]
    pub currency: Option<String>,
    /// Only this provider (openai, deepseek, zhipu, ...).
    #[arg(long)]
    pub provider: Option<String>,
    /// Only models whose id or alias contains this text.
    #[arg(long)]
    pub model: Option<String>,
    /// Only models with this capability: tools, vision, json_mode, streaming, free.
    #[arg(long)]
    pub capability: Option<String>,
    /// Every dated price change of one model, with the percent change.
    #[arg(long, value_name = "MODEL")]
    pub history: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PricesArgs) -> anyhow::Result<()> {
    let cfg = args.store.config()?;
    let catalog = tollgate_server::state::load_catalog(&cfg).map_err(anyhow::Error::msg)?;
    let currency = match args.currency.as_deref() {
        Some("native") => None,
        Some(c) => Some(
            c.parse::<Currency>()
                .map_err(|_| anyhow::anyhow!("unknown currency '{c}' (CNY, USD, EUR, native)"))?,
        ),
        None => Some(
            cfg.reporting_currency
                .parse::<Currency>()
                .map_err(|_| anyhow::anyhow!("bad reporting currency"))?,
        ),
    };
    if let Some(model) = &args.history {
        let rows = history_rows(&catalog, model, currency)
            .ok_or_else(|| anyhow::anyhow!("no model '{model}' in the catalog"))?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            print!("{}", render_history_table(&rows));
        }
        return Ok(());
    }
    let at = match &args.at {
        Some(d) => chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .map_err(|_| anyhow::anyhow!("--at takes a date like 2024-05-21, got '{d}'"))?,
        None => chrono::Utc::now().date_naive(),
    };
    let q = PriceQuery {
        at,
        currency,
        provider: args.provider,
        model: args.model,
        capability: args.capability,
    };
    let rows = price_rows(&catalog, &q);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "Prices in force on {at} (per million tokens){}",
            currency.map(|c| format!(", in {c}")).unwrap_or_default()
        );
        print!("{}", render_price_table(&rows));
    }
    Ok(())
}
