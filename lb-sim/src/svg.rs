//! The comparison table as an SVG picture (`compare --svg FILE`, `simulate --svg FILE`),
//! for READMEs and reports: the same rows and numbers as the text table, each
//! backend's share drawn as a bar.
//!
//! ```
//! use lb_sim::{report::Report, svg::comparison_svg};
//! use lb_sim::report::{Backend, Latency};
//!
//! let latency = Latency { p50: 1.0, p90: 2.0, p99: 3.0, p999: 4.0, max: 5.0 };
//! let report = Report::new("round_robin", 2, 1, 1.0,
//!     vec![Backend::new("a:1".into(), 1, 0), Backend::new("b:2".into(), 1, 0)], latency, vec![]);
//! let svg = comparison_svg(&[report]);
//! assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
//! assert!(svg.contains(">round_robin<") && svg.contains(">50%<"));
//! ```

use std::fmt::Write;

use crate::report::{Report, columns, letter, share_of};

const ROW: usize = 28;
const NAME: usize = 190;
const CELL: usize = 110;
const BAR: f64 = 64.0;
const NUMBER: usize = 78;
const NUMBERS: [&str; 6] = ["Jain", "calls/s", "p50 ms", "p99 ms", "p999 ms", "errors"];

/// The table of `reports` as a standalone SVG document.
pub fn comparison_svg(reports: &[Report]) -> String {
    let addresses = columns(reports);
    let legend_rows = addresses.len().div_ceil(3);
    let width = 20 + NAME + CELL * addresses.len() + NUMBER * NUMBERS.len();
    let top = 20 + legend_rows * 20 + 10;
    let height = top + ROW * (reports.len() + 1) + 10;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="monospace" font-size="13">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, address) in addresses.iter().enumerate() {
        let (x, y) = (20 + (i % 3) * (width / 3), 20 + (i / 3) * 20 + 10);
        let _ = writeln!(
            out,
            r##"<text x="{x}" y="{y}" fill="#555">{} = {}</text>"##,
            letter(i),
            escape(address)
        );
    }
    let header_y = top + ROW / 2;
    let _ = writeln!(
        out,
        r#"<text x="20" y="{header_y}" font-weight="bold">policy</text>"#
    );
    for i in 0..addresses.len() {
        let x = 20 + NAME + CELL * i;
        let _ = writeln!(
            out,
            r#"<text x="{x}" y="{header_y}" font-weight="bold">{}</text>"#,
            letter(i)
        );
    }
    let numbers_x = 20 + NAME + CELL * addresses.len();
    for (i, name) in NUMBERS.iter().enumerate() {
        let x = numbers_x + NUMBER * (i + 1) - 8;
        let _ = writeln!(
            out,
            r#"<text x="{x}" y="{header_y}" font-weight="bold" text-anchor="end">{name}</text>"#
        );
    }
    for (row, report) in reports.iter().enumerate() {
        let y = top + ROW * (row + 1);
        let text_y = y + ROW / 2;
        if row % 2 == 0 {
            let _ = writeln!(
                out,
                r##"<rect x="10" y="{}" width="{}" height="{ROW}" fill="#f4f6f8"/>"##,
                y,
                width - 20
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="20" y="{text_y}">{}</text>"#,
            escape(&report.policy)
        );
        for (i, address) in addresses.iter().enumerate() {
            let share = share_of(report, address).clamp(0.0, 1.0);
            let x = 20 + NAME + CELL * i;
            let _ = writeln!(
                out,
                r##"<rect x="{x}" y="{}" width="{:.1}" height="{}" fill="#3b7dd8"/>"##,
                y + 7,
                share * BAR,
                ROW - 14
            );
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{text_y}" text-anchor="end">{:.0}%</text>"#,
                x + CELL - 12,
                share * 100.0
            );
        }
        let l = &report.latency_ms;
        let values = [
            format!("{:.3}", report.fairness),
            format!("{:.0}", report.calls_per_sec),
            format!("{:.2}", l.p50),
            format!("{:.2}", l.p99),
            format!("{:.2}", l.p999),
            report.failed.to_string(),
        ];
        for (i, value) in values.iter().enumerate() {
            let x = numbers_x + NUMBER * (i + 1) - 8;
            let _ = writeln!(
                out,
                r#"<text x="{x}" y="{text_y}" text-anchor="end">{value}</text>"#
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// Text as SVG (XML) text: `&`, `<`, `>` and quotes escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped() {
        assert_eq!(escape(r#"<a & "b">"#), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
