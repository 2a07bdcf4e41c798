//! Catalog tests: the shipped data against its CSV source, validation messages, merging.

use super::*;
use crate::money::parse_nanos;
use crate::pricing::{
    history_rows, price_rows, render_history_table, render_price_table, PriceQuery,
};

const CSV: &str = include_str!("../../../../catalog/source/prices-history.csv");

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn embedded() -> Catalog {
    match Catalog::embedded() {
        Ok(c) => c,
        Err(e) => panic!("embedded catalog refused: {e}"),
    }
}

/// A minimal RFC 4180 reader (quoted fields, doubled quotes), enough for our CSV copy.
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, '\r') => {}
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

fn vendor_id(csv_provider: &str) -> &'static str {
    match csv_provider {
        "OpenAI" => "openai",
        "Anthropic" => "anthropic",
        "Google" => "gemini",
        "Mistral" => "mistral",
        "DeepSeek" => "deepseek",
        "Moonshot" => "moonshot",
        "Zhipu" => "zhipu",
        "ByteDance Volcengine (Doubao)" => "doubao",
        "Alibaba (Qwen)" => "qwen",
        "Baidu (ERNIE)" => "ernie",
        "iFlytek (Spark)" => "spark",
        "Tencent (Hunyuan)" => "hunyuan",
        other => panic!("unknown CSV provider {other}"),
    }
}

/// The catalog entries a CSV model string refers to: text before " (" split on " / ",
/// each part looked up as id/alias, falling back to its text before '/'.
fn resolve<'a>(c: &'a Catalog, provider: &str, model: &str) -> Vec<&'a ModelEntry> {
    let name = model.split(" (").next().unwrap_or(model);
    name.split(" / ")
        .filter_map(|part| {
            c.find(provider, part)
                .or_else(|| part.split('/').next().and_then(|p| c.find(provider, p)))
        })
        .collect()
}

fn price_matches(p: &Prices, input: &str, output: &str, cached: &str) -> bool {
    let n = |s: &str| parse_nanos(s).unwrap();
    p.input == n(input)
        && (output.is_empty() || p.output == n(output))
        && (if cached.is_empty() {
            p.cached_input.is_none()
        } else {
            p.cached_input == Some(n(cached))
        })
}

#[test]
fn embedded_catalog_covers_every_csv_row() {
    let c = embedded();
    let rows = csv_rows(CSV);
    assert_eq!(rows[0][0], "provider");
    let data = &rows[1..];
    assert_eq!(data.len(), 182, "the CSV copy has 182 dated rows");
    for (i, r) in data.iter().enumerate() {
        let line = i + 2;
        let (provider, model, eff, cur, input, output, cached) = (
            vendor_id(&r[0]),
            r[1].as_str(),
            r[2].as_str(),
            r[3].as_str(),
            &r[5],
            &r[6],
            &r[7],
        );
        assert_eq!(r[4], "1000000", "line {line}: unit");
        let entries = resolve(&c, provider, model);
        assert!(
            !entries.is_empty(),
            "line {line}: {provider}/{model} not in the catalog"
        );
        let currency: Currency = cur.parse().unwrap();
        for e in entries {
            let found = e.periods.iter().any(|p| {
                p.currency == currency
                    && (eff.is_empty() || p.effective_from == date(eff))
                    && if model.contains("(>") {
                        p.tiers
                            .iter()
                            .skip(1)
                            .any(|t| price_matches(&t.prices, input, output, cached))
                    } else if model.contains("off-peak") {
                        p.off_peak
                            .as_ref()
                            .is_some_and(|o| price_matches(&o.tiers[0], input, output, cached))
                    } else {
                        // Usually the first tier; kimi-latest's row is its 128k tier.
                        p.tiers
                            .iter()
                            .any(|t| price_matches(&t.prices, input, output, cached))
                    }
            });
            assert!(found, "line {line}: {provider}/{} has no period matching {eff} {cur} {input}/{output}/{cached}", e.id);
            // Blank CSV dates were given a documented date, flagged as an estimate or low.
            if eff.is_empty() {
                assert!(e
                    .periods
                    .iter()
                    .any(|p| p.csv_lines.contains(&(line as u32))));
            }
        }
    }
    // Every low-confidence row is flagged as an estimate in the catalog.
    for e in c.models() {
        for p in &e.periods {
            if p.confidence == Confidence::Low {
                assert!(p.estimate, "{} is low confidence but not an estimate", p.id);
            }
            assert!(!p.source.trim().is_empty());
        }
    }
}

#[test]
fn every_provider_has_a_file_and_ids_resolve() {
    let c = embedded();
    for kind in crate::ProviderKind::ALL {
        if kind == crate::ProviderKind::OpenAiCompatible {
            continue;
        }
        assert!(
            c.models().any(|m| m.provider == kind.as_str()),
            "{}",
            kind.as_str()
        );
    }
    let e = c.find("openai", "GPT-4O-2024-08-06").unwrap();
    assert_eq!(e.id, "gpt-4o-2024-08-06");
    assert_eq!(
        c.find("openai", "gpt-4o-mini-2024-07-18").unwrap().id,
        "gpt-4o-mini"
    );
    assert_eq!(
        c.find("ernie", "ERNIE-Speed-8K").unwrap().id,
        "ernie-speed-128k"
    );
    assert_eq!(c.find("spark", "spark lite").unwrap().id, "lite");
    assert_eq!(
        c.find_any("deepseek/deepseek-chat").unwrap().provider,
        "deepseek"
    );
    assert_eq!(c.find_any("glm-3-turbo").unwrap().provider, "zhipu");
    assert!(c.find("zhipu", "gpt-4o").is_none());
    assert!(c.fx().months().count() >= 48);
}

#[test]
fn glm_3_turbo_history_shows_the_price_war_cut() {
    let c = embedded();
    let rows = history_rows(&c, "glm-3-turbo", None).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[0].effective_from,
            rows[0].input_per_m.as_str(),
            rows[0].input_change.as_deref()
        ),
        (date("2024-01-16"), "5", None)
    );
    assert_eq!(
        (
            rows[1].effective_from,
            rows[1].input_per_m.as_str(),
            rows[1].output_per_m.as_str()
        ),
        (date("2024-05-11"), "1", "1")
    );
    assert_eq!(rows[1].input_change.as_deref(), Some("-80%"));
    assert_eq!(rows[1].output_change.as_deref(), Some("-80%"));
    assert_eq!(rows[1].price_id, "zhipu/glm-3-turbo@2024-05-11");
    let table = render_history_table(&rows);
    assert!(
        table.contains("2024-05-11") && table.contains("-80%"),
        "{table}"
    );
    // qwen-max: input 120 -> 40 (-67%), output unchanged.
    let q = history_rows(&c, "qwen/qwen-max", None).unwrap();
    let cut = q
        .iter()
        .find(|r| r.effective_from == date("2024-05-21"))
        .unwrap();
    assert_eq!(
        (cut.input_change.as_deref(), cut.output_change.as_deref()),
        (Some("-67%"), Some("0%"))
    );
    // ERNIE Speed made free: -100%.
    let s = history_rows(&c, "ERNIE-Speed-8K", None).unwrap();
    assert_eq!(s.last().unwrap().input_change.as_deref(), Some("-100%"));
    assert!(history_rows(&c, "no-such-model", None).is_none());
}

fn row_price(
    rows: &[crate::pricing::PriceRow],
    provider: &str,
    model: &str,
) -> Option<(String, String)> {
    rows.iter()
        .find(|r| r.provider == provider && r.model == model)
        .map(|r| (r.input_per_m.clone(), r.output_per_m.clone()))
}

#[test]
fn price_rows_before_and_after_the_may_2024_price_war() {
    let c = embedded();
    let q = |d: &str| PriceQuery {
        at: date(d),
        currency: None,
        provider: None,
        model: None,
        capability: None,
    };
    let before = price_rows(&c, &q("2024-05-01"));
    let after = price_rows(&c, &q("2024-06-01"));
    let p = |rows: &[crate::pricing::PriceRow], pr: &str, m: &str| row_price(rows, pr, m);
    let s = |a: &str, b: &str| Some((a.to_owned(), b.to_owned()));
    assert_eq!(p(&before, "zhipu", "glm-3-turbo"), s("5", "5"));
    assert_eq!(p(&after, "zhipu", "glm-3-turbo"), s("1", "1"));
    assert_eq!(p(&before, "doubao", "doubao-pro-32k"), None);
    assert_eq!(p(&after, "doubao", "doubao-pro-32k"), s("0.8", "2"));
    assert_eq!(p(&before, "qwen", "qwen-turbo"), s("8", "8"));
    assert_eq!(p(&after, "qwen", "qwen-turbo"), s("2", "6"));
    assert_eq!(p(&after, "qwen", "qwen-long"), s("0.5", "2"));
    assert_eq!(p(&before, "ernie", "ernie-speed-128k"), s("4", "8"));
    assert_eq!(p(&after, "ernie", "ernie-speed-128k"), s("0", "0"));
    assert_eq!(p(&before, "ernie", "ernie-lite-8k"), s("3", "6"));
    assert_eq!(p(&after, "ernie", "ernie-lite-8k"), s("0", "0"));
    assert_eq!(p(&before, "spark", "lite"), s("18", "18"));
    assert_eq!(p(&after, "spark", "lite"), s("0", "0"));
    assert_eq!(p(&after, "hunyuan", "hunyuan-lite"), s("0", "0"));
    assert_eq!(p(&before, "hunyuan", "hunyuan-standard"), s("10", "10"));
    assert_eq!(p(&after, "hunyuan", "hunyuan-standard"), s("4.5", "5"));
    assert_eq!(p(&after, "deepseek", "deepseek-chat"), s("1", "2"));
    // Unchanged vendors stay put.
    assert_eq!(
        p(&before, "moonshot", "moonshot-v1-8k"),
        p(&after, "moonshot", "moonshot-v1-8k")
    );
    assert!(
        after
            .iter()
            .find(|r| r.model == "hunyuan-lite")
            .unwrap()
            .free
    );
    // Sorted by input + output (compared in USD): free models first.
    assert!(after.first().unwrap().free);
    let table = render_price_table(&after);
    assert!(table.starts_with("PROVIDER"), "{table}");
    assert!(table.lines().count() == after.len() + 1);
    // Filters.
    let only_free = price_rows(
        &c,
        &PriceQuery {
            capability: Some("free".into()),
            ..q("2024-06-01")
        },
    );
    assert!(only_free.iter().all(|r| r.free) && only_free.len() >= 5);
    let vision = price_rows(
        &c,
        &PriceQuery {
            capability: Some("vision".into()),
            provider: Some("openai".into()),
            ..q("2025-06-01")
        },
    );
    assert!(vision
        .iter()
        .all(|r| r.capabilities.vision && r.provider == "openai"));
    let sub = price_rows(
        &c,
        &PriceQuery {
            model: Some("GLM-4".into()),
            ..q("2025-06-01")
        },
    );
    assert!(sub.iter().all(|r| r.model.contains("glm-4")) && !sub.is_empty());
}

#[test]
fn usd_conversion_uses_the_month_rate() {
    let c = embedded();
    let q = |d: &str| PriceQuery {
        at: date(d),
        currency: Some(Currency::Usd),
        provider: Some("zhipu".into()),
        model: Some("glm-3-turbo".into()),
        capability: None,
    };
    // May 2024: 1 USD = 7.2331 CNY (ECB-derived monthly mean); 1 CNY = 0.1382533077.. USD, rounded up.
    let may = price_rows(&c, &q("2024-05-15"));
    assert_eq!(may.len(), 1);
    assert_eq!(may[0].currency, Currency::Usd);
    assert_eq!(may[0].input_per_m, "0.138253308");
    assert_eq!(may[0].native_input_per_m, "1");
    assert_eq!(may[0].fx_rate.as_deref(), Some("7.2331"));
    assert_eq!(may[0].fx_rate_month.as_deref(), Some("2024-05"));
    assert_eq!(
        (may[0].fx_rate_base, may[0].fx_rate_quote),
        (Some(Currency::Usd), Some(Currency::Cny))
    );
    // June 2024: 7.2545.
    let june = price_rows(&c, &q("2024-06-03"));
    assert_eq!(june[0].fx_rate.as_deref(), Some("7.2545"));
    assert_eq!(june[0].input_per_m, "0.137845476"); // 1 / 7.2545 = 0.1378454752.., rounded up
                                                    // Config override wins.
    let mut c2 = c.clone();
    c2.fx_mut()
        .set_rate("2024-05", Currency::Usd, Currency::Cny, "8")
        .unwrap();
    let over = price_rows(&c2, &q("2024-05-15"));
    assert_eq!(over[0].input_per_m, "0.125");
    // EUR prices (Mistral's 2023 launch) convert with the direct EUR->USD quote.
    let m = price_rows(
        &c,
        &PriceQuery {
            at: date("2024-01-10"),
            currency: Some(Currency::Usd),
            provider: Some("mistral".into()),
            model: Some("mistral-medium-2312".into()),
            capability: None,
        },
    );
    assert_eq!(m[0].native_currency, Currency::Eur);
    assert_eq!(m[0].fx_rate.as_deref(), Some("1.0905"));
    assert_eq!(m[0].input_per_m, "2.72625"); // 2.5 EUR * 1.0905
}

const BROKEN_HEAD: &str = "provider = \"zhipu\"\n\n[[models]]\nid = \"glm-3-turbo\"\ncontext_window = 128000\nmax_output = 4096\n";

fn add(text: &str) -> Result<Catalog, CatalogError> {
    let mut c = Catalog::empty();
    c.add_toml("catalog/zhipu.toml", text).map(|_| c)
}

#[test]
fn overlapping_period_is_refused_naming_file_model_field() {
    let text = format!(
        "{BROKEN_HEAD}\n[[models.periods]]\neffective_from = 2024-05-11\ncurrency = \"CNY\"\ninput = \"5\"\noutput = \"5\"\nconfidence = \"high\"\nsource = \"s\"\n\n[[models.periods]]\neffective_from = 2024-05-11\ncurrency = \"CNY\"\ninput = \"1\"\noutput = \"1\"\nconfidence = \"high\"\nsource = \"s\"\n"
    );
    let e = add(&text).unwrap_err().to_string();
    assert_eq!(e, "catalog/zhipu.toml: model glm-3-turbo: periods[1].effective_from 2024-05-11 overlaps periods[0]");
    // Same date in another region is not an overlap.
    let ok = text.replacen("input = \"1\"", "region = \"intl\"\ninput = \"1\"", 1);
    let c = add(&ok).unwrap();
    assert_eq!(c.find("zhipu", "glm-3-turbo").unwrap().periods.len(), 2);
}

#[test]
fn negative_price_and_other_broken_fields_are_refused() {
    let period = |body: &str| format!("{BROKEN_HEAD}\n[[models.periods]]\n{body}\n");
    let base = "effective_from = 2024-05-11\ncurrency = \"CNY\"\ninput = \"1\"\noutput = \"1\"\nconfidence = \"high\"\nsource = \"s\"";
    let err = |body: &str| add(&period(body)).unwrap_err().to_string();
    assert_eq!(
        err(&base.replace("input = \"1\"", "input = -1.5")),
        "catalog/zhipu.toml: model glm-3-turbo: periods[0].input is negative (-1.5); prices must be >= 0"
    );
    assert!(err(&base.replace("output = \"1\"", "output = \"-0.1\""))
        .contains("periods[0].output is negative"));
    assert!(err(&base.replace("CNY", "JPY"))
        .contains("model glm-3-turbo: periods[0].currency unknown currency `JPY`"));
    assert!(err(&base.replace("source = \"s\"", "source = \"\""))
        .contains("periods[0].source is missing"));
    assert!(err(&base.replace("source = \"s\"", "")).contains("periods[0].source is missing"));
    assert!(err(&format!("{base}\ninptu = \"1\"")).contains("periods[0].inptu is not a known key"));
    assert!(
        err(&base.replace("input = \"1\"", "input = \"0.0000000001\""))
            .contains("periods[0].input `0.0000000001` has more than 9 decimal places")
    );
    assert!(err(&base.replace("input = \"1\"", "input = 1e-3")).contains("periods[0].input"));
    // Floats are read from their text, exactly.
    let c = add(&period(&base.replace("input = \"1\"", "input = 0.075"))).unwrap();
    assert_eq!(
        c.find("zhipu", "glm-3-turbo").unwrap().periods[0]
            .base()
            .input,
        75_000_000
    );
    // Unsorted periods.
    let two = format!(
        "{}\n\n[[models.periods]]\n{}",
        period(base),
        base.replace("2024-05-11", "2024-01-01")
    );
    assert_eq!(
        add(&two).unwrap_err().to_string(),
        "catalog/zhipu.toml: model glm-3-turbo: periods[1].effective_from 2024-01-01 is earlier than periods[0] (2024-05-11); periods must be sorted by date"
    );
    // Tiers out of order, or a later tier cheaper.
    let tiers = |t: &str| {
        err(&format!(
            "effective_from = 2024-05-11\ncurrency = \"USD\"\nconfidence = \"high\"\nsource = \"s\"\ntiers = [{t}]"
        ))
    };
    assert!(tiers("{ max_prompt_tokens = 200000, input = \"1\", output = \"1\" }, { max_prompt_tokens = 100000, input = \"2\", output = \"2\" }, { input = \"3\", output = \"3\" }")
        .contains("periods[0].tiers[1].max_prompt_tokens tiers must be ordered"));
    assert!(tiers("{ max_prompt_tokens = 100000, input = \"2\", output = \"2\" }, { input = \"1\", output = \"3\" }")
        .contains("periods[0].tiers[1] is cheaper than tiers[0]"));
    assert!(
        tiers("{ max_prompt_tokens = 100000, input = \"2\", output = \"2\" }")
            .contains("is the last tier")
    );
    // Unknown top-level and model keys; a file with models but no provider.
    assert!(add("provider = \"x\"\nfoo = 1\n")
        .unwrap_err()
        .to_string()
        .contains("catalog/zhipu.toml: foo is not a known key"));
    assert!(add(&format!("{BROKEN_HEAD}colour = \"red\"\n"))
        .unwrap_err()
        .to_string()
        .contains("model glm-3-turbo: colour is not a known key"));
    assert!(add("[[models]]\nid = \"m\"\n")
        .unwrap_err()
        .to_string()
        .contains("provider is missing"));
    assert!(add("not toml =")
        .unwrap_err()
        .to_string()
        .starts_with("catalog/zhipu.toml: "));
    // New model without prices.
    assert!(add(BROKEN_HEAD)
        .unwrap_err()
        .to_string()
        .contains("periods is empty"));
}

#[test]
fn user_files_add_models_and_override_periods() {
    let mut c = embedded();
    let before = c.clone();
    // Override the 2024-05-11 period of glm-3-turbo, add a later one, add a model.
    let user = r#"
provider = "zhipu"

[[models]]
id = "GLM-3-Turbo"
aliases = ["chatglm3"]

[[models.periods]]
effective_from = 2024-05-11
currency = "CNY"
input = "0.9"
output = "0.9"
confidence = "med"
source = "my contract"

[[models.periods]]
effective_from = 2025-01-01
currency = "CNY"
input = "0.5"
output = "0.5"
confidence = "med"
source = "my contract"

[[models]]
id = "my-glm"
context_window = 8192
max_output = 1024
capabilities = { tools = true }
periods = [{ effective_from = 2024-01-01, currency = "CNY", input = 1, output = 2, confidence = "high", source = "me" }]
"#;
    c.add_toml("config:catalog", user).unwrap();
    let g = c.find("zhipu", "chatglm3").unwrap();
    assert_eq!(g.id, "glm-3-turbo");
    assert_eq!(g.periods.len(), 3);
    assert_eq!(g.periods[1].base().input, 900_000_000);
    assert_eq!(g.periods[1].source, "my contract");
    assert_eq!(
        g.context_window, 128000,
        "fields absent in the user file are kept"
    );
    let m = c.find("zhipu", "my-glm").unwrap();
    assert!(m.capabilities.tools && m.capabilities.streaming && !m.capabilities.vision);
    assert_eq!(m.default_region, "cn", "file default region applies");
    assert_eq!(m.file, "config:catalog");
    // A broken file changes nothing.
    let mut c3 = before.clone();
    let bad = format!("{user}\n[[models]]\nid = \"x\"\naliases = [\"glm-4\"]\ncontext_window = 1\nmax_output = 1\nperiods = [{{ effective_from = 2024-01-01, currency = \"CNY\", input = 1, output = 1, confidence = \"high\", source = \"s\" }}]\n");
    let e = c3.add_toml("user.toml", &bad).unwrap_err().to_string();
    assert_eq!(
        e,
        "user.toml: model x: aliases[0] `glm-4` already names model glm-4"
    );
    assert_eq!(
        c3.find("zhipu", "glm-3-turbo"),
        before.find("zhipu", "glm-3-turbo")
    );
    assert!(c3.find("zhipu", "my-glm").is_none());
    // FX snippets merge too.
    c3.add_toml(
        "fx.toml",
        "[fx]\n[[fx.months]]\nmonth = \"2027-01\"\nusd_cny = \"7.01\"\n",
    )
    .unwrap();
    assert_eq!(
        c3.fx()
            .get(
                YearMonth {
                    year: 2027,
                    month: 1
                },
                Currency::Usd,
                Currency::Cny
            )
            .map(|e| e.rate.to_string()),
        Some("7.01".to_owned())
    );
}

#[test]
fn load_reads_extra_directories() {
    let dir = std::env::temp_dir().join(format!("tollgate-catalog-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("local.toml"),
        "provider = \"vllm-local\"\n[[models]]\nid = \"qwen2.5-7b\"\ncontext_window = 32768\nmax_output = 4096\n[[models.periods]]\neffective_from = 2024-01-01\ncurrency = \"USD\"\ninput = 0\noutput = 0\nconfidence = \"high\"\nsource = \"self-hosted\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("ignored.txt"), "not toml").unwrap();
    let c = Catalog::load(std::slice::from_ref(&dir)).unwrap();
    assert!(c.find("vllm-local", "qwen2.5-7b").is_some());
    assert!(c.files().iter().any(|f| f.ends_with("local.toml")));
    std::fs::write(
        dir.join("z-broken.toml"),
        "provider = \"x\"\n[[models]]\nid = \"y\"\nbogus = 1\n",
    )
    .unwrap();
    let e = Catalog::load(std::slice::from_ref(&dir))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("z-broken.toml: model y: bogus is not a known key"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(Catalog::load(&[dir]).is_err());
}

#[test]
fn regions_keep_cny_and_usd_lists_apart() {
    let c = embedded();
    let e = c.find("deepseek", "deepseek-chat").unwrap();
    assert_eq!(e.default_region, "cn");
    let at = date("2025-03-01").and_time(NaiveTime::MIN).and_utc();
    let cn = e.price_at(at).unwrap();
    assert_eq!(
        (cn.currency, cn.base().input),
        (Currency::Cny, 2_000_000_000)
    );
    assert_eq!(cn.id, "deepseek/deepseek-chat@2025-02-26");
    let intl = e.price_at_region(at, "intl").unwrap();
    assert_eq!(
        (intl.currency, intl.base().input),
        (Currency::Usd, 270_000_000)
    );
    assert_eq!(intl.id, "deepseek/deepseek-chat@2025-02-26:intl");
    assert_eq!(e.regions(), vec!["cn", "intl"]);
    let k2 = c.find("moonshot", "kimi-k2-0905-preview").unwrap();
    assert_eq!(
        k2.price_at(at.with_timezone(&Utc) + chrono::Duration::days(300))
            .unwrap()
            .currency,
        Currency::Usd
    );
}
