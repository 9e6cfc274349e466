//! The tests' one reader of a `/metrics` exposition, with the `prometheus-parse` crate.

use prometheus_parse::{Sample, Scrape, Value};

/// The value of `series` in the exposition `text`, `None` when no sample matches. `series` is
/// written as the exposition prints it: a name, optionally with labels
/// (`cae_reloads_total{result="ok",reason=""}`); a sample matches when it has that name and at
/// least those labels, and several matches are summed (a family asked with fewer labels than it
/// has). A histogram answers by its family name with its count; its `_count` and `_sum` series
/// by their own names.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    let want = parse(&format!("{series} 0"))
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("not a series: {series:?}"));
    let matching: Vec<f64> = parse(text)
        .iter()
        .filter(|s| {
            s.metric == want.metric
                && want
                    .labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k) == Some(v.as_str()))
        })
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => panic!("{series}: summaries are not read here"),
        })
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

fn parse(text: &str) -> Vec<Sample> {
    let lines = text
        .lines()
        .filter(|l| *l != "# EOF")
        .map(|l| Ok(l.to_string()));
    Scrape::parse(lines)
        .unwrap_or_else(|e| panic!("exposition does not parse ({e}):\n{text}"))
        .samples
}
