//! `tollgate demo`: the gateway on SQLite in front of local emulators of every vendor,
//! with a fresh demo key, so a newcomer can try everything with no keys and no network.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use tollgate_core::routing::Strategy;
use tollgate_core::{ProviderKind, Secret};
use tollgate_emulators::{router_for, EmulatorKind, EmulatorOptions, Faults};
use tollgate_providers::{Credentials, Mode};
use tollgate_server::config::{Filter, ProviderConfig, Retry, VirtualModel};
use tollgate_server::{AppState, Config, Stores};
use tollgate_store::NewKey;

/// Options of `tollgate demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Port for the gateway; 0 picks a free one.
    #[arg(long, default_value_t = 8300)]
    pub port: u16,
    /// Data directory for the demo's SQLite store. Default: `tollgate-demo` under the
    /// system temp directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// How the demo wires one emulator in as a provider. Each serves every catalog model of
/// its vendor.
struct DemoProvider {
    id: &'static str,
    kind: ProviderKind,
    mode: Mode,
}

fn demo_provider(e: EmulatorKind) -> DemoProvider {
    let p = |id, kind| DemoProvider {
        id,
        kind,
        mode: Mode::Native,
    };
    match e {
        EmulatorKind::OpenAi => p("openai", ProviderKind::OpenAi),
        EmulatorKind::DeepSeek => p("deepseek", ProviderKind::DeepSeek),
        EmulatorKind::Moonshot => p("moonshot", ProviderKind::Moonshot),
        EmulatorKind::Mistral => p("mistral", ProviderKind::Mistral),
        EmulatorKind::Qianfan => p("ernie", ProviderKind::Ernie),
        EmulatorKind::Spark => p("spark", ProviderKind::Spark),
        EmulatorKind::Hunyuan => p("hunyuan", ProviderKind::Hunyuan),
        EmulatorKind::Anthropic => p("anthropic", ProviderKind::Anthropic),
        EmulatorKind::Gemini => p("gemini", ProviderKind::Gemini),
        EmulatorKind::Zhipu => p("zhipu", ProviderKind::Zhipu),
        EmulatorKind::Doubao => p("doubao", ProviderKind::Doubao),
        EmulatorKind::DashScope => p("qwen", ProviderKind::Qwen),
    }
}

/// The key the demo's provider sends: Zhipu's is a console key `id.secret` (from which
/// it signs JWTs); the Zhipu emulator accepts `api_key.secret_key` as that key.
fn demo_api_key(kind: EmulatorKind) -> String {
    match kind {
        EmulatorKind::Zhipu => format!("{DEMO_KEY}.{DEMO_SECRET}"),
        _ => DEMO_KEY.to_owned(),
    }
}

/// Served model → upstream id. Doubao shows the usual Ark set-up: a catalog model
/// served through the user's inference endpoint id.
fn demo_model_map(kind: EmulatorKind) -> std::collections::BTreeMap<String, String> {
    match kind {
        EmulatorKind::Doubao => [(
            "doubao-1.5-pro-32k".to_owned(),
            "ep-20250118155555-demo0".to_owned(),
        )]
        .into_iter()
        .collect(),
        _ => Default::default(),
    }
}

/// The provider config of one emulated vendor at `base_url`.
fn demo_provider_config(kind: EmulatorKind, base_url: String) -> ProviderConfig {
    let dp = demo_provider(kind);
    ProviderConfig {
        id: dp.id.to_owned(),
        kind: dp.kind,
        mode: dp.mode,
        base_url,
        credentials: Credentials {
            api_key: Some(Secret::new(demo_api_key(kind))),
            secret_key: Some(Secret::new(DEMO_SECRET)),
            app_id: Some(DEMO_APP.to_owned()),
            access_token: None,
        },
        models: Vec::new(),
        model_map: demo_model_map(kind),
        passthrough: false,
    }
}

/// The demo's virtual models: `cheapest` (every demo model), `cheapest-tools` (those
/// with tool support) and `free-first` (free models first — the free Chinese models
/// join as their vendors' emulators join the demo — then the cheapest paid one).
pub fn demo_virtual_models() -> BTreeMap<String, VirtualModel> {
    let vm = |name: &str, strategy: Strategy, capabilities: Vec<String>| {
        (
            name.to_owned(),
            VirtualModel {
                name: name.to_owned(),
                candidates: Vec::new(),
                filter: Some(Filter {
                    capabilities,
                    ..Default::default()
                }),
                strategy,
                quality_floor: None,
                weights: BTreeMap::new(),
                retry: Retry::default(),
            },
        )
    };
    BTreeMap::from([
        vm("cheapest", Strategy::Cheapest, Vec::new()),
        vm(
            "cheapest-tools",
            Strategy::Cheapest,
            vec!["tools".to_owned()],
        ),
        vm("free-first", Strategy::FreeFirst, Vec::new()),
    ])
}

/// The demo's providers and virtual models without emulators (for `tollgate route
/// --demo`, which calls nothing).
pub fn config_for_explain() -> Config {
    let mut cfg = Config::empty(std::env::temp_dir().join("tollgate-demo"));
    for &kind in EmulatorKind::ALL {
        cfg.providers.push(demo_provider_config(
            kind,
            format!("http://127.0.0.1:9{}", kind.base_path()),
        ));
    }
    cfg.routing.virtual_models = demo_virtual_models();
    cfg
}

/// The credentials the demo gives each emulator and provider (loopback only).
const DEMO_KEY: &str = "demo-upstream-key";
const DEMO_SECRET: &str = "demo-upstream-secret";
const DEMO_APP: &str = "demo-app";

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| std::env::temp_dir().join("tollgate-demo"));
    let mut cfg = Config::empty(data_dir.clone());
    cfg.listen = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    cfg.shutdown_grace = std::time::Duration::from_secs(5);
    let admin_key = tollgate_store::keys::generate_key()?.replacen("tg-", "tga-", 1);
    cfg.admin_key = Some(Secret::new(admin_key.clone()));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    for &kind in EmulatorKind::ALL {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let opts = EmulatorOptions {
            api_key: DEMO_KEY.to_owned(),
            secret_key: DEMO_SECRET.to_owned(),
            app_id: DEMO_APP.to_owned(),
            faults: Faults::default(),
        };
        let mut rx = stop_rx.clone();
        tokio::spawn(tollgate_emulators::serve(
            listener,
            router_for(kind, opts),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ));
        let scheme = if kind.base_path().starts_with("ws") {
            ""
        } else {
            "http://"
        };
        cfg.providers.push(demo_provider_config(
            kind,
            format!("{scheme}{addr}{}", kind.base_path()),
        ));
    }
    cfg.routing.virtual_models = demo_virtual_models();

    let stores = Stores::sqlite(&data_dir)?;
    let (_, key) = stores.keys.create_key(&NewKey {
        name: "demo".to_owned(),
        ..Default::default()
    })?;
    let providers: Vec<String> = cfg.providers.iter().map(|p| p.id.clone()).collect();
    let example_model = cfg
        .providers
        .iter()
        .find(|p| p.id == "deepseek")
        .and_then(|p| p.models.first().map(|m| format!("{}/{m}", p.id)))
        .unwrap_or_else(|| "openai/gpt-4o-mini".to_owned());
    let state = AppState::new(cfg.clone(), stores).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;

    println!(
        "tollgate demo: gateway on http://{addr}, data in {}",
        data_dir.display()
    );
    println!("emulated providers: {}", providers.join(", "));
    println!();
    println!("export OPENAI_BASE_URL=http://{addr}/v1");
    println!("export OPENAI_API_KEY={key}");
    println!("export ANTHROPIC_BASE_URL=http://{addr}");
    println!("export ANTHROPIC_API_KEY={key}");
    println!("export TOLLGATE_ADMIN_KEY={admin_key}");
    println!();
    println!("Try:");
    println!(
        "  curl -s http://{addr}/v1/chat/completions -H \"Authorization: Bearer $OPENAI_API_KEY\" \\\n    -H 'content-type: application/json' \\\n    -d '{{\"model\":\"{example_model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'"
    );
    println!(
        "Price routing: use the virtual models \"cheapest\", \"cheapest-tools\" or \"free-first\" as the model;\n  the x-tollgate-route header says which candidate served and why (tollgate route --demo --model cheapest explains)."
    );
    println!("Ctrl-C stops the demo.");
    crate::flush_stdout();

    let result = tollgate_server::run(listener, state, crate::shutdown_signal()).await;
    let _ = stop_tx.send(true);
    result?;
    Ok(())
}
