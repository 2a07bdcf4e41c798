//! `tollgate route`: explains how a virtual model would route a request of a given shape — ranked candidates, estimated costs, and why each was kept or dropped.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use clap::Args;
use tollgate_core::routing::{Needs, Plan, Strategy};
use tollgate_core::{Currency, Money};
use tollgate_server::config::VirtualModel;
use tollgate_server::{AppState, Stores};

use crate::StoreArgs;

/// Options of `tollgate route`.
#[derive(Debug, Args)]
pub struct RouteArgs {
    /// A virtual model (or a `provider/model`) as a client would name it.
    #[arg(long)]
    pub model: String,
    /// Prompt tokens of the request.
    #[arg(long, default_value_t = 1000)]
    pub prompt_tokens: u64,
    /// The request's max_tokens (default: the config's routing.default_max_tokens).
    #[arg(long)]
    pub max_tokens: Option<u64>,
    /// The request uses tools.
    #[arg(long)]
    pub tools: bool,
    /// The request has images.
    #[arg(long)]
    pub vision: bool,
    /// The request asks for JSON mode (response_format).
    #[arg(long)]
    pub json_mode: bool,
    /// Price at this instant: `2025-06-15T18:00:00Z`, `2025-06-15 18:00` (UTC) or a
    /// date (midnight UTC). Default: now.
    #[arg(long)]
    pub at: Option<String>,
    /// Override the strategy (cheapest, free-first, latency, weighted, ordered).
    #[arg(long)]
    pub strategy: Option<String>,
    /// Drop candidates estimated above this, like `x-tollgate-max-cost` (`0.01` or `0.01 USD`).
    #[arg(long)]
    pub max_cost: Option<String>,
    /// Use the demo's providers and virtual models instead of a config file.
    #[arg(long)]
    pub demo: bool,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

fn parse_at(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    anyhow::bail!("--at '{s}': write 2025-06-15T18:00:00Z, '2025-06-15 18:00' (UTC) or 2025-06-15")
}

fn parse_cost(s: &str, default: Currency) -> anyhow::Result<Money> {
    let bad = || anyhow::anyhow!("--max-cost '{s}': write an amount like 0.01 or '0.01 USD'");
    match s.trim().split_once(' ') {
        Some((a, c)) => {
            let c: Currency = c.trim().parse().map_err(|_| bad())?;
            Money::from_decimal(a.trim(), c).map_err(|_| bad())
        }
        None => Money::from_decimal(s.trim(), default).map_err(|_| bad()),
    }
}

pub async fn run(args: RouteArgs) -> anyhow::Result<()> {
    let mut cfg = if args.demo {
        crate::demo::config_for_explain()
    } else {
        args.store.config()?
    };
    // A scratch store: explaining reads no history and must not touch the real one.
    let scratch = std::env::temp_dir().join(format!("tollgate-route-{}", std::process::id()));
    cfg.data_dir = scratch.clone();
    let result = explain(&args, cfg).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn explain(args: &RouteArgs, cfg: tollgate_server::Config) -> anyhow::Result<()> {
    let stores = Stores::sqlite(&cfg.data_dir)?;
    let state = AppState::new(cfg, stores).map_err(anyhow::Error::msg)?;
    let at = match &args.at {
        Some(s) => parse_at(s)?,
        None => Utc::now(),
    };
    let strategy: Option<Strategy> = args
        .strategy
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let currency = tollgate_server::route::currency(&state);
    let max_cost = args
        .max_cost
        .as_deref()
        .map(|s| parse_cost(s, currency))
        .transpose()?;
    let needs = Needs {
        tools: args.tools,
        vision: args.vision,
        json: args.json_mode,
        prompt_tokens: args.prompt_tokens,
        max_tokens: args.max_tokens,
    };
    let (vm, candidates) = match state.virtual_models.get(&args.model) {
        Some(vr) => (vr.cfg.clone(), vr.candidates.iter().collect::<Vec<_>>()),
        None => {
            let r = state.resolve(&args.model).map_err(|e| {
                let known: Vec<&String> = state.virtual_models.keys().collect();
                anyhow::anyhow!(
                    "{} (virtual models: {})",
                    e.message,
                    if known.is_empty() {
                        "none configured".to_owned()
                    } else {
                        known
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )
            })?;
            let vm = VirtualModel::single(r.name().to_owned());
            let plan = tollgate_server::route::plan_for_tokens(
                &state,
                &vm,
                &[&r],
                needs,
                strategy,
                max_cost,
                at,
            );
            return print(args, &vm.name, &plan);
        }
    };
    let plan = tollgate_server::route::plan_for_tokens(
        &state,
        &vm,
        &candidates,
        needs,
        strategy,
        max_cost,
        at,
    );
    print(args, &vm.name, &plan)
}

/// Writes the explanation to stdout (a closed pipe, as with `| head`, is not an error).
fn print(args: &RouteArgs, name: &str, plan: &Plan) -> anyhow::Result<()> {
    use std::io::Write;
    let text = render(args, name, plan)?;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(())
}

fn render(args: &RouteArgs, name: &str, plan: &Plan) -> anyhow::Result<String> {
    use std::fmt::Write;
    let mut o = String::new();
    if args.json {
        let out = serde_json::json!({
            "model": name,
            "strategy": plan.strategy,
            "at": plan.at,
            "currency": plan.currency,
            "prompt_tokens": plan.prompt_tokens,
            "max_tokens": plan.max_tokens,
            "chosen": plan.kept().next().map(|v| v.candidate.clone()),
            "header": plan.kept().next().map(|v| plan.header(v, 1)),
            "candidates": plan.verdicts,
        });
        o.push_str(&serde_json::to_string_pretty(&out)?);
        o.push('\n');
        return Ok(o);
    }
    let _ = writeln!(
        o,
        "{name}: strategy {}, {} of {} candidates kept; {} prompt + {} output tokens at {}; costs compared in {}",
        plan.strategy,
        plan.kept_count(),
        plan.verdicts.len(),
        plan.prompt_tokens,
        plan.max_tokens,
        plan.at.format("%Y-%m-%d %H:%M UTC"),
        plan.currency
    );
    let rows: Vec<[String; 4]> = plan
        .verdicts
        .iter()
        .map(|v| {
            [
                v.rank
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "-".to_owned()),
                v.candidate.clone(),
                v.estimate_converted
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".to_owned()),
                if v.kept {
                    v.reason.clone()
                } else {
                    format!("dropped: {}", v.reason)
                },
            ]
        })
        .collect();
    let head = ["#", "candidate", "estimate", "why"];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate().take(3) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut line = |c: [&str; 4]| {
        let _ = writeln!(
            o,
            "{:>w0$}  {:<w1$}  {:>w2$}  {}",
            c[0],
            c[1],
            c[2],
            c[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        );
    };
    line(head);
    for r in &rows {
        line([r[0].as_str(), r[1].as_str(), r[2].as_str(), r[3].as_str()]);
    }
    match plan.kept().next() {
        Some(v) => {
            let _ = writeln!(o, "x-tollgate-route: {}", plan.header(v, 1));
        }
        None => {
            let _ = writeln!(o, "no candidate can serve this request");
        }
    }
    Ok(o)
}
