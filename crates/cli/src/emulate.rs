//! `tollgate emulate NAME`: one vendor emulator in the foreground.

use clap::Args;
use tollgate_emulators::{router_for, EmulatorKind, EmulatorOptions, Faults};

/// Options of `tollgate emulate`.
#[derive(Debug, Args)]
pub struct EmulateArgs {
    /// Which vendor API to emulate (openai, deepseek, moonshot, mistral, ...).
    pub name: String,
    /// Port to listen on; 0 picks a free one (the chosen port is printed).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Address to bind. Emulators are for loopback use.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The API key (or id.secret, APIKey, SecretId) the emulator accepts.
    #[arg(long, env = "TOLLGATE_EMULATOR_KEY", default_value = "emulator-key")]
    pub api_key: String,
    /// The secret (APISecret, SecretKey, Secret Key) for vendors that sign.
    #[arg(
        long,
        env = "TOLLGATE_EMULATOR_SECRET",
        default_value = "emulator-secret"
    )]
    pub secret_key: String,
    /// The app id for vendors that need one (iFlytek).
    #[arg(long, default_value = "emulator-app")]
    pub app_id: String,
    /// Faults for every request, e.g. "latency_ms=20,chunk_interval_ms=10,chunks=100"
    /// or "status=503". See the emulators crate docs for the language.
    #[arg(long, default_value = "")]
    pub fault: String,
}

pub async fn run(args: EmulateArgs) -> anyhow::Result<()> {
    let kind: EmulatorKind = args.name.parse().map_err(anyhow::Error::msg)?;
    let faults = Faults::parse(&args.fault).map_err(anyhow::Error::msg)?;
    let opts = EmulatorOptions {
        api_key: args.api_key,
        secret_key: args.secret_key,
        app_id: args.app_id,
        faults,
    };
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    let addr = listener.local_addr()?;
    println!(
        "tollgate emulator '{}' listening on http://{addr} (API base http://{addr}{})",
        kind.name(),
        kind.base_path()
    );
    crate::flush_stdout();
    tollgate_emulators::serve(listener, router_for(kind, opts), crate::shutdown_signal()).await?;
    Ok(())
}
