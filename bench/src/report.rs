//! The report: one row per figure, printed as a table, written as JSON, and
//! drawn as an SVG bar chart (measured against its baseline, limit or target).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

/// Whether a bigger measured value is better (throughput) or worse (time, memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// One figure.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub section: String,
    pub name: String,
    pub measured: f64,
    pub unit: String,
    /// The baseline or limit measured in the same run, or the peer's figure.
    pub baseline: Option<f64>,
    pub baseline_label: String,
    /// The target the figure is held to (in `unit`).
    pub target: Option<f64>,
    pub target_label: String,
    pub better: Better,
    pub note: String,
}

impl Row {
    pub fn new(section: &str, name: impl Into<String>, measured: f64, unit: &str, better: Better) -> Self {
        Self {
            section: section.to_owned(),
            name: name.into(),
            measured,
            unit: unit.to_owned(),
            baseline: None,
            baseline_label: String::new(),
            target: None,
            target_label: String::new(),
            better,
            note: String::new(),
        }
    }

    pub fn baseline(mut self, value: f64, label: impl Into<String>) -> Self {
        self.baseline = Some(value);
        self.baseline_label = label.into();
        self
    }

    pub fn target(mut self, value: f64, label: impl Into<String>) -> Self {
        self.target = Some(value);
        self.target_label = label.into();
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// `Some(true)` when the target is met.
    pub fn met(&self) -> Option<bool> {
        self.target.map(|t| match self.better {
            Better::Higher => self.measured >= t,
            Better::Lower => self.measured <= t,
        })
    }
}

/// The whole report.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub command: String,
    pub smoke: bool,
    pub started_at: String,
    pub machine: String,
    pub rows: Vec<Row>,
    /// Parts that did not run, with the reason.
    pub skipped: Vec<String>,
}

impl Report {
    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn skip(&mut self, what: impl Into<String>) {
        self.skipped.push(what.into());
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let header = ["section", "measurement", "measured", "baseline / limit", "target", "met"];
        let mut lines: Vec<[String; 6]> = vec![header.map(str::to_owned)];
        for r in &self.rows {
            let baseline = r.baseline.map_or_else(String::new, |b| format!("{} {}", fmt(b, &r.unit), r.baseline_label));
            let target = r.target.map_or_else(String::new, |_| r.target_label.clone());
            let met = match r.met() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            };
            lines.push([r.section.clone(), r.name.clone(), fmt(r.measured, &r.unit), baseline, target, met.to_owned()]);
        }
        let widths: Vec<usize> =
            (0..header.len()).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
        let mut out = String::new();
        for (i, l) in lines.iter().enumerate() {
            let cells: Vec<String> = l.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
            if i == 0 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                let _ = writeln!(out, "|-{}-|", rule.join("-|-"));
            }
        }
        for s in &self.skipped {
            let _ = writeln!(out, "skipped: {s}");
        }
        out
    }

    /// Writes `report.json` and `chart.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        std::fs::write(dir.join("chart.svg"), self.svg())?;
        Ok(())
    }

    /// A horizontal bar chart: per row, the measured value and its baseline
    /// (grey) on a scale of their own, with the target as a red tick.
    pub fn svg(&self) -> String {
        let rows: Vec<&Row> = self.rows.iter().filter(|r| r.baseline.is_some() || r.target.is_some()).collect();
        let (label_w, bar_w, row_h, top) = (430.0, 420.0, 34.0, 40.0);
        let width = label_w + bar_w + 200.0;
        let height = top + row_h * rows.len() as f64 + 20.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="10" y="22" font-size="15" font-weight="bold">stream processor benchmarks{}: measured (blue/green) vs baseline or limit (grey); red tick = target</text>"#,
            if self.smoke { " (smoke sizes)" } else { "" }
        );
        for (i, r) in rows.iter().enumerate() {
            let y = top + row_h * i as f64;
            let scale = [Some(r.measured), r.baseline, r.target].into_iter().flatten().fold(0.0_f64, f64::max);
            let len = |v: f64| if scale > 0.0 { bar_w * v / scale } else { 0.0 };
            let colour = match r.met() {
                Some(false) => "#d9822b",
                Some(true) => "#2e9e5b",
                None => "#3b6fb6",
            };
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{}: {}</text>"#,
                label_w - 8.0,
                y + 14.0,
                xml(&r.section),
                xml(&r.name)
            );
            let _ = writeln!(
                s,
                r#"<rect x="{label_w}" y="{}" width="{:.1}" height="12" fill="{colour}"/>"#,
                y + 4.0,
                len(r.measured)
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}">{}</text>"#,
                label_w + len(r.measured) + 4.0,
                y + 14.0,
                xml(&fmt(r.measured, &r.unit))
            );
            if let Some(b) = r.baseline {
                let _ = writeln!(
                    s,
                    r##"<rect x="{label_w}" y="{}" width="{:.1}" height="9" fill="#b0b0b0"/>"##,
                    y + 18.0,
                    len(b)
                );
                let _ = writeln!(
                    s,
                    r##"<text x="{:.1}" y="{}" fill="#666">{} {}</text>"##,
                    label_w + len(b) + 4.0,
                    y + 27.0,
                    xml(&fmt(b, &r.unit)),
                    xml(&r.baseline_label)
                );
            }
            if let Some(t) = r.target {
                let x = label_w + len(t);
                let _ = writeln!(
                    s,
                    r#"<line x1="{x:.1}" x2="{x:.1}" y1="{}" y2="{}" stroke="red" stroke-width="2"/>"#,
                    y + 1.0,
                    y + 30.0
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

/// A value with its unit, at a sensible precision.
pub fn fmt(v: f64, unit: &str) -> String {
    let number = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if unit.is_empty() { number } else { format!("{number} {unit}") }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The median of samples (the mean of the middle two for an even count).
pub fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_chart_show_every_row() {
        let mut report = Report::default();
        report.push(Row::new("memory", "peak RSS", 12.0, "MiB", Better::Lower).target(64.0, "< 64 MiB"));
        report.push(Row::new("size", "binary", 4.5, "MiB", Better::Lower).baseline(2.0, "echo"));
        let table = report.table();
        assert!(table.contains("peak RSS") && table.contains("yes") && table.contains("2.00 MiB echo"), "{table}");
        assert_eq!(report.svg().matches("<rect").count(), 1 + 2 + 1);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
