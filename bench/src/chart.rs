//! A small SVG chart of a report: per subject, one bar per concurrency, its calls/s
//! as a multiple of the direct channel's. Plain SVG text: no plotting library needed
//! for bars and labels.

use std::fmt::Write;

use crate::report::Report;

const COLOURS: [&str; 4] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759"];

/// The chart, as an SVG document.
pub fn svg(report: &Report) -> String {
    let concurrencies = &report.settings.concurrencies;
    let mut subjects: Vec<&str> = Vec::new();
    for row in &report.rows {
        if !subjects.contains(&row.subject.as_str()) {
            subjects.push(&row.subject);
        }
    }
    // No bar where there is nothing to compare with (a direct run with no calls).
    let ratio = |subject: &str, c: usize| -> Option<f64> {
        let direct = report.get("direct", c)?.calls_per_sec;
        let value = report.get(subject, c)?.calls_per_sec / direct;
        value.is_finite().then_some(value)
    };
    let largest = subjects
        .iter()
        .flat_map(|s| concurrencies.iter().filter_map(|&c| ratio(s, c)))
        .fold(1.0_f64, f64::max)
        .ceil();

    let (label_width, bar_area, bar, gap) = (190.0, 560.0, 9.0, 8.0);
    let group = bar * concurrencies.len() as f64 + gap;
    let top = 50.0;
    let height = top + group * subjects.len() as f64 + 40.0;
    let width = label_width + bar_area + 80.0;
    let x_of = |r: f64| label_width + bar_area * r / largest;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="18" font-size="13" font-weight="bold">calls/s as a multiple of a direct tonic Channel (higher is better); {}</text>"#,
        escape(&report.date)
    );
    for (i, c) in concurrencies.iter().enumerate() {
        let x = label_width + i as f64 * 110.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="28" width="10" height="10" fill="{}"/><text x="{}" y="37">concurrency {c}</text>"#,
            COLOURS[i % COLOURS.len()],
            x + 14.0
        );
    }
    // Grid lines at each whole multiple, and a stronger one at 1 (= direct).
    let mut r = 0.0;
    while r <= largest {
        let x = x_of(r);
        let stroke = if (r - 1.0).abs() < f64::EPSILON {
            "#333"
        } else {
            "#ddd"
        };
        let _ = writeln!(
            out,
            r#"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="{stroke}"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{r:.1}×</text>"#,
            height - 30.0,
            height - 16.0
        );
        r += if largest > 4.0 { 1.0 } else { 0.25 };
    }
    for (s, subject) in subjects.iter().enumerate() {
        let y0 = top + s as f64 * group;
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_width - 6.0,
            y0 + group / 2.0,
            escape(subject)
        );
        for (i, &c) in concurrencies.iter().enumerate() {
            let Some(value) = ratio(subject, c) else {
                continue;
            };
            let y = y0 + i as f64 * bar;
            let w = (x_of(value) - label_width).max(0.5);
            let _ = writeln!(
                out,
                r#"<rect x="{label_width}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{}"><title>{} at concurrency {c}: {value:.2}×</title></rect>"#,
                bar - 1.0,
                COLOURS[i % COLOURS.len()],
                escape(subject)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
