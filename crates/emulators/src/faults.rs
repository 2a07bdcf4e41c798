//! Fault injection, shared by every emulator.
//!
//! Faults are written `key=value` pairs separated by `,` or `;`:
//!
//! | key | effect |
//! |---|---|
//! | `latency_ms=N` | wait N ms before answering (before the first byte of a stream) |
//! | `chunk_interval_ms=N` | wait N ms between stream chunks |
//! | `chunks=N` | make the answer exactly N content chunks long |
//! | `status=S` | answer with HTTP status S and the vendor's error body for it |
//! | `body=TEXT` | with `status`: this body instead (URL-style `%2C` for commas) |
//! | `rate_limit=N` | answer 429 with `retry-after: N` in the vendor's shape |
//! | `disconnect_after=N` | close the stream abruptly after N chunks (no end marker, no usage) |
//! | `malformed=1` | send a body (or a stream event) that is not valid JSON |
//! | `stream_error_after=N` | after N chunks send the vendor's mid-stream error event |
//! | `fail_first=N` | apply `status`/`rate_limit` only to the first N requests, then succeed |
//!
//! They come from the `--fault` flag (every request), from `POST /_emulator/faults`
//! (replaces the flag's faults at run time), and from the `x-emulator-fault` request
//! header (this request only; wins over the others).

use std::time::Duration;

/// Parsed faults. `Default` is "behave".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    pub latency: Option<Duration>,
    pub chunk_interval: Option<Duration>,
    pub chunks: Option<u32>,
    pub status: Option<u16>,
    pub body: Option<String>,
    pub rate_limit: Option<u64>,
    pub disconnect_after: Option<u32>,
    pub malformed: bool,
    pub stream_error_after: Option<u32>,
    pub fail_first: Option<u64>,
}

impl Faults {
    /// Parses `key=value` pairs; unknown keys and bad values are errors.
    pub fn parse(spec: &str) -> Result<Faults, String> {
        let mut f = Faults::default();
        for pair in spec
            .split([',', ';'])
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("fault '{pair}' is not key=value"))?;
            let num = |v: &str| -> Result<u64, String> {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("fault '{k}' needs a whole number, got '{v}'"))
            };
            match k.trim() {
                "latency_ms" => f.latency = Some(Duration::from_millis(num(v)?)),
                "chunk_interval_ms" => f.chunk_interval = Some(Duration::from_millis(num(v)?)),
                "chunks" => f.chunks = Some(num(v)?.clamp(1, 100_000) as u32),
                "status" => {
                    let s = num(v)?;
                    if !(100..=599).contains(&s) {
                        return Err(format!("fault 'status' must be an HTTP status, got {s}"));
                    }
                    f.status = Some(s as u16);
                }
                "body" => f.body = Some(v.replace("%2C", ",").replace("%3B", ";")),
                "rate_limit" => f.rate_limit = Some(num(v)?),
                "disconnect_after" => f.disconnect_after = Some(num(v)? as u32),
                "malformed" => f.malformed = num(v)? != 0,
                "stream_error_after" => f.stream_error_after = Some(num(v)? as u32),
                "fail_first" => f.fail_first = Some(num(v)?),
                other => return Err(format!("unknown fault '{other}'")),
            }
        }
        Ok(f)
    }

    /// Whether this request (the `n`-th, counting from 1) should get the error fault.
    pub fn errs_on(&self, n: u64) -> bool {
        (self.status.is_some() || self.rate_limit.is_some())
            && self.fail_first.is_none_or(|first| n <= first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let f =
            Faults::parse("latency_ms=20; chunk_interval_ms=10,chunks=100,status=503,fail_first=2")
                .unwrap();
        assert_eq!(f.latency, Some(Duration::from_millis(20)));
        assert_eq!(f.chunks, Some(100));
        assert!(f.errs_on(2) && !f.errs_on(3));
        assert!(Faults::parse("nope=1").is_err());
        assert!(Faults::parse("status=abc").is_err());
        assert!(Faults::parse("status=99").is_err());
        assert_eq!(Faults::parse("").unwrap(), Faults::default());
    }
}
