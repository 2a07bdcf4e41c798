//! `tollgate serve`: the gateway from a config file.

use clap::Args;
use tollgate_core::Secret;
use tollgate_server::{AppState, Stores};

use crate::StoreArgs;

/// Options of `tollgate serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on (overrides the config's `listen`).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = args.store.config()?;
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if cfg.admin_key.is_none() {
        if let Ok(k) = std::env::var("TOLLGATE_ADMIN_KEY") {
            if !k.is_empty() {
                cfg.admin_key = Some(Secret::new(k));
            }
        }
    }
    let stores = Stores::sqlite(&cfg.data_dir)?;
    let listen = cfg.listen;
    let providers = cfg.providers.len();
    let state = AppState::new(cfg, stores).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    println!("tollgate listening on http://{addr} ({providers} providers)");
    crate::flush_stdout();
    tollgate_server::run(listener, state, crate::shutdown_signal()).await?;
    Ok(())
}
