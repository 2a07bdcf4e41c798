//! Prometheus metrics at `GET /metrics`: requests, tokens and cost by provider, model
//! and status (fed by every ledger row, in one place: settlement), request durations,
//! and the circuit breakers' state. Exact money is written as decimal text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use tollgate_core::money::format_nanos;
use tollgate_store::LedgerRow;

use crate::health::Snapshot;

/// Upper bounds (ms) of the duration histogram.
const BUCKETS_MS: [i64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
];

#[derive(Debug, Default)]
struct Series {
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cached_tokens: u64,
    estimated: u64,
}

/// Three string keys, nested so a lookup borrows them (a tuple key would be three owned
/// `String`s made on every request); iterated in the order a tuple key would give.
type By3<V> = BTreeMap<String, BTreeMap<String, BTreeMap<String, V>>>;

/// `map[key]`, created on first use; an existing key costs no allocation.
fn slot<'a, V: Default>(map: &'a mut BTreeMap<String, V>, key: &str) -> &'a mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key)
        .unwrap_or_else(|| unreachable!("inserted above"))
}

fn slot3<'a, V: Default>(map: &'a mut By3<V>, a: &str, b: &str, c: &str) -> &'a mut V {
    slot(slot(slot(map, a), b), c)
}

/// Every `(a, b, c, value)` of `map`, in key order.
fn entries3<V>(map: &By3<V>) -> impl Iterator<Item = (&str, &str, &str, &V)> {
    map.iter().flat_map(|(a, m)| {
        m.iter().flat_map(move |(b, m)| {
            m.iter()
                .map(move |(c, v)| (a.as_str(), b.as_str(), c.as_str(), v))
        })
    })
}

#[derive(Debug, Default)]
struct Inner {
    /// (provider, model, status)
    series: By3<Series>,
    /// (provider, model, currency) → nanos
    cost: By3<i128>,
    /// provider → bucket counts (+Inf last), sum, count
    durations: BTreeMap<String, ([u64; BUCKETS_MS.len() + 1], i64, u64)>,
}

/// Counters since start-up.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one settled request.
    pub fn record(&self, row: &LedgerRow) {
        let Ok(mut m) = self.inner.lock() else { return };
        let s = slot3(&mut m.series, &row.provider, &row.model, &row.status);
        s.requests += 1;
        s.prompt_tokens += row.prompt_tokens.max(0) as u64;
        s.completion_tokens += row.completion_tokens.max(0) as u64;
        s.cached_tokens += row.cached_tokens.max(0) as u64;
        if row.usage_source == "estimated" {
            s.estimated += 1;
        }
        if row.cost_nanos > 0 {
            *slot3(&mut m.cost, &row.provider, &row.model, &row.cost_currency) +=
                i128::from(row.cost_nanos);
        }
        let d = slot(&mut m.durations, &row.provider);
        let i = BUCKETS_MS
            .iter()
            .position(|b| row.latency_ms <= *b)
            .unwrap_or(BUCKETS_MS.len());
        d.0[i] += 1;
        d.1 += row.latency_ms;
        d.2 += 1;
    }

    /// The text exposition format.
    pub fn render(&self, health: &Snapshot) -> String {
        let mut out = String::new();
        let Ok(m) = self.inner.lock() else { return out };
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let family = |name: &str, help: &str, kind: &str, out: &mut String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            "tollgate_requests_total",
            "Requests settled, by provider, model and status.",
            "counter",
            &mut out,
        );
        for (p, md, st, s) in entries3(&m.series) {
            let _ = writeln!(
                out,
                "tollgate_requests_total{{provider=\"{}\",model=\"{}\",status=\"{}\"}} {}",
                esc(p),
                esc(md),
                esc(st),
                s.requests
            );
        }
        family(
            "tollgate_tokens_total",
            "Tokens by provider, model and kind (prompt includes cached).",
            "counter",
            &mut out,
        );
        // Summed over statuses: one series per provider, model and kind.
        for (p, models) in &m.series {
            for (md, statuses) in models {
                let (mut prompt, mut completion, mut cached) = (0, 0, 0);
                for s in statuses.values() {
                    prompt += s.prompt_tokens;
                    completion += s.completion_tokens;
                    cached += s.cached_tokens;
                }
                for (kind, n) in [
                    ("prompt", prompt),
                    ("completion", completion),
                    ("cached", cached),
                ] {
                    let _ = writeln!(
                        out,
                        "tollgate_tokens_total{{provider=\"{}\",model=\"{}\",kind=\"{kind}\"}} {n}",
                        esc(p),
                        esc(md)
                    );
                }
            }
        }
        family(
            "tollgate_estimated_usage_total",
            "Requests whose usage tollgate had to estimate.",
            "counter",
            &mut out,
        );
        for (p, md, st, s) in entries3(&m.series) {
            let _ = writeln!(
                out,
                "tollgate_estimated_usage_total{{provider=\"{}\",model=\"{}\",status=\"{}\"}} {}",
                esc(p),
                esc(md),
                esc(st),
                s.estimated
            );
        }
        family(
            "tollgate_cost_total",
            "Cost in the vendor's currency (exact decimal).",
            "counter",
            &mut out,
        );
        for (p, md, cur, nanos) in entries3(&m.cost) {
            let _ = writeln!(
                out,
                "tollgate_cost_total{{provider=\"{}\",model=\"{}\",currency=\"{}\"}} {}",
                esc(p),
                esc(md),
                esc(cur),
                format_nanos(*nanos, 1)
            );
        }
        family(
            "tollgate_request_duration_ms",
            "Request duration from admission to settlement.",
            "histogram",
            &mut out,
        );
        for (p, (buckets, sum, count)) in &m.durations {
            let mut acc = 0;
            for (i, le) in BUCKETS_MS.iter().enumerate() {
                acc += buckets[i];
                let _ = writeln!(
                    out,
                    "tollgate_request_duration_ms_bucket{{provider=\"{}\",le=\"{le}\"}} {acc}",
                    esc(p)
                );
            }
            acc += buckets[BUCKETS_MS.len()];
            let _ = writeln!(
                out,
                "tollgate_request_duration_ms_bucket{{provider=\"{}\",le=\"+Inf\"}} {acc}",
                esc(p)
            );
            let _ = writeln!(
                out,
                "tollgate_request_duration_ms_sum{{provider=\"{}\"}} {sum}",
                esc(p)
            );
            let _ = writeln!(
                out,
                "tollgate_request_duration_ms_count{{provider=\"{}\"}} {count}",
                esc(p)
            );
        }
        family(
            "tollgate_circuit_open",
            "1 while a model's circuit breaker refuses calls.",
            "gauge",
            &mut out,
        );
        for h in &health.models {
            let open = u8::from(h.state != "closed");
            let _ = writeln!(
                out,
                "tollgate_circuit_open{{model=\"{}\",state=\"{}\"}} {open}",
                esc(&h.model),
                h.state
            );
        }
        family(
            "tollgate_upstream_failures_total",
            "Upstream failures counted by the breakers.",
            "counter",
            &mut out,
        );
        for h in &health.models {
            let _ = writeln!(
                out,
                "tollgate_upstream_failures_total{{model=\"{}\"}} {}",
                esc(&h.model),
                h.failures
            );
        }
        family(
            "tollgate_ttft_ewma_ms",
            "Recent time to first token (EWMA).",
            "gauge",
            &mut out,
        );
        for h in &health.models {
            if let Some(t) = h.ttft_ewma_ms {
                let _ = writeln!(
                    out,
                    "tollgate_ttft_ewma_ms{{model=\"{}\"}} {t:.1}",
                    esc(&h.model)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new();
        let row = LedgerRow {
            provider: "deepseek".into(),
            model: "deepseek-chat".into(),
            status: "ok".into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            cost_nanos: 1_500,
            cost_currency: "CNY".into(),
            latency_ms: 30,
            ..Default::default()
        };
        m.record(&row);
        m.record(&row);
        let text = m.render(&Snapshot {
            models: vec![],
            free_tiers: vec![],
        });
        assert!(text.contains("tollgate_requests_total{provider=\"deepseek\",model=\"deepseek-chat\",status=\"ok\"} 2"));
        assert!(text.contains("tollgate_cost_total{provider=\"deepseek\",model=\"deepseek-chat\",currency=\"CNY\"} 0.000003"));
        assert!(
            text.contains("tollgate_request_duration_ms_bucket{provider=\"deepseek\",le=\"25\"} 0")
        );
        assert!(
            text.contains("tollgate_request_duration_ms_bucket{provider=\"deepseek\",le=\"50\"} 2")
        );
    }

    /// Rows of one model with different statuses: requests stay apart by status, tokens
    /// are summed into one series per kind, and no series appears twice.
    #[test]
    fn every_series_appears_once() {
        let m = Metrics::new();
        let row = |status: &str, prompt: i64| LedgerRow {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            status: status.into(),
            prompt_tokens: prompt,
            completion_tokens: 1,
            latency_ms: 3,
            ..Default::default()
        };
        m.record(&row("ok", 10));
        m.record(&row("upstream_error", 7));
        m.record(&row("ok", 10));
        let text = m.render(&Snapshot {
            models: vec![],
            free_tiers: vec![],
        });
        assert!(text.contains(
            "tollgate_requests_total{provider=\"openai\",model=\"gpt-4o-mini\",status=\"ok\"} 2"
        ));
        assert!(text.contains("tollgate_requests_total{provider=\"openai\",model=\"gpt-4o-mini\",status=\"upstream_error\"} 1"));
        assert!(text.contains(
            "tollgate_tokens_total{provider=\"openai\",model=\"gpt-4o-mini\",kind=\"prompt\"} 27"
        ));
        assert!(text.contains("tollgate_tokens_total{provider=\"openai\",model=\"gpt-4o-mini\",kind=\"completion\"} 3"));
        let mut seen = std::collections::HashSet::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let series = line.rsplit_once(' ').map(|(s, _)| s).unwrap_or(line);
            assert!(seen.insert(series.to_owned()), "twice: {series}");
        }
    }
}
