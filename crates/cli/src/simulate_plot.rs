//! `flotilla simulate --plot`: hosts and cost per month as an SVG, written by hand (two panels of
//! lines, one line per run, a legend when runs are compared). A plotting crate would bring a
//! font stack for two small charts; this is a page of string formatting.

use std::fmt::Write as _;

use flotilla_capacity::simulate::{MonthRow, SimulationReport};

/// What a panel draws of a month.
type MonthValue = fn(&MonthRow) -> f64;

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 260.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 160.0;
const TOP: f64 = 40.0;
const GAP: f64 = 70.0;
const COLORS: [&str; 8] =
    ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

/// The SVG of the runs (label, report): billed host-hours per month above, USD per month below.
pub fn svg(runs: &[(String, SimulationReport)]) -> String {
    let months: Vec<String> = {
        let mut months: Vec<String> = runs
            .iter()
            .flat_map(|(_, report)| report.months.iter().map(|month| month.month.clone()))
            .collect();
        months.sort();
        months.dedup();
        months
    };
    let height = TOP + 2.0 * PANEL_HEIGHT + GAP + 50.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let panels: [(&str, MonthValue); 2] = [
        ("Billed host-hours per month", |month| month.host_hours),
        ("Cost per month (USD)", |month| month.usd),
    ];
    for (index, (title, value)) in panels.iter().enumerate() {
        let top = TOP + index as f64 * (PANEL_HEIGHT + GAP);
        panel(&mut out, top, title, &months, runs, *value);
    }
    if runs.len() > 1 || !runs[0].0.is_empty() {
        for (index, (label, _)) in runs.iter().enumerate() {
            let y = TOP + 20.0 + index as f64 * 20.0;
            let x = WIDTH - RIGHT + 20.0;
            let color = COLORS[index % COLORS.len()];
            let _ = writeln!(
                out,
                r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                x + 24.0,
                x + 30.0,
                y + 4.0,
                escape(label)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

fn panel(
    out: &mut String,
    top: f64,
    title: &str,
    months: &[String],
    runs: &[(String, SimulationReport)],
    value: MonthValue,
) {
    let plot_width = WIDTH - LEFT - RIGHT;
    let bottom = top + PANEL_HEIGHT;
    let highest =
        runs.iter().flat_map(|(_, report)| report.months.iter().map(value)).fold(0.0_f64, f64::max);
    let scale_top = nice_ceiling(highest);
    let x_of = |index: usize| {
        if months.len() <= 1 {
            LEFT + plot_width / 2.0
        } else {
            LEFT + plot_width * index as f64 / (months.len() - 1) as f64
        }
    };
    let y_of = |amount: f64| bottom - PANEL_HEIGHT * amount / scale_top;
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        top - 12.0,
        escape(title)
    );
    for step in 0..=4 {
        let amount = scale_top * f64::from(step) / 4.0;
        let y = y_of(amount);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_width,
            LEFT - 8.0,
            y + 4.0,
            thousands(amount)
        );
    }
    for (index, month) in months.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x_of(index),
            bottom + 18.0,
            escape(month)
        );
    }
    for (run_index, (_, report)) in runs.iter().enumerate() {
        let color = COLORS[run_index % COLORS.len()];
        let points: Vec<String> = report
            .months
            .iter()
            .filter_map(|row| {
                let index = months.iter().position(|month| *month == row.month)?;
                Some(format!("{:.1},{:.1}", x_of(index), y_of(value(row))))
            })
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2.5" points="{}"/>"#,
            points.join(" ")
        );
        for point in &points {
            let (x, y) = point.split_once(',').expect("formatted as x,y above");
            let _ = writeln!(out, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
        }
    }
}

/// 1, 2 or 5 times a power of ten, at least `value` (1 for nothing).
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|factor| factor * power)
        .find(|nice| *nice >= value)
        .unwrap_or(10.0 * power)
}

/// `1234567.8` as `1,234,568`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.round());
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round_and_numbers_grouped() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(1234.0), 2000.0);
        assert_eq!(nice_ceiling(5000.0), 5000.0);
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(escape("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
    }
}
