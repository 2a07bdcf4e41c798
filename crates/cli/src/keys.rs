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
        KeysCommand::Create { name, models } => {
            let (rec, key) = store.create_key(&NewKey { name, models })?;
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
            let keys = store.list_keys()?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!(
                    "{:<32} {:<20} {:<10} {:<8} MODELS",
                    "ID", "NAME", "PREFIX", "STATUS"
                );
                for k in keys {
                    let status = if k.is_active() { "active" } else { "revoked" };
                    let models = if k.models.is_empty() {
                        "*".to_owned()
                    } else {
                        k.models.join(",")
                    };
                    println!(
                        "{:<32} {:<20} {:<10} {:<8} {}",
                        k.id, k.name, k.prefix, status, models
                    );
                }
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
