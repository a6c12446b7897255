//! Reading Prometheus' text format, the one way the demo, the benchmarks
//! and the tests read a node's `/metrics`: samples as name, labels and
//! value, a label's value, and a metric's sum over the samples whose labels
//! match.

/// One sample line: `name{labels} value` (the labels without their braces).
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: &'a str,
    pub value: f64,
}

/// The samples of `text`, comments and malformed lines left out.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(sample)
}

fn sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The value of label `name` in `a="x",b="y"`.
pub fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

/// The sum of the samples of metric `name` (exact: no suffix) whose labels
/// contain each of `wanted` (`result="hit"`, say); 0 when none does.
pub fn sum(text: &str, name: &str, wanted: &[&str]) -> f64 {
    samples(text)
        .filter(|s| s.name == name && wanted.iter().all(|w| s.labels.contains(w)))
        .map(|s| s.value)
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP ringside_requests_total Requests.\n\
        ringside_requests_total{result=\"hit\",method=\"GET\"} 3\n\
        ringside_requests_total{result=\"miss\",method=\"GET\"} 2\n\
        ringside_requests_total_extra 100\n\
        ringside_cache_bytes 1.5e3\n\
        not a sample\n";

    #[test]
    fn sums_match_the_name_exactly_and_every_wanted_label() {
        assert_eq!(sum(TEXT, "ringside_requests_total", &[]), 5.0);
        assert_eq!(
            sum(TEXT, "ringside_requests_total", &["result=\"hit\""]),
            3.0
        );
        assert_eq!(sum(TEXT, "ringside_cache_bytes", &[]), 1500.0);
        let none = sum(TEXT, "ringside_absent", &[]);
        assert!(none == 0.0 && none.is_sign_positive());
    }

    #[test]
    fn labels_are_read_by_name() {
        let s = samples(TEXT).next().expect("a sample");
        assert_eq!(label(s.labels, "method"), Some("GET"));
        assert_eq!(label(s.labels, "absent"), None);
    }
}
