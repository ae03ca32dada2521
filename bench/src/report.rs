//! The bench's results: grouped by transport, printed as a table with each
//! nova-rs figure beside its raw-lapin ceiling (`<key>_lapin`), or as one
//! JSON object.

use serde_json::{Map, Value};

/// Figures by group (`memory`, `rabbit`, `process`), in the order taken.
#[derive(Debug, Default)]
pub struct Report {
    groups: Vec<(String, Vec<(String, f64)>)>,
}

/// Whether a smaller figure is the better one (latencies, memory, times).
fn lower_is_better(key: &str) -> bool {
    key.contains("_ms") || key.contains("rss") || key.contains("cpu_us")
}

impl Report {
    /// Record `key = value` in `group`.
    pub fn add(&mut self, group: &str, key: &str, value: f64) {
        let i = match self.groups.iter().position(|(g, _)| g == group) {
            Some(i) => i,
            None => {
                self.groups.push((group.to_owned(), Vec::new()));
                self.groups.len() - 1
            }
        };
        self.groups[i].1.push((key.to_owned(), value));
    }

    fn get(&self, group: &str, key: &str) -> Option<f64> {
        self.groups.iter().find(|(g, _)| g == group)?.1.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// One JSON object: `{group: {key: value}}`.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        for (group, figures) in &self.groups {
            let g: Map<String, Value> = figures.iter().map(|(k, v)| (k.clone(), round(*v).into())).collect();
            out.insert(group.clone(), Value::Object(g));
        }
        Value::Object(out)
    }

    /// The table: figure, nova-rs, raw lapin, and nova-rs as a share of lapin
    /// (for latencies, lapin's time over ours, so 1.0 is parity either way).
    pub fn table(&self) -> String {
        let mut s = format!("{:<10} {:<28} {:>14} {:>14} {:>8}\n", "group", "figure", "nova-rs", "raw lapin", "ratio");
        for (group, figures) in &self.groups {
            for (key, value) in figures.iter().filter(|(k, _)| !k.ends_with("_lapin")) {
                let lapin = self.get(group, &format!("{key}_lapin"));
                let ratio = lapin.filter(|l| *l > 0.0 && *value > 0.0).map(|l| {
                    if lower_is_better(key) {
                        l / value
                    } else {
                        value / l
                    }
                });
                s.push_str(&format!(
                    "{group:<10} {key:<28} {:>14} {:>14} {:>8}\n",
                    fmt(*value),
                    lapin.map(fmt).unwrap_or_default(),
                    ratio.map(|r| format!("{r:.2}")).unwrap_or_default()
                ));
            }
        }
        s
    }
}

fn round(v: f64) -> f64 {
    if v.abs() >= 100.0 {
        v.round()
    } else {
        (v * 1000.0).round() / 1000.0
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_figures_with_their_ceiling() {
        let mut r = Report::default();
        r.add("rabbit", "calls_per_s_c64", 900.0);
        r.add("rabbit", "calls_per_s_c64_lapin", 1000.0);
        r.add("rabbit", "seq_p50_ms", 0.5);
        r.add("rabbit", "seq_p50_ms_lapin", 0.4);
        let t = r.table();
        assert!(t.contains("calls_per_s_c64") && t.contains("0.90"), "{t}");
        assert!(t.contains("0.80"), "latency ratio is lapin/ours: {t}");
        assert_eq!(r.to_json()["rabbit"]["seq_p50_ms_lapin"], 0.4);
    }
}
