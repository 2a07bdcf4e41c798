//! `tollgate keys`: create, list and revoke virtual API keys in the store.

use clap::{Args, Subcommand};
use tollgate_store::{KeyStore, NewKey, SqliteStore};

use crate::StoreArgs;

/// Options of `tollgate keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<KeysCommand>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key. It is printed once and stored only as a hash.
    Create {
        /// A name for people (team, service, person).
        #[arg(long)]
        name: String,
        /// Models it may use, comma-separated: `provider/model`, `provider/*` or a bare id.
        /// Default: every model.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// The team or project it belongs to (group budgets come from the config's
        /// `[groups.NAME]`).
        #[arg(long)]
        group: Option<String>,
        /// Spending cap, a decimal amount in `--currency` per `--period`.
        #[arg(long)]
        budget: Option<String>,
        /// CNY or USD (or EUR). Default CNY.
        #[arg(long, requires = "budget")]
        currency: Option<String>,
        /// day, month or total. Default month. Days and months follow `--time-zone`.
        #[arg(long, requires = "budget")]
        period: Option<String>,
        /// Zone for day/month boundaries (Asia/Shanghai, UTC, +08:00). Default:
        /// Asia/Shanghai for CNY budgets, UTC otherwise.
        #[arg(long, requires = "budget")]
        time_zone: Option<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u32>,
    },
    /// List keys (the default).
    List,
    /// Revoke a key by id, name or prefix. Takes effect within a second.
    Revoke {
        /// The key's id, name or prefix.
        key: String,
    },
}

pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    let cfg = args.store.config()?;
    let store = SqliteStore::open(&cfg.data_dir)?;
    match args.command.unwrap_or(KeysCommand::List) {
        KeysCommand::Create {
            name,
            models,
            group,
            budget,
            currency,
            period,
            time_zone,
            rpm,
            tpm,
        } => {
            let budget = tollgate_server::admin::budget_spec(budget, currency, period, time_zone)
                .map_err(|e| anyhow::anyhow!(e.message))?;
            let (rec, key) = store.create_key(&NewKey {
                name,
                models,
                group,
                budget,
                rpm,
                tpm,
            })?;
            if args.json {
                let mut v = serde_json::to_value(&rec)?;
                v["key"] = serde_json::Value::String(key);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("created key {} ({})", rec.id, rec.name);
                println!("{key}");
                println!("This is the only time the key is shown; only its hash is stored.");
            }
        }
        KeysCommand::List => {
            // The list shows budget standing from the ledger: journaled rows first.
            tollgate_store::journal::import_all(&cfg.data_dir, &store)?;
            let keys = store.list_keys()?;
            let catalog = tollgate_server::state::load_catalog(&cfg).map_err(anyhow::Error::msg)?;
            let now = chrono::Utc::now();
            let mut rows = Vec::new();
            for k in keys {
                let mut budgets = Vec::new();
                for b in tollgate_server::metering::budgets_for_config(&cfg, &k)
                    .map_err(anyhow::Error::msg)?
                {
                    let spent =
                        tollgate_server::metering::spent_in_window(&catalog, &store, &b, &k, now)
                            .map_err(anyhow::Error::msg)?;
                    let bs = tollgate_server::budget::Budgets::new();
                    bs.load(b.clone(), spent, now);
                    if let Some(st) = bs.standing(&b.id, now) {
                        budgets.push((b.owner.clone(), st));
                    }
                }
                rows.push((k, budgets));
            }
            if args.json {
                let mut out = Vec::new();
                for (k, b) in &rows {
                    let mut v = serde_json::to_value(k)?;
                    let standings: Vec<_> = b
                        .iter()
                        .map(|(o, st)| serde_json::json!({"owner": o, "standing": st}))
                        .collect();
                    v["budgets"] = serde_json::Value::Array(standings);
                    out.push(v);
                }
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!("{}", render_keys(&rows));
            }
        }
        KeysCommand::Revoke { key } => {
            let rec = store.revoke_key(&key)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&rec)?);
            } else {
                println!("revoked key {} ({})", rec.id, rec.name);
            }
        }
    }
    Ok(())
}

/// The key table for people: budget, spend and remaining of the first budget that
/// applies (the key's own, else its group's).
fn render_keys(
    rows: &[(
        tollgate_store::KeyRecord,
        Vec<(String, tollgate_server::budget::Standing)>,
    )],
) -> String {
    let mut out = format!(
        "{:<30} {:<16} {:<9} {:<8} {:<24} {:<12} {:<12} {:<14} MODELS\n",
        "ID", "NAME", "PREFIX", "STATUS", "BUDGET", "SPENT", "REMAINING", "LIMITS"
    );
    for (k, budgets) in rows {
        let status = if k.is_active() { "active" } else { "revoked" };
        let models = if k.models.is_empty() {
            "*".to_owned()
        } else {
            k.models.join(",")
        };
        let opt = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        let limits = match (k.rpm, k.tpm) {
            (None, None) => "-".to_owned(),
            (r, t) => format!("{}rpm/{}tpm", opt(r), opt(t)),
        };
        let (budget, spent, left) = match budgets.first() {
            Some((owner, st)) => (
                format!(
                    "{} {}/{}{}",
                    st.limit,
                    st.currency,
                    st.period,
                    if owner.starts_with("group") {
                        " (grp)"
                    } else {
                        ""
                    }
                ),
                st.spent.clone(),
                st.remaining.clone(),
            ),
            None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        out.push_str(&format!(
            "{:<30} {:<16} {:<9} {:<8} {:<24} {:<12} {:<12} {:<14} {}\n",
            k.id, k.name, k.prefix, status, budget, spent, left, limits, models
        ));
    }
    out
}
