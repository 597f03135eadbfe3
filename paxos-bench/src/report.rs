//! The comparison's outputs: a text table, `report.json`, and a hand-written SVG
//! chart (grouped bars, Basic against Multi per configuration, log scale).

use std::fmt::Write as _;

use crate::spec::{ProtocolKind, Record, Spec};

/// One configuration's result for one protocol: a record, or why there is none.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// What was run.
    pub spec: Spec,
    /// Its figures, or the error that voided them.
    pub result: Result<Record, String>,
}

/// Configurations in first-seen order, each with its Basic and Multi outcomes.
fn rows(outcomes: &[Outcome]) -> Vec<(Spec, Option<&Outcome>, Option<&Outcome>)> {
    let mut rows: Vec<(Spec, Option<&Outcome>, Option<&Outcome>)> = Vec::new();
    for outcome in outcomes {
        let key = outcome.spec.with_protocol(ProtocolKind::Basic);
        let position = match rows.iter().position(|(spec, _, _)| *spec == key) {
            Some(position) => position,
            None => {
                rows.push((key, None, None));
                rows.len() - 1
            }
        };
        match outcome.spec.protocol {
            ProtocolKind::Basic => rows[position].1 = Some(outcome),
            ProtocolKind::Multi => rows[position].2 = Some(outcome),
        }
    }
    rows
}

/// `1234567.0` as `1.23M`.
pub fn human(value: f64) -> String {
    let (scaled, suffix) = if value >= 1e9 {
        (value / 1e9, "G")
    } else if value >= 1e6 {
        (value / 1e6, "M")
    } else if value >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    if scaled >= 100.0 {
        format!("{scaled:.0}{suffix}")
    } else if scaled >= 10.0 {
        format!("{scaled:.1}{suffix}")
    } else {
        format!("{scaled:.2}{suffix}")
    }
}

fn ops(outcome: Option<&Outcome>) -> String {
    match outcome.map(|outcome| &outcome.result) {
        Some(Ok(record)) => human(record.ops_per_sec),
        Some(Err(_)) => "error".to_string(),
        None => "-".to_string(),
    }
}

fn latency(outcome: Option<&Outcome>) -> String {
    match outcome.map(|outcome| &outcome.result) {
        Some(Ok(record)) => format!("{}/{}", short_us(record.p50_us), short_us(record.p99_us)),
        Some(Err(_)) => "error".to_string(),
        None => "-".to_string(),
    }
}

fn short_us(micros: f64) -> String {
    if micros >= 100.0 {
        format!("{micros:.0}")
    } else {
        format!("{micros:.1}")
    }
}

fn rss(outcome: Option<&Outcome>) -> String {
    match outcome.map(|outcome| &outcome.result) {
        Some(Ok(record)) => format!("{:.0}", record.peak_rss_bytes as f64 / (1024.0 * 1024.0)),
        Some(Err(_)) => "error".to_string(),
        None => "-".to_string(),
    }
}

fn ratio(basic: Option<&Outcome>, multi: Option<&Outcome>) -> Option<f64> {
    match (basic.map(|outcome| &outcome.result), multi.map(|outcome| &outcome.result)) {
        (Some(Ok(basic)), Some(Ok(multi))) if basic.ops_per_sec > 0.0 => Some(multi.ops_per_sec / basic.ops_per_sec),
        _ => None,
    }
}

/// The comparison as a fixed-width text table, followed by any errors.
pub fn table(outcomes: &[Outcome]) -> String {
    let header = vec![
        "configuration".to_string(),
        "Basic ops/s".to_string(),
        "Multi ops/s".to_string(),
        "Multi/Basic".to_string(),
        "Basic p50/p99 us".to_string(),
        "Multi p50/p99 us".to_string(),
        "peak RSS MiB B/M".to_string(),
    ];
    let mut lines = vec![header];
    for (spec, basic, multi) in rows(outcomes) {
        lines.push(vec![
            spec.label(),
            ops(basic),
            ops(multi),
            ratio(basic, multi).map_or("-".to_string(), |ratio| format!("{ratio:.2}x")),
            latency(basic),
            latency(multi),
            format!("{}/{}", rss(basic), rss(multi)),
        ]);
    }
    let widths: Vec<usize> =
        (0..lines[0].len()).map(|column| lines.iter().map(|line| line[column].len()).max().unwrap_or(0)).collect();
    let mut text = String::new();
    for (number, line) in lines.iter().enumerate() {
        for (column, cell) in line.iter().enumerate() {
            if column == 0 {
                let _ = write!(text, "{cell:<width$}", width = widths[column]);
            } else {
                let _ = write!(text, "  {cell:>width$}", width = widths[column]);
            }
        }
        text.push('\n');
        if number == 0 {
            text.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
            text.push('\n');
        }
    }
    for outcome in outcomes {
        if let Err(error) = &outcome.result {
            let _ = writeln!(text, "error: {} {}: {error}", outcome.spec.protocol, outcome.spec.label());
        }
    }
    text
}

/// The successful records as a JSON array (the `report.json` format).
pub fn json(outcomes: &[Outcome]) -> String {
    let records: Vec<&Record> = outcomes.iter().filter_map(|outcome| outcome.result.as_ref().ok()).collect();
    serde_json::to_string_pretty(&records).unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A self-contained SVG: per configuration, a Basic bar and a Multi bar of
/// commands/s on a log scale, with the Multi/Basic ratio above each pair.
pub fn svg(outcomes: &[Outcome], title: &str) -> String {
    const BASIC_COLOR: &str = "#4e79a7";
    const MULTI_COLOR: &str = "#f28e2b";
    let rows = rows(outcomes);
    let values: Vec<f64> = outcomes
        .iter()
        .filter_map(|outcome| outcome.result.as_ref().ok())
        .map(|record| record.ops_per_sec)
        .filter(|value| *value > 0.0)
        .collect();
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(0.0, f64::max);
    let (decade_low, decade_high) = if values.is_empty() {
        (0, 1)
    } else {
        (low.log10().floor() as i32, (high.log10().ceil() as i32).max(low.log10().floor() as i32 + 1))
    };
    let (left, top, plot_height, group_width, bar_width) = (170.0, 60.0, 360.0, 90.0, 30.0);
    let label_space = 190.0;
    let plot_width = group_width * rows.len().max(1) as f64;
    let width = left + plot_width + 30.0;
    let height = top + plot_height + label_space;
    let y_of = |value: f64| -> f64 {
        let fraction = (value.log10() - decade_low as f64) / (decade_high - decade_low) as f64;
        top + plot_height * (1.0 - fraction.clamp(0.0, 1.0))
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{left}" y="24" font-size="16" font-weight="bold">{}</text>"#, escape(title));
    let _ = writeln!(
        svg,
        r##"<rect x="{}" y="32" width="12" height="12" fill="{BASIC_COLOR}"/><text x="{}" y="43">Basic Paxos</text><rect x="{}" y="32" width="12" height="12" fill="{MULTI_COLOR}"/><text x="{}" y="43">Multi-Paxos</text><text x="{}" y="43" fill="#555">commands/s, log scale; ratio Multi/Basic above each pair</text>"##,
        left,
        left + 16.0,
        left + 110.0,
        left + 126.0,
        left + 230.0
    );
    for decade in decade_low..=decade_high {
        let value = 10f64.powi(decade);
        let y = y_of(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + plot_width,
            left - 6.0,
            y + 4.0,
            human(value)
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{:.1}" stroke="#333"/><line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        top + plot_height,
        top + plot_height,
        left + plot_width,
        top + plot_height
    );
    let bottom = top + plot_height;
    for (group, (spec, basic, multi)) in rows.iter().enumerate() {
        let group_left = left + group as f64 * group_width + (group_width - 2.0 * bar_width) / 2.0;
        for (offset, outcome, color) in [(0.0, basic, BASIC_COLOR), (bar_width, multi, MULTI_COLOR)] {
            let x = group_left + offset;
            match outcome.map(|outcome| &outcome.result) {
                Some(Ok(record)) if record.ops_per_sec > 0.0 => {
                    let y = y_of(record.ops_per_sec);
                    let _ = writeln!(
                        svg,
                        r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{} {}: {} ops/s, p50 {:.1} us, p99 {:.1} us</title></rect>"#,
                        bar_width - 2.0,
                        bottom - y,
                        record.protocol,
                        escape(&spec.label()),
                        human(record.ops_per_sec),
                        record.p50_us,
                        record.p99_us
                    );
                    let _ = writeln!(
                        svg,
                        r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text>"#,
                        x + (bar_width - 2.0) / 2.0,
                        y - 3.0,
                        human(record.ops_per_sec)
                    );
                }
                Some(_) => {
                    let _ = writeln!(
                        svg,
                        r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#c00" text-anchor="middle">error</text>"##,
                        x + bar_width / 2.0,
                        bottom - 4.0
                    );
                }
                None => {}
            }
        }
        if let Some(ratio) = ratio(*basic, *multi) {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" font-weight="bold" text-anchor="middle">{ratio:.1}x</text>"#,
                group_left + bar_width,
                top - 4.0
            );
        }
        let label_x = group_left + bar_width;
        let label_y = bottom + 14.0;
        let _ = writeln!(
            svg,
            r#"<text x="{label_x:.1}" y="{label_y:.1}" text-anchor="end" transform="rotate(-40 {label_x:.1} {label_y:.1})">{}</text>"#,
            escape(&spec.label())
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{StorageKind, TransportKind};

    fn outcome(protocol: ProtocolKind, ops_per_sec: f64) -> Outcome {
        let spec = Spec {
            protocol,
            transport: TransportKind::Loop,
            storage: StorageKind::Memory,
            replicas: 3,
            command_bytes: 8,
            in_flight: 1,
            batch: true,
        };
        let record = Record {
            protocol,
            transport: spec.transport,
            storage: spec.storage,
            replicas: 3,
            command_bytes: 8,
            in_flight: 1,
            batch: true,
            ops_per_sec,
            p50_us: 1.5,
            p99_us: 3.0,
            peak_rss_bytes: 1 << 20,
            commands: 1000,
        };
        Outcome { spec, result: Ok(record) }
    }

    #[test]
    fn table_json_and_chart_show_both_protocols() {
        let mut failed = outcome(ProtocolKind::Basic, 0.0);
        failed.spec.in_flight = 64;
        failed.result = Err("logs disagree".to_string());
        let outcomes = [outcome(ProtocolKind::Basic, 1_000_000.0), outcome(ProtocolKind::Multi, 4_000_000.0), failed];
        let table = table(&outcomes);
        assert!(table.contains("1.00M"), "{table}");
        assert!(table.contains("4.00x"), "{table}");
        assert!(table.contains("error: basic loop/memory n=3 8B if=64"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&json(&outcomes)).unwrap();
        let array = json.as_array().unwrap();
        assert_eq!(array.len(), 2);
        assert_eq!(array[0]["protocol"], "basic");
        assert_eq!(array[1]["transport"], "loop");
        assert_eq!(array[1]["storage"], "memory");
        assert_eq!(array[1]["batch"], true);
        let chart = svg(&outcomes, "test");
        assert!(chart.starts_with("<svg"));
        assert!(chart.trim_end().ends_with("</svg>"));
        assert!(chart.contains("4.0x"));
        assert!(chart.contains("error"));
    }
}
