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

#[derive(Debug, Default)]
struct Inner {
    /// (provider, model, status)
    series: BTreeMap<(String, String, String), Series>,
    /// (provider, model, currency) → nanos
    cost: BTreeMap<(String, String, String), i128>,
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
        let key = (row.provider.clone(), row.model.clone(), row.status.clone());
        let s = m.series.entry(key).or_default();
        s.requests += 1;
        s.prompt_tokens += row.prompt_tokens.max(0) as u64;
        s.completion_tokens += row.completion_tokens.max(0) as u64;
        s.cached_tokens += row.cached_tokens.max(0) as u64;
        if row.usage_source == "estimated" {
            s.estimated += 1;
        }
        if row.cost_nanos > 0 {
            *m.cost
                .entry((
                    row.provider.clone(),
                    row.model.clone(),
                    row.cost_currency.clone(),
                ))
                .or_default() += i128::from(row.cost_nanos);
        }
        let d = m.durations.entry(row.provider.clone()).or_default();
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
        for ((p, md, st), s) in &m.series {
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
        for ((p, md, _), s) in &m.series {
            for (kind, n) in [
                ("prompt", s.prompt_tokens),
                ("completion", s.completion_tokens),
                ("cached", s.cached_tokens),
            ] {
                let _ = writeln!(
                    out,
                    "tollgate_tokens_total{{provider=\"{}\",model=\"{}\",kind=\"{kind}\"}} {n}",
                    esc(p),
                    esc(md)
                );
            }
        }
        family(
            "tollgate_estimated_usage_total",
            "Requests whose usage tollgate had to estimate.",
            "counter",
            &mut out,
        );
        for ((p, md, st), s) in &m.series {
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
        for ((p, md, cur), nanos) in &m.cost {
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
}
