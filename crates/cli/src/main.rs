//! `tollgate`: one binary for the gateway, its demo, its emulators and its store.
//! Each subcommand lives in its own module; this file only parses and dispatches.

#![allow(clippy::print_stdout)]

mod alloc;
mod demo;
mod emulate;
mod keys;
mod prices;
mod route;
mod serve;
mod usage;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// mimalloc: ~20% more requests/s than glibc's malloc on the bench box (allocation was a
/// quarter of a request's instructions). Built with arena memory committed on demand
/// (`.cargo/config.toml`): with mimalloc's default eager commit, RSS at 1,000 open
/// streams was 120 MB instead of 80 MB.
/// The allocator shim is ours (`alloc.rs`): the `mimalloc` crate's sent every allocation
/// down mimalloc's aligned path.
#[global_allocator]
static GLOBAL: alloc::Mimalloc = alloc::Mimalloc;

/// tollgate: one OpenAI-compatible endpoint in front of every major Chinese and US model
/// vendor, that knows what every token costs and meters every request.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway with a config file (SQLite store in its data_dir).
    Serve(serve::ServeArgs),
    /// Run the gateway on 127.0.0.1:8300 in front of local emulators of every vendor,
    /// with a fresh demo key; prints the export lines to use it. Ctrl-C stops it.
    Demo(demo::DemoArgs),
    /// Manage virtual API keys (create, list, revoke) in the store.
    Keys(keys::KeysArgs),
    /// Show prices from the dated catalog: at any date, in any currency, with history.
    Prices(prices::PricesArgs),
    /// Report spend and usage from the ledger, by key, model, provider, day or request.
    Usage(usage::UsageArgs),
    /// Run one vendor's API emulator (for tests, demos and benchmarks).
    Emulate(emulate::EmulateArgs),
    /// Explain how a virtual model routes a request: ranked candidates, estimated
    /// costs, and why each was kept or dropped (`--json` for scripts).
    Route(route::RouteArgs),
}

/// Where the store is: a config file's data_dir, or a data directory given directly.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Config file (its data_dir holds the store).
    #[arg(long, global = true, env = "TOLLGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory holding the store (overrides the config's data_dir).
    #[arg(long, global = true, env = "TOLLGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

impl StoreArgs {
    /// The validated config: from the file, or defaults; `--data-dir` wins.
    pub fn config(&self) -> anyhow::Result<tollgate_server::Config> {
        let mut cfg = match &self.config {
            Some(path) => tollgate_server::Config::load(path).map_err(anyhow::Error::msg)?,
            None => tollgate_server::Config::empty(PathBuf::from("tollgate-data")),
        };
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        Ok(cfg)
    }
}

/// Flushes stdout so a parent process reading our lines sees them at once.
pub fn flush_stdout() {
    let _ = std::io::stdout().flush();
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve(a) => {
                init_logging("info");
                serve::run(a).await
            }
            Command::Demo(a) => {
                init_logging("warn,tollgate_server=info");
                demo::run(a).await
            }
            Command::Keys(a) => keys::run(a).await,
            Command::Route(a) => route::run(a).await,
            Command::Prices(a) => prices::run(a),
            Command::Usage(a) => usage::run(a),
            Command::Emulate(a) => {
                init_logging("warn");
                emulate::run(a).await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
