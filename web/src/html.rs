//! HTML rendering: escaping, the page frame, tables, and SVG line charts.
//! Everything that came from the log goes through [`esc`]; nothing recorded
//! is ever emitted as markup, a URL attribute or a script.

use std::fmt::Write as _;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a value for a query string or path segment.
pub fn url_part(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The stylesheet, compiled in and served at `/assets/style.css`.
pub const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d232a; background: #fafbfc; }
header { background: #16324f; color: #fff; padding: 8px 20px; display: flex; gap: 18px; align-items: baseline; }
header a { color: #dbe9f7; text-decoration: none; } header b { color: #fff; font-size: 16px; }
main { padding: 14px 20px 40px; max-width: 1280px; }
form { margin: 8px 0; color: #57606a; } button { font: inherit; padding: 3px 10px; cursor: pointer; }
h2.ok { color: #1a7f37; } h2.bad { color: #cf222e; }
table { border-collapse: collapse; margin: 8px 0 16px; background: #fff; }
th, td { border: 1px solid #d8dee4; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef2f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { white-space: pre-wrap; word-break: break-word; background: #fff; border: 1px solid #d8dee4; padding: 8px; margin: 4px 0; }
.turn { border-left: 4px solid #4a7fb5; margin: 10px 0; padding-left: 10px; }
.turn.tool { border-color: #8a9aab; } .think { color: #5a4a7a; } .call { color: #0b6b3a; } .answer { color: #9a3b00; font-weight: 600; }
.tag { display: inline-block; background: #e6eefc; border: 1px solid #9db6e8; border-radius: 3px; padding: 0 6px; margin: 0 4px 2px 0; }
mark { background: #ffe58a; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; } .chart { background: #fff; border: 1px solid #d8dee4; }
.muted { color: #6a737d; } form.filters input, form.filters select { margin-right: 8px; }
textarea { width: 100%; font-family: monospace; }
"#;

/// A whole page: the frame, the title and `body`.
pub fn page(title: &str, body: &str) -> String {
    page_refreshing(title, body, None)
}

/// A page that reloads itself every `refresh` seconds (a run still
/// training), without any script.
pub fn page_refreshing(title: &str, body: &str, refresh: Option<u32>) -> String {
    let meta = refresh.map_or(String::new(), |s| {
        format!("<meta http-equiv=\"refresh\" content=\"{s}\">")
    });
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{meta}<title>{} · fathom</title>\
         <link rel=\"stylesheet\" href=\"/assets/style.css\"></head><body>\
         <header><b>fathom</b><a href=\"/\">Runs</a><a href=\"/behaviours\">Behaviours</a><a href=\"/sql\">SQL</a></header>\
         <main><h1>{}</h1>{}</main></body></html>",
        esc(title),
        esc(title),
        body
    )
}

/// A table of already-escaped cells.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table><thead><tr>");
    for h in headers {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            out.push_str(c);
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A text cell.
pub fn td(text: &str) -> String {
    format!("<td>{}</td>", esc(text))
}

/// A number cell.
pub fn num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("<td class=\"num\">{v:.digits$}</td>"),
        _ => "<td class=\"num muted\">–</td>".into(),
    }
}

/// A link cell to a path fathom built (never a recorded URL).
pub fn link(href: &str, text: &str) -> String {
    format!("<td><a href=\"{}\">{}</a></td>", esc(href), esc(text))
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Its name in the legend.
    pub name: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
    /// A band around it: (x, low, high).
    pub band: Vec<(f64, f64, f64)>,
}

const COLOURS: [&str; 6] = ["#1f6fb2", "#c2571a", "#2e8b57", "#8e44ad", "#b8860b", "#c0392b"];

/// An SVG line chart (with optional bands) of `series` against the
/// training step.
pub fn line_chart(title: &str, series: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (360.0, 200.0, 46.0, 10.0, 24.0, 28.0);
    let xs = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0).chain(s.band.iter().map(|b| b.0)));
    let ys = series.iter().flat_map(|s| {
        s.points
            .iter()
            .map(|p| p.1)
            .chain(s.band.iter().flat_map(|b| [b.1, b.2]))
    });
    let finite = |v: &f64| v.is_finite();
    let (mut x0, mut x1) = xs
        .filter(finite)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let (mut y0, mut y1) = ys
        .filter(finite)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let mut out = format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
         <text x=\"{left}\" y=\"15\" font-size=\"12\" font-weight=\"600\">{}</text>",
        esc(title),
        esc(title)
    );
    if !x0.is_finite() {
        out.push_str("<text x=\"50\" y=\"100\" font-size=\"12\" fill=\"#6a737d\">no data yet</text></svg>");
        return out;
    }
    if x1 - x0 < 1e-12 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    if y1 - y0 < 1e-12 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let px = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * (h - top - bottom);
    let _ = write!(
        out,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#aab\"/><line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"#aab\"/>",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for (v, y) in [(y0, py(y0)), (y1, py(y1))] {
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            left - 3.0,
            y + 3.0,
            short(v)
        );
    }
    for (v, x) in [(x0, px(x0)), (x1, px(x1))] {
        let _ = write!(
            out,
            "<text x=\"{x:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            h - bottom + 12.0,
            short(v)
        );
    }
    let mut legend_x = 4.0;
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        if !s.band.is_empty() {
            let mut d = String::new();
            for (j, b) in s.band.iter().enumerate() {
                let _ = write!(d, "{}{:.1},{:.1} ", if j == 0 { "M" } else { "L" }, px(b.0), py(b.2));
            }
            for b in s.band.iter().rev() {
                let _ = write!(d, "L{:.1},{:.1} ", px(b.0), py(b.1));
            }
            let _ = write!(
                out,
                "<path d=\"{d}Z\" fill=\"{colour}\" fill-opacity=\"0.15\" stroke=\"none\"/>"
            );
        }
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1)))
            .collect();
        let _ = write!(
            out,
            "<polyline class=\"series\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.6\" points=\"{}\"/>",
            pts.join(" ")
        );
        if series.len() > 1 {
            let _ = write!(
                out,
                "<text x=\"{legend_x:.1}\" y=\"{}\" font-size=\"10\" fill=\"{colour}\">{}</text>",
                h - 2.0,
                esc(&s.name)
            );
            legend_x += 6.0 * s.name.chars().count() as f64 + 10.0;
        }
    }
    out.push_str("</svg>");
    out
}

fn short(v: f64) -> String {
    if v.abs() >= 1000.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A turn's text with the protocol's tags shown and their contents
/// coloured; everything escaped.
pub fn turn_text(text: &str) -> String {
    let mut out = esc(text);
    for (tag, class) in [("think", "think"), ("tool_call", "call"), ("answer", "answer")] {
        out = out
            .replace(
                &format!("&lt;{tag}&gt;"),
                &format!("<span class=\"{class}\">&lt;{tag}&gt;"),
            )
            .replace(&format!("&lt;/{tag}&gt;"), &format!("&lt;/{tag}&gt;</span>"));
    }
    // Unbalanced tags must not leave spans open past the turn.
    let open = out.matches("<span").count();
    let close = out.matches("</span>").count();
    for _ in close..open {
        out.push_str("</span>");
    }
    out
}

/// `text` escaped, with the character span `start..end` highlighted.
pub fn highlight(text: &str, start: usize, end: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    let (s, e) = (start.min(chars.len()), end.min(chars.len()).max(start.min(chars.len())));
    let part = |a: usize, b: usize| esc(&chars[a..b].iter().collect::<String>());
    format!("{}<mark>{}</mark>{}", part(0, s), part(s, e), part(e, chars.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        let hostile = "<script>alert(1)</script><img src=x onerror=\"alert(2)\"><a href='javascript:x'>";
        let e = esc(hostile);
        assert!(!e.contains('<') && !e.contains('>') && !e.contains('"') && !e.contains('\''));
        let t = turn_text("<think><script>x</script></think><answer>a</answer><think>open");
        assert!(!t.contains("<script"), "{t}");
        assert_eq!(t.matches("<span").count(), t.matches("</span>").count(), "{t}");
        assert_eq!(highlight("ab<c>d", 2, 5), "ab<mark>&lt;c&gt;</mark>d");
        assert_eq!(url_part("r-1 x/&"), "r-1%20x%2F%26");
    }

    #[test]
    fn a_chart_has_a_line_per_series_and_a_band() {
        let s = Series {
            name: "reward".into(),
            points: vec![(1.0, 0.1), (2.0, 0.3), (3.0, 0.2)],
            band: vec![(1.0, 0.0, 0.2), (2.0, 0.2, 0.4), (3.0, 0.1, 0.3)],
        };
        let svg = line_chart("reward <mean>", &[s.clone(), Series { name: "b".into(), ..s }]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("fill-opacity").count(), 2);
        assert!(svg.contains("reward &lt;mean&gt;"));
        assert!(line_chart("empty", &[]).contains("no data yet"));
    }
}
