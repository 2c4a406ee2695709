//! Bar charts as inline SVG, drawn on the server (the CSP allows no script
//! and no inline `style`: colours come from classes in the stylesheet).
//! Each chart has a `<title>` and an `aria-label`; the numbers are also in
//! a table on the page for screen readers, so the SVG is the picture, not
//! the only source.

use super::http::esc;
use std::fmt::Write as _;

/// One series of bars: its legend, its CSS class (`s1`, `s2`, …), one
/// value per label.
pub struct Series<'a> {
    pub name: &'a str,
    pub class: &'static str,
    pub values: Vec<f64>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 12.0;

/// The largest value rounded up to a number a reader takes in at a glance
/// (1, 2, 5 × 10ⁿ), at least 1.
fn nice_max(max: f64) -> f64 {
    if max <= 1.0 {
        return 1.0;
    }
    let exp = max.log10().floor();
    let base = 10f64.powf(exp);
    for m in [1.0, 2.0, 5.0, 10.0] {
        if max <= m * base {
            return m * base;
        }
    }
    10.0 * base
}

/// Writes a value for an axis: whole numbers without decimals.
fn num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Grouped bars, one group per label (every `label_every`-th label is
/// written under the axis). `title` names the chart for assistive
/// technology.
pub fn bars(title: &str, labels: &[String], series: &[Series<'_>], label_every: usize) -> String {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .fold(0.0, f64::max);
    let top = nice_max(max);
    let plot_w = WIDTH - LEFT - 4.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    #[allow(clippy::cast_precision_loss)] // at most a few dozen groups
    let groups = labels.len().max(1) as f64;
    let group_w = plot_w / groups;
    #[allow(clippy::cast_precision_loss)]
    let bar_w = (group_w * 0.8 / series.len().max(1) as f64).max(1.0);
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{t}\" \
         preserveAspectRatio=\"xMinYMin meet\"><title>{t}</title>",
        t = esc(title)
    );
    // The axis and its top and middle values.
    for frac in [0.0, 0.5, 1.0] {
        let y = TOP + plot_h * (1.0 - frac);
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{WIDTH}\" y2=\"{y:.1}\"/>\
             <text class=\"axis\" x=\"{x:.1}\" y=\"{ty:.1}\" text-anchor=\"end\">{v}</text>",
            x = LEFT - 4.0,
            ty = y + 4.0,
            v = num(top * frac),
        );
    }
    for (i, label) in labels.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let x0 = LEFT + group_w * i as f64 + group_w * 0.1;
        for (j, s) in series.iter().enumerate() {
            let v = s.values.get(i).copied().unwrap_or(0.0).max(0.0);
            let h = plot_h * v / top;
            #[allow(clippy::cast_precision_loss)]
            let x = x0 + bar_w * j as f64;
            let y = TOP + plot_h - h;
            let _ = write!(
                svg,
                "<rect class=\"{c}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar_w:.1}\" height=\"{h:.1}\">\
                 <title>{label}: {name} {v}</title></rect>",
                c = s.class,
                label = esc(label),
                name = esc(s.name),
                v = num(v),
            );
        }
        if label_every > 0 && i % label_every == 0 {
            let _ = write!(
                svg,
                "<text class=\"axis\" x=\"{x:.1}\" y=\"{y:.1}\">{l}</text>",
                x = x0,
                y = HEIGHT - 6.0,
                l = esc(label),
            );
        }
    }
    svg.push_str("</svg>");
    // The legend is HTML, so that it wraps on a small screen.
    svg.push_str("<ul class=\"legend\">");
    for s in series {
        let _ = write!(
            svg,
            "<li><span class=\"key {}\" aria-hidden=\"true\"></span>{}</li>",
            s.class,
            esc(s.name)
        );
    }
    svg.push_str("</ul>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_and_labels() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(12.0), 20.0);
        assert_eq!(nice_max(0.4), 1.0);
        let svg = bars(
            "Sent <per day>",
            &["12-01".to_owned(), "12-02".to_owned()],
            &[Series {
                name: "sent",
                class: "s1",
                values: vec![2.0, 4.0],
            }],
            1,
        );
        assert!(svg.contains("<title>Sent &lt;per day&gt;</title>"));
        assert!(svg.contains("12-02: sent 4"));
        assert!(!svg.contains("style="));
    }
}
