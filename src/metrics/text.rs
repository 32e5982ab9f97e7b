//! OpenMetrics text (what prometheus-client writes) → the classic Prometheus text format 0.0.4,
//! which every scraper and `promtool check metrics` read.

/// OpenMetrics → Prometheus text 0.0.4: counter families are named with their `_total` suffix in
/// HELP and TYPE, and the `# UNIT` and `# EOF` lines go.
pub(super) fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = (open_metrics.lines())
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|p| line.starts_with(p));
        if let Some(prefix) = meta {
            let rest = &line[prefix.len()..];
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(&format!("{prefix}{name}_total {tail}\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::to_prometheus_text;

    #[test]
    fn counters_get_total_in_help_and_type_and_unit_and_eof_lines_go() {
        let open_metrics = "# HELP x_hits Hits.\n# TYPE x_hits counter\nx_hits_total 3\n\
                            # HELP x_bytes Bytes.\n# TYPE x_bytes gauge\n# UNIT x_bytes bytes\n\
                            x_bytes 7\n# EOF\n";
        assert_eq!(
            to_prometheus_text(open_metrics),
            "# HELP x_hits_total Hits.\n# TYPE x_hits_total counter\nx_hits_total 3\n\
             # HELP x_bytes Bytes.\n# TYPE x_bytes gauge\nx_bytes 7\n"
        );
    }
}
