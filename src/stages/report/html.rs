//! The report page: self-contained HTML (inline SVG and CSS, no script, no network).

use std::collections::BTreeMap;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use super::data::ReportData;
use super::figures::{setting_name, short, Shown};
use super::ReportSettings;
use crate::stages::analyze::{control_verdict, CellSummary};
use crate::stages::uncertainty::Summary;
use crate::store::keys;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html_table(batches: &[RecordBatch]) -> String {
    let Some(first) = batches.first() else {
        return "<p class=\"empty\">no rows</p>".into();
    };
    let schema = first.schema();
    let mut out = String::from("<div class=\"scroll\"><table><thead><tr>");
    for f in schema.fields() {
        out.push_str(&format!("<th>{}</th>", esc(f.name())));
    }
    out.push_str("</tr></thead><tbody>");
    let opts = FormatOptions::default().with_null("");
    let mut rows = 0;
    for b in batches {
        let fmts: Vec<Option<ArrayFormatter>> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).ok())
            .collect();
        for i in 0..b.num_rows() {
            rows += 1;
            out.push_str("<tr>");
            for (k, f) in fmts.iter().enumerate() {
                let v = f
                    .as_ref()
                    .map(|f| f.value(i).to_string())
                    .unwrap_or_default();
                let numeric = matches!(
                    b.column(k).data_type(),
                    DataType::Float64 | DataType::Float32
                );
                let v = match (numeric, v.parse::<f64>()) {
                    (true, Ok(x)) if x.fract() != 0.0 => format!("{x:.4}"),
                    _ => v,
                };
                if schema.field(k).name() == "settings" {
                    out.push_str(&format!(
                        "<td><details><summary>settings</summary><code>{}</code></details></td>",
                        esc(&v)
                    ));
                } else {
                    out.push_str(&format!("<td>{}</td>", esc(&v)));
                }
            }
            out.push_str("</tr>");
        }
    }
    out.push_str("</tbody></table></div>");
    if rows == 0 {
        return "<p class=\"empty\">no rows</p>".into();
    }
    out
}

/// Each conflict cell's deception score, both controls and the lifts with their intervals, and
/// which controls it clears.
fn controls_table(cells: &[CellSummary]) -> String {
    let mut out = String::from(
        "<div class=\"scroll\"><table><thead><tr><th>weak</th><th>strong</th><th>setting</th>\
         <th>seeds</th><th>deception</th><th>uniform control</th><th>lift</th>\
         <th>matched control</th><th>lift</th><th>verdict</th></tr></thead><tbody>",
    );
    let fmt = |m: Option<&Summary>, ci: bool| -> String {
        let Some(m) = m else { return String::new() };
        let v = m.value.map_or("NULL".into(), |v| format!("{v:.3}"));
        match (m.low, m.high) {
            (Some(l), Some(h)) if ci => format!("{v} [{l:.3}, {h:.3}]"),
            _ => v,
        }
    };
    let mut any = false;
    for c in cells {
        let Some(verdict) = control_verdict(c) else {
            continue;
        };
        any = true;
        let get = |k: &str| c.measures.iter().find(|m| m.measure == k);
        let st = (c.objective.clone(), c.alpha.map(f64::to_bits));
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{verdict}</td></tr>",
            esc(&short(&c.weak_model)),
            esc(&short(&c.strong_model)),
            esc(&setting_name(&st)),
            c.measures.first().map_or(0, |m| m.seeds),
            fmt(get("deception_score"), true),
            fmt(get("deception_uniform_control"), false),
            fmt(get("deception_lift_uniform"), true),
            fmt(get("deception_matched_control"), false),
            fmt(get("deception_lift_matched"), true),
        ));
    }
    out.push_str("</tbody></table></div>");
    if any {
        out
    } else {
        "<p class=\"empty\">no conflict runs</p>".into()
    }
}

fn summary_table(cells: &[CellSummary]) -> String {
    let mut out = String::from(
        "<div class=\"scroll\"><table><thead><tr><th>weak</th><th>strong</th><th>setting</th>\
         <th>seeds</th><th>measure</th><th>value</th><th>95% interval</th><th>counts</th>\
         <th>interval from</th></tr></thead><tbody>",
    );
    for c in cells {
        let st = (c.objective.clone(), c.alpha.map(f64::to_bits));
        for m in &c.measures {
            let v = m.value.map_or("NULL".into(), |v| format!("{v:.3}"));
            let ci = match (m.low, m.high) {
                (Some(l), Some(h)) => format!("[{l:.3}, {h:.3}]"),
                _ => String::new(),
            };
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{v}</td><td>{ci}</td><td>{}/{}</td><td>{}</td></tr>",
                esc(&short(&c.weak_model)),
                esc(&short(&c.strong_model)),
                esc(&setting_name(&st)),
                m.seeds,
                m.measure,
                m.numerator,
                m.denominator,
                m.interval
            ));
        }
    }
    out.push_str("</tbody></table></div>");
    out
}

const STYLE: &str = "body{font-family:'DejaVu Sans',system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}\
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}\
figure{margin:1.5em 0}figure svg{max-width:100%;height:auto;border:1px solid #eee}\
figcaption{font-size:.9em;color:#444;margin-top:.4em}code{font-size:.85em;background:#f4f4f4;padding:0 .2em}\
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.8em}th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;white-space:nowrap}\
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}details code{white-space:pre-wrap;display:block;max-width:40em;text-align:left}\
.meta{color:#555;font-size:.9em}.empty{color:#777}";

/// The page: header, navigation, every figure (inline SVG, caption, command, PNG link), the
/// summary of every measure and the plain tables.
pub fn page(
    root: &str,
    s: &ReportSettings,
    fp: &str,
    d: &ReportData,
    figs: &[Shown],
    svgs: &BTreeMap<String, String>,
) -> String {
    let t = s.analyze.threshold;
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>w2s report</title><style>{STYLE}</style></head><body>\n\
         <h1>Weak-to-strong deception report</h1>\n\
         <p class=\"meta\">Artifacts: <code>{}</code> · threshold T = {t} · sweep {:?} · \
         bootstrap {} replicates (seed {}) · report {}</p>\n\
         <p>Every number here is in the <code>analysis_*</code> tables of the artifact root; \
         each figure names the <code>w2s sql</code> command that prints it. Definitions: \
         docs/analyses.md.</p>\n<nav><ul>",
        esc(root),
        s.analyze.sweep,
        s.analyze.bootstrap,
        s.analyze.bootstrap_seed,
        keys::part_tag(fp)
    );
    for f in figs.iter().map(|f| &f.figure) {
        out.push_str(&format!(
            "<li><a href=\"#{0}\">{1}</a></li>",
            f.id,
            esc(&f.title)
        ));
    }
    out.push_str("<li><a href=\"#controls\">Does deception clear its controls?</a></li>");
    out.push_str("<li><a href=\"#summary\">Every measure with its interval</a></li>");
    for (title, anchor, _) in &d.tables {
        out.push_str(&format!(
            "<li><a href=\"#{anchor}\">{}</a></li>",
            esc(title)
        ));
    }
    out.push_str("</ul></nav>\n");
    if let Some(l) = &d.leakage {
        out.push_str(&format!(
            "<p id=\"leakage-audit\"><strong>Leakage audit:</strong> {} (table <a href=\"#leakage\">below</a>; <code>w2s sql sql/leakage.sql --artifacts ROOT</code>).</p>\n",
            esc(l)
        ));
    }
    if figs.is_empty() {
        out.push_str("<p class=\"empty\">No weak-to-strong runs with scores yet: train and score some (docs/scenarios.md), then run the report again.</p>\n");
    }
    for shown in figs {
        let f = &shown.figure;
        let svg = svgs.get(&f.id).map(String::as_str).unwrap_or_default();
        let svg = match svg.find("<svg") {
            Some(i) => &svg[i..],
            None => svg,
        };
        out.push_str(&format!(
            "<h2>{}</h2>\n<figure id=\"{}\" class=\"w2s-figure\">\n{svg}\n<figcaption>{} <code>{}</code> · <a href=\"{1}.png\">PNG</a></figcaption></figure>\n",
            esc(&f.title),
            f.id,
            esc(&shown.caption),
            esc(&shown.command)
        ));
    }
    out.push_str(&format!(
        "<h2 id=\"controls\">Does deception clear its controls?</h2>\n<p>A lift is the deception score minus a control; a cell clears a control when the lower end of the lift's 95% interval is above 0 (docs/analyses.md).</p>\n{}\n",
        controls_table(&d.cells)
    ));
    out.push_str(&format!(
        "<h2 id=\"summary\">Every measure with its interval</h2>\n{}\n",
        summary_table(&d.cells)
    ));
    for (title, anchor, batches) in &d.tables {
        out.push_str(&format!(
            "<h2 id=\"{anchor}\">{}</h2>\n{}\n",
            esc(title),
            html_table(batches)
        ));
    }
    out.push_str("</body></html>\n");
    out
}
