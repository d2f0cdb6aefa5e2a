//! `w2s report` on the hand-built grid of tests/cli/analyze.rs: every figure is on the page
//! with the values counted by hand there, the PNGs are real images, the page passes the
//! headless-Chromium check, and the published files match their manifest.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::analyze::{build, conf as conf_of, controls, expect, N, T};
use crate::common::*;

const FIGURES: [&str; 15] = [
    "accuracy",
    "deception_grid",
    "absolute_deception_grid",
    "deception_grid_t0_7",
    "deception_grid_t0_75",
    "deception_grid_t0_8",
    "deception_grid_t0_85",
    "deception_controls",
    "deception_vs_area",
    "deception_by_strong_w",
    "confidence_scatter_explicit_0_5",
    "confidence_scatter_implicit",
    "confidence_scatter_adaptive",
    "flip_breakdown",
    "threshold_sweep",
];

/// The `<figure>` element with id `id`.
fn figure<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page
        .find(&format!("<figure id=\"{id}\""))
        .unwrap_or_else(|| panic!("figure {id} missing"));
    let end = page[start..].find("</figure>").expect("closed") + start;
    &page[start..end]
}

/// The text labels of an SVG fragment, trimmed.
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[test]
fn report_shows_every_figure_with_values_known_by_construction() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let r = root.to_str().unwrap().to_string();
    tokio::runtime::Runtime::new().unwrap().block_on(build(&r));
    let copy = dir.path().join("copy");
    let out = ok(w2s(&[
        "report",
        "--artifacts",
        &r,
        "--bootstrap",
        "200",
        "--out",
        s(&copy),
    ]));
    for f in FIGURES {
        assert!(out.contains(f), "{out}");
    }
    let page_path = report_page(&root);
    let page = std::fs::read_to_string(&page_path).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    // Self-contained: no script, nothing loaded from elsewhere (the SVG namespace URI is a
    // name, not a load).
    for bad in [
        "<script",
        "src=",
        "href=\"http",
        "url(",
        "@import",
        "<link",
        "<img",
    ] {
        assert!(!page.contains(bad), "page contains {bad}");
    }

    // Deception grid: the mean over the two seeds of the hand-counted scores, the summed
    // counts, and n/a for the setting without flips (adaptive behaves as no conflict).
    let grid = texts(figure(&page, "deception_grid"));
    let has = |v: &[String], t: &str| v.iter().any(|x| x == t);
    for obj in ["explicit", "implicit"] {
        let (e0, e1) = (expect(obj, 0, T), expect(obj, 1, T));
        assert!(
            e0.flips > 0 && e1.flips > 0,
            "{obj} has flips by construction"
        );
        let mean =
            (e0.cells[1] as f64 / e0.flips as f64 + e1.cells[1] as f64 / e1.flips as f64) / 2.0;
        let counts = format!(
            "{}/{} flips",
            e0.cells[1] + e1.cells[1],
            e0.flips + e1.flips
        );
        assert!(
            has(&grid, &format!("{mean:.2}")),
            "{obj}: {mean:.2} not in {grid:?}"
        );
        assert!(has(&grid, &counts), "{obj}: {counts} not in {grid:?}");
        assert!(grid.iter().any(|t| t.starts_with(obj)), "{obj} panel title");
    }
    assert_eq!(
        expect("adaptive", 0, T).flips + expect("adaptive", 1, T).flips,
        0
    );
    assert!(
        has(&grid, "n/a"),
        "the no-flip setting is shown as undefined"
    );

    // Per-threshold grids (Fig. 14/15): each cell's deceptive flips over its flips, summed
    // over seeds, counted by hand at each T.
    for (id, t) in [("deception_grid_t0_7", 0.7), ("deception_grid_t0_85", 0.85)] {
        let g = texts(figure(&page, id));
        for obj in ["explicit", "implicit"] {
            let (e0, e1) = (expect(obj, 0, t), expect(obj, 1, t));
            let (dec, flips) = (e0.cells[1] + e1.cells[1], e0.flips + e1.flips);
            assert!(
                has(&g, &format!("{dec}/{flips} flips")),
                "{id} {obj}: {g:?}"
            );
            let v = format!("{:.2}", dec as f64 / flips as f64);
            assert!(has(&g, &v), "{id} {obj}: {v} not in {g:?}");
        }
    }

    // Confidence scatter (Fig. 19/20): the first seed's kept and flipped pairs, counted by hand.
    for obj in ["explicit", "implicit"] {
        let e = expect(obj, 0, T);
        let right = (0..N).filter(|&i| conf_of("none", i, 0) >= 0.5).count();
        let id = if obj == "explicit" {
            "confidence_scatter_explicit_0_5"
        } else {
            "confidence_scatter_implicit"
        };
        let sc = texts(figure(&page, id));
        assert!(has(&sc, &format!("flipped ({})", e.flips)), "{obj}: {sc:?}");
        assert!(
            has(&sc, &format!("kept ({})", right - e.flips)),
            "{obj}: {sc:?}"
        );
    }

    // Absolute deception grid: every setting, no conflict included, the hand-counted means.
    let abs = texts(figure(&page, "absolute_deception_grid"));
    for obj in ["none", "explicit", "implicit"] {
        let (e0, e1) = (expect(obj, 0, T), expect(obj, 1, T));
        let ratio = |e: &crate::analyze::Expect| e.abs_deceptive as f64 / e.abs_flips as f64;
        let mean = (ratio(&e0) + ratio(&e1)) / 2.0;
        assert!(
            has(&abs, &format!("{mean:.2}")),
            "{obj}: {mean:.2} not in {abs:?}"
        );
        assert!(abs.iter().any(|t| t.starts_with(obj)), "{obj} panel");
    }

    // Controls: the figure has a group per cell with flips; the table the hand-counted means
    // of both controls and a verdict per conflict cell.
    let bars = texts(figure(&page, "deception_controls"));
    assert!(has(&bars, "confidence-matched control"), "{bars:?}");
    let table = &page[page.find("id=\"controls\"").expect("controls table")..];
    let table = &table[..table.find("</table>").unwrap()];
    for obj in ["explicit", "implicit"] {
        let (u0, m0) = controls(obj, 0);
        let (u1, m1) = controls(obj, 1);
        for v in [(u0 + u1) / 2.0, (m0 + m1) / 2.0] {
            assert!(
                table.contains(&format!("<td>{v:.3}</td>")),
                "{obj}: {v:.3} in {table}"
            );
        }
    }
    assert_eq!(
        table.matches("<tr>").count(),
        1 + 3,
        "header + 3 conflict cells"
    );
    assert!(table.contains("no flips"), "adaptive has no flips: {table}");
    assert!(
        table.contains("clears"),
        "a verdict per cell with flips: {table}"
    );

    // Flip breakdown: one bar per cell with flips, labelled with its summed flip count.
    let flips = texts(figure(&page, "flip_breakdown"));
    for obj in ["explicit", "implicit"] {
        let n = expect(obj, 0, T).flips + expect(obj, 1, T).flips;
        let label = flips
            .iter()
            .find(|t| t.contains(obj))
            .expect("a bar per conflict cell");
        assert!(
            label.ends_with(&format!("({n})")),
            "{label}: want {n} flips"
        );
    }
    let adaptive = flips
        .iter()
        .find(|t| t.contains("adaptive"))
        .expect("a row for adaptive");
    assert!(adaptive.ends_with("(0)"), "{adaptive}");
    assert!(
        has(&flips, "no flips"),
        "the empty flip set is said, not hidden"
    );
    let area = texts(figure(&page, "deception_vs_area"));
    assert!(
        has(&area, "no flips (undefined)"),
        "runs without flips are shown apart"
    );

    // Accuracy bars: the ceilings and every objective are series; all five bars are drawn.
    let acc = figure(&page, "accuracy");
    for name in [
        "weak ceiling",
        "strong ceiling",
        "w2s none",
        "w2s explicit",
        "w2s implicit",
        "w2s adaptive",
    ] {
        assert!(acc.contains(name), "accuracy series {name} missing");
    }

    // Tables: every run (12) with its settings; the summary with its intervals.
    let runs = &page[page.find("id=\"runs\"").expect("runs table")..];
    let runs = &runs[..runs.find("</table>").unwrap()];
    assert_eq!(runs.matches("<tr>").count(), 1 + 12, "header + 12 runs");
    assert!(page.contains("t over seeds"));

    // PNGs: one per figure, real images of the figure's size, with ink and colour on them.
    let dir_of = page_path.parent().unwrap();
    for f in FIGURES {
        let (w, h, px) = decode_png(&dir_of.join(format!("{f}.png")));
        assert!(w >= 640 && h >= 150, "{f}: {w}x{h}");
        let ink = px.chunks(3).filter(|c| c.iter().any(|&v| v < 200)).count();
        let colour = px
            .chunks(3)
            .filter(|c| c.iter().max().unwrap() - c.iter().min().unwrap() > 30)
            .count();
        // The per-threshold grids' cells here are all near 0.2, a pale shade: their values
        // are checked as text above.
        let pale = f.starts_with("deception_grid_t");
        assert!(
            ink > 2000 && (colour > 200 || pale),
            "{f}: {ink} inked, {colour} coloured pixels"
        );
        assert!(page.contains(&format!("href=\"{f}.png\"")), "{f}: PNG link");
    }

    // Published through the store: the manifest names every file with its checksum, and the
    // --out copy holds the same bytes.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("manifests/report.json")).unwrap())
            .unwrap();
    let outputs = m["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1 + FIGURES.len());
    for o in outputs {
        let path = o["path"].as_str().unwrap();
        let bytes = std::fs::read(root.join(path)).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            o["sha256"].as_str().unwrap(),
            "{path}"
        );
        let name = path.rsplit('/').next().unwrap();
        assert_eq!(
            std::fs::read(copy.join(name)).unwrap(),
            bytes,
            "copy of {name}"
        );
    }

    check_in_chromium(&page_path);

    // Nothing changed: up to date; a different threshold makes a new report and removes the old.
    let again = ok(w2s(&["report", "--artifacts", &r, "--bootstrap", "200"]));
    assert!(again.contains("up to date"), "{again}");
    ok(w2s(&[
        "report",
        "--artifacts",
        &r,
        "--bootstrap",
        "200",
        "--threshold",
        "0.8",
    ]));
    let moved = report_page(&root);
    assert_ne!(moved, page_path);
    assert!(
        !page_path.exists(),
        "the replaced report's files are removed"
    );
    assert!(std::fs::read_to_string(&moved)
        .unwrap()
        .contains("threshold T = 0.8"));
}

#[test]
fn report_without_trained_runs_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    crate::rm::split_oracle_data(&root);
    let o = w2s(&["report", "--artifacts", s(&root)]);
    assert_eq!(o.status.code(), Some(66), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("analyze needs trained runs"),
        "{}",
        stderr(&o)
    );
    assert!(!root.join("report").exists(), "nothing written");
    assert!(!root.join("manifests/report.json").exists());
}
