//! Per-method rate and latency over the last minutes, for the console's
//! charts: a small in-process ring of samples of the same metrics
//! `/metrics` serves.
//!
//! Every `EVERY` the sampler reads the Prometheus text of this process
//! ([`nova_rpc::metrics::render`]) and keeps, per `topic.method`, the
//! request count and the latency histogram's buckets. Between two samples
//! that gives requests per second and the p50 and p99 latencies (from the
//! bucket deltas, as Prometheus' `histogram_quantile` does).
//! `GET /v1/metrics/history` answers the series.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;

/// Between samples.
pub const EVERY: Duration = Duration::from_secs(2);
/// Samples kept (five minutes).
pub const KEPT: usize = 150;

/// One method's counters at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
struct Counters {
    requests: f64,
    /// `(le, cumulative count)`, ascending.
    buckets: Vec<(f64, f64)>,
}

/// Counters of every method at one instant.
type Snapshot = BTreeMap<String, Counters>;

/// One point of a method's series.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Point {
    /// Seconds since the Unix epoch.
    pub t: f64,
    /// Requests per second since the previous sample.
    pub rate: f64,
    /// Median latency since the previous sample, in milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile, in milliseconds.
    pub p99_ms: Option<f64>,
}

/// The ring of samples; clones share it.
#[derive(Debug, Clone, Default)]
pub struct History {
    ring: Arc<Mutex<VecDeque<(f64, Snapshot)>>>,
}

fn labels(line: &str) -> BTreeMap<&str, &str> {
    let inside = line.split_once('{').and_then(|(_, r)| r.split_once('}')).map_or("", |(l, _)| l);
    inside
        .split("\",")
        .filter_map(|kv| kv.split_once("=\""))
        .map(|(k, v)| (k.trim_matches(','), v.trim_end_matches('"')))
        .collect()
}

/// Per method, its counters, from Prometheus text.
fn parse(text: &str) -> Snapshot {
    let mut out = Snapshot::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let l = labels(series);
        let (Some(topic), Some(method)) = (l.get("topic"), l.get("method")) else { continue };
        let key = format!("{topic}.{method}");
        if series.starts_with("nova_rpc_requests_total{") {
            out.entry(key).or_default().requests = value;
        } else if series.starts_with("nova_rpc_request_duration_seconds_bucket{") {
            let le = l.get("le").and_then(|v| if *v == "+Inf" { Some(f64::INFINITY) } else { v.parse().ok() });
            if let Some(le) = le {
                out.entry(key).or_default().buckets.push((le, value));
            }
        }
    }
    for c in out.values_mut() {
        c.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// The `q` quantile of the observations between `before` and `after`
/// (cumulative buckets), linearly within its bucket; `None` without any.
fn quantile(q: f64, before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<f64> {
    let delta: Vec<(f64, f64)> =
        after.iter().map(|(le, n)| (*le, n - before.iter().find(|(l, _)| l == le).map_or(0.0, |(_, b)| *b))).collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for (le, count) in delta {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let within = if count > prev.1 { (rank - prev.1) / (count - prev.1) } else { 1.0 };
            return Some(prev.0 + (le - prev.0) * within);
        }
        prev = (le, count);
    }
    None
}

impl History {
    /// Take a sample of this process's metrics now.
    pub fn sample(&self) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let snapshot = parse(&nova_rpc::metrics::render());
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.push_back((now, snapshot));
        while ring.len() > KEPT {
            ring.pop_front();
        }
    }

    /// Sample every [`EVERY`] until the process ends.
    pub fn run(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            loop {
                tick.tick().await;
                me.sample();
            }
        });
    }

    /// Per `topic.method`, its points (one per pair of samples).
    pub fn series(&self) -> BTreeMap<String, Vec<Point>> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: BTreeMap<String, Vec<Point>> = BTreeMap::new();
        for pair in ring.iter().collect::<Vec<_>>().windows(2) {
            let ((t0, before), (t1, after)) = (pair[0], pair[1]);
            let span = (t1 - t0).max(1e-3);
            for (method, c) in after {
                let prior = before.get(method).cloned().unwrap_or_default();
                let ms = |q| quantile(q, &prior.buckets, &c.buckets).map(|s| s * 1000.0);
                out.entry(method.clone()).or_default().push(Point {
                    t: *t1,
                    rate: (c.requests - prior.requests).max(0.0) / span,
                    p50_ms: ms(0.5),
                    p99_ms: ms(0.99),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP nova_rpc_requests RPC requests
nova_rpc_requests_total{topic="compute",method="ping"} 30
nova_rpc_request_duration_seconds_bucket{le="0.001",topic="compute",method="ping"} 10
nova_rpc_request_duration_seconds_bucket{le="0.01",topic="compute",method="ping"} 28
nova_rpc_request_duration_seconds_bucket{le="+Inf",topic="compute",method="ping"} 30
"#;

    #[test]
    fn counters_and_quantiles() {
        let s = parse(TEXT);
        let ping = &s["compute.ping"];
        assert_eq!(ping.requests, 30.0);
        assert_eq!(ping.buckets, [(0.001, 10.0), (0.01, 28.0), (f64::INFINITY, 30.0)]);
        // 15 of 30 fall at or under 0.001 + (0.01 - 0.001) * (15 - 10) / 18.
        let p50 = quantile(0.5, &[], &ping.buckets).unwrap();
        assert!((p50 - (0.001 + 0.009 * 5.0 / 18.0)).abs() < 1e-9, "{p50}");
        // Only the new observations count.
        assert_eq!(quantile(0.5, &ping.buckets, &ping.buckets), None);
        let later = [(0.001, 10.0), (0.01, 38.0), (f64::INFINITY, 40.0)];
        let p50 = quantile(0.5, &ping.buckets, &later).unwrap();
        assert!(p50 > 0.001 && p50 <= 0.01, "{p50}");
    }
}
