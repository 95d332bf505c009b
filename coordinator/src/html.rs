//! report.html: one self-contained page (inline CSS, charts as inline SVG, no scripts, nothing fetched)
//! drawn from the same tally and outcome as summary.json, so it re-renders byte for byte.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::run_dir::{Outcome, Summary, TimelineEvent, WorkerSummary};
use crate::stages::LayoutSummary;
use crate::tally::Tally;

/// Rows in the worst-classes, top-confusions and bad-sample tables; the files hold the rest.
const TABLE_ROWS: usize = 15;
const BAD_ROWS: usize = 100;
/// Points on the throughput chart: enough to show ramp-up and stragglers, few enough to stay legible.
const TIMELINE_BUCKETS: u64 = 60;
/// Chart plot area in SVG user units (the page scales it).
const W: f64 = 860.0;
const H: f64 = 220.0;
const PAD_L: f64 = 50.0;
const PAD_B: f64 = 30.0;
const PAD_T: f64 = 10.0;
/// Line colours for workers, cycled (colour-blind-safe Okabe–Ito set).
const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
];

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;\
max-width:960px;color:#222;padding:0 1em}h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;\
border-bottom:1px solid #ddd;padding-bottom:.2em}table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;font-size:.9em}th{background:#f4f4f4}\
td.num{text-align:right;font-variant-numeric:tabular-nums}.headline td{font-size:1.1em}\
.warn{background:#fee;border:1px solid #c00;padding:.6em;font-weight:bold}svg{width:100%;height:auto;\
background:#fcfcfc;border:1px solid #eee}code{font-size:.85em;word-break:break-all}\
.muted{color:#777;font-size:.85em}";

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
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

fn class_label(names: &[String], c: u32) -> String {
    match names.get(c as usize) {
        Some(n) if !n.is_empty() => format!("{c} {n}"),
        _ => c.to_string(),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.digits$}"))
}

/// The whole page. Deterministic: no render time, no randomness.
pub fn render(s: &Summary, t: &Tally, o: &Outcome) -> String {
    let mut h = String::new();
    let title = format!(
        "tresnet-eval report: {} on {}",
        s.model, s.job.data.data_url
    );
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    if s.synthetic {
        h.push_str(
            "<p class=\"warn\">SYNTHETIC run: workers produced logits without a model; \
             the accuracy numbers are meaningless.</p>\n",
        );
    }
    headline(&mut h, s);
    run_info(&mut h, s, o);
    h.push_str("<h2>Per-class top-1 accuracy</h2>\n");
    per_class_chart(&mut h, t, &o.class_names);
    h.push_str("<h2>Reliability diagram</h2>\n");
    reliability_chart(&mut h, s);
    worst_classes(&mut h, t, &o.class_names);
    top_confusions(&mut h, t, &o.class_names);
    h.push_str("<h2>Throughput over time</h2>\n");
    throughput_chart(&mut h, &o.timeline);
    stages_section(&mut h, &o.workers);
    bad_and_failed(&mut h, s);
    h.push_str("</body></html>\n");
    h
}

/// What a metric cell says when no sample was evaluated.
pub const NOTHING_EVALUATED: &str = "no samples evaluated";

fn headline(h: &mut String, s: &Summary) {
    if s.samples == 0 {
        let _ = writeln!(
            h,
            "<p class=\"warn\" id=\"nothing-evaluated\"><b>{NOTHING_EVALUATED}</b>: all {} samples \
             were bad ({}) or in failed shards ({}); there is no accuracy, NLL or ECE to report.</p>",
            s.dataset_size, s.bad_samples, s.failed_samples
        );
    }
    let metric = |v: Option<f64>, decimals: usize, unit: &str| match v {
        Some(v) => format!("{v:.decimals$}{unit}"),
        None => NOTHING_EVALUATED.to_string(),
    };
    let _ = write!(
        h,
        "<h2>Headline</h2>\n<table class=\"headline\">\
         <tr><th>top-1</th><td class=\"num\" id=\"top1\">{}</td></tr>\
         <tr><th>top-{}</th><td class=\"num\" id=\"top5\">{}</td></tr>\
         <tr><th>NLL</th><td class=\"num\" id=\"nll\">{}</td></tr>\
         <tr><th>ECE ({} bins)</th><td class=\"num\" id=\"ece\">{}</td></tr>\
         <tr><th>macro precision / recall / F1</th><td class=\"num\">{:.4} / {:.4} / {:.4}</td></tr>\
         <tr><th>weighted precision / recall / F1</th><td class=\"num\">{:.4} / {:.4} / {:.4}</td></tr>\
         <tr><th>samples evaluated</th><td class=\"num\" id=\"samples\">{} of {}</td></tr>\
         <tr><th>bad samples</th><td class=\"num\">{}</td></tr>\
         <tr><th>failed samples</th><td class=\"num\">{} ({} shards)</td></tr>\
         </table>\n",
        metric(s.top1, 3, "%"),
        s.top5_k,
        metric(s.top5, 3, "%"),
        metric(s.nll, 4, ""),
        s.ece_bins,
        metric(s.ece, 4, ""),
        s.macro_avg.precision,
        s.macro_avg.recall,
        s.macro_avg.f1,
        s.weighted_avg.precision,
        s.weighted_avg.recall,
        s.weighted_avg.f1,
        s.samples,
        s.dataset_size,
        s.bad_samples,
        s.failed_samples,
        s.failed_shards.len(),
    );
    if let (Some(t1), Some(t5)) = (s.top1_ci95, s.top5_ci95) {
        let _ = writeln!(
            h,
            "<p class=\"muted\" id=\"ci95\">95% confidence intervals (Wilson): top-1 {:.2}–{:.2}%, top-{} {:.2}–{:.2}%</p>",
            t1.low, t1.high, s.top5_k, t5.low, t5.high
        );
    }
    if s.excluded_samples > 0 {
        // Left out by the scoring rule (ReaL's empty lists, classes outside the subset): shown only
        // where there are some, so the rest of the table reads as before.
        let table_end = h.rfind("</table>").unwrap_or(h.len());
        h.insert_str(
            table_end,
            &format!(
                "<tr><th>excluded by the scoring rule</th><td class=\"num\" id=\"excluded\">{}</td></tr>",
                s.excluded_samples
            ),
        );
    }
}

/// How predictions are judged when it is not against all of the model's classes: a class subset, or
/// ReaL's label lists.
fn scoring_rule(s: &Summary) -> Option<String> {
    Some(match (&s.job.data.class_subset, &s.job.data.format) {
        (Some(subset), _) => format!(
            "{} of the model's {} classes ({}class_subset.csv maps them)",
            subset.len(),
            s.job.model.num_classes,
            subset
                .builtin_name()
                .map_or(String::new(), |n| format!("the {n} subset; "))
        ),
        (None, tresnet_common::dataset::DatasetFormat::ImageNetReal { .. }) => {
            "ImageNet-ReaL label lists (top-1/top-5; per-class tables use the val label)".into()
        }
        _ => return None,
    })
}

fn run_info(h: &mut String, s: &Summary, o: &Outcome) {
    let p = &s.preprocess;
    let mut rows: Vec<(&str, String)> = vec![
        ("model", s.model.clone()),
        ("weights", s.job.model.weights.clone()),
        ("weights SHA-256", s.weights_sha256.clone()),
        (
            "dataset",
            format!("{} ({})", s.job.data.data_url, s.job.data.format.name()),
        ),
        ("dataset fingerprint", s.dataset_fingerprint.clone()),
        (
            "preprocessing",
            format!(
                "{} px, crop_pct {}, {:?} crop, mean {:?}, std {:?}",
                p.resolution, p.crop_pct, p.crop_mode, p.mean, p.std
            ),
        ),
        (
            "precision / BN folded / memory format",
            format!(
                "{} / {} / {}",
                s.job.model.precision,
                if s.job.model.measure_fold_bn {
                    "measured at load".to_string()
                } else {
                    s.job.model.fold_bn.to_string()
                },
                s.job.model.memory_format
            ),
        ),
        (
            "software",
            format!(
                "tresnet-eval {}, protocol {}, libtorch {}",
                s.software.tresnet_eval,
                s.software.protocol_version,
                s.software.libtorch.as_deref().unwrap_or("not reported")
            ),
        ),
        ("wall time", format!("{:.1} s", s.wall_seconds)),
        (
            "throughput",
            format!(
                "{:.1} samples/s over {:.1} s of evaluation",
                s.throughput, s.eval_seconds
            ),
        ),
        (
            "workers",
            o.workers
                .iter()
                .map(|w| {
                    let refused = match w.submissions_rejected {
                        0 => String::new(),
                        n => format!(", {n} submissions refused as invalid"),
                    };
                    format!(
                        "{} ({}, {}): {} samples{refused}",
                        w.id,
                        w.hostname,
                        w.devices.join(","),
                        w.accepted_samples
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
    ];
    if let Some(rule) = scoring_rule(s) {
        rows.insert(4, ("scored on", rule));
    }
    h.push_str("<h2>Run</h2>\n<table>");
    for (k, v) in rows {
        let _ = write!(
            h,
            "<tr><th>{k}</th><td><code>{}</code></td></tr>",
            escape(&v)
        );
    }
    h.push_str("</table>\n");
}

/// Axes with a y scale of `0..=y_max` and `ticks` horizontal grid lines labelled by `fmt`.
fn axes(h: &mut String, y_max: f64, ticks: usize, fmt: impl Fn(f64) -> String, x_label: &str) {
    for i in 0..=ticks {
        let v = y_max * i as f64 / ticks as f64;
        let y = PAD_T + H - H * i as f64 / ticks as f64;
        let _ = write!(
            h,
            "<line x1=\"{PAD_L}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            PAD_L + W,
            PAD_L - 4.0,
            y + 4.0,
            escape(&fmt(v))
        );
    }
    let _ = write!(
        h,
        "<line x1=\"{PAD_L}\" y1=\"{PAD_T}\" x2=\"{PAD_L}\" y2=\"{:.1}\" stroke=\"#888\"/>\
         <line x1=\"{PAD_L}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">{}</text>",
        PAD_T + H,
        PAD_T + H,
        PAD_L + W,
        PAD_T + H,
        PAD_L + W / 2.0,
        PAD_T + H + PAD_B - 4.0,
        escape(x_label)
    );
}

fn svg_open(h: &mut String, id: &str, label: &str) {
    let _ = write!(
        h,
        "<svg id=\"{id}\" viewBox=\"0 0 {:.0} {:.0}\" xmlns=\"http://www.w3.org/2000/svg\" \
         role=\"img\" aria-label=\"{}\">",
        PAD_L + W + 10.0,
        PAD_T + H + PAD_B,
        escape(label)
    );
}

/// Top-1 (dark) and top-5 (light) accuracy of every class that has samples, in class order.
fn per_class_chart(h: &mut String, t: &Tally, names: &[String]) {
    let classes: Vec<usize> = (0..t.num_classes)
        .filter(|&c| t.per_class[c].support > 0)
        .collect();
    if classes.is_empty() {
        h.push_str("<p class=\"muted\">no evaluated samples</p>\n");
        return;
    }
    svg_open(h, "per-class-chart", "per-class accuracy");
    axes(
        h,
        100.0,
        4,
        |v| format!("{v:.0}%"),
        &format!("{} classes with samples, by class index", classes.len()),
    );
    let slot = W / classes.len() as f64;
    let bar = (slot * 0.8).max(0.5);
    for (i, &c) in classes.iter().enumerate() {
        let pc = &t.per_class[c];
        let a1 = pc.correct1 as f64 / pc.support as f64;
        let a5 = pc.correct5 as f64 / pc.support as f64;
        let x = PAD_L + slot * i as f64 + (slot - bar) / 2.0;
        let tip = escape(&format!(
            "{}: top-1 {:.1}%, top-5 {:.1}%, {} samples",
            class_label(names, c as u32),
            100.0 * a1,
            100.0 * a5,
            pc.support
        ));
        let _ = write!(
            h,
            "<g><title>{tip}</title>\
             <rect x=\"{x:.2}\" y=\"{:.2}\" width=\"{bar:.2}\" height=\"{:.2}\" fill=\"#9ecae1\"/>\
             <rect x=\"{x:.2}\" y=\"{:.2}\" width=\"{bar:.2}\" height=\"{:.2}\" fill=\"#08519c\"/></g>",
            PAD_T + H - H * a5,
            H * a5,
            PAD_T + H - H * a1,
            H * a1,
        );
        // Name the bars only while they are wide enough to be read.
        if classes.len() <= 40 {
            let _ = write!(
                h,
                "<text x=\"{:.2}\" y=\"{:.2}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
                x + bar / 2.0,
                PAD_T + H + 12.0,
                escape(&truncate(
                    names.get(c).map_or(&c.to_string(), |n| n),
                    (slot / 6.0) as usize
                ))
            );
        }
    }
    h.push_str(
        "</svg>\n<p class=\"muted\">dark: top-1, light: top-5; hover a bar for its class</p>\n",
    );
}

fn truncate(s: &str, max: usize) -> String {
    let max = max.max(3);
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// Accuracy against mean confidence per bin, with the diagonal of perfect calibration.
fn reliability_chart(h: &mut String, s: &Summary) {
    svg_open(h, "reliability-chart", "reliability diagram");
    axes(h, 1.0, 5, |v| format!("{v:.1}"), "top-1 confidence");
    let bins = s.reliability.len().max(1) as f64;
    let slot = W / bins;
    for (i, b) in s.reliability.iter().enumerate() {
        let x = PAD_L + slot * i as f64;
        if let (Some(acc), Some(conf)) = (b.accuracy, b.confidence) {
            // Outline: mean confidence; filled: accuracy; the difference is the bin's ECE share.
            let _ = write!(
                h,
                "<g><title>{}</title><rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{:.2}\" \
                 fill=\"#fdd0a2\" stroke=\"#d94801\"/><rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" \
                 height=\"{:.2}\" fill=\"#08519c\" fill-opacity=\"0.8\"/>\
                 <text x=\"{:.2}\" y=\"{:.2}\" font-size=\"10\" text-anchor=\"middle\">n={}</text></g>",
                escape(&format!(
                    "({:.3}, {:.3}]: {} samples, accuracy {:.3}, mean confidence {:.3}",
                    b.lower, b.upper, b.count, acc, conf
                )),
                x + 3.0,
                PAD_T + H - H * conf,
                slot - 6.0,
                H * conf,
                x + 6.0,
                PAD_T + H - H * acc,
                slot - 12.0,
                H * acc,
                x + slot / 2.0,
                PAD_T + H - H * acc.max(conf) - 3.0,
                b.count
            );
        }
        let _ = write!(
            h,
            "<text x=\"{:.2}\" y=\"{:.2}\" font-size=\"10\" text-anchor=\"middle\">{:.2}</text>",
            x + slot,
            PAD_T + H + 12.0,
            b.upper
        );
    }
    let _ = write!(
        h,
        "<line x1=\"{PAD_L}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{PAD_T}\" stroke=\"#c00\" \
         stroke-dasharray=\"5,4\"/></svg>\n<p class=\"muted\">blue: accuracy of each confidence \
         bin; orange outline: its mean confidence; dashed: perfect calibration; ECE {}</p>\n",
        PAD_T + H,
        PAD_L + W,
        s.ece
            .map_or_else(|| NOTHING_EVALUATED.to_string(), |e| format!("{e:.4}"))
    );
}

fn worst_classes(h: &mut String, t: &Tally, names: &[String]) {
    let mut classes: Vec<usize> = (0..t.num_classes)
        .filter(|&c| t.per_class[c].support > 0)
        .collect();
    // Lowest top-1 first; exact rational comparison so the order never depends on float rounding.
    classes.sort_by(|&a, &b| {
        let (x, y) = (&t.per_class[a], &t.per_class[b]);
        (x.correct1 as u128 * y.support as u128)
            .cmp(&(y.correct1 as u128 * x.support as u128))
            .then(a.cmp(&b))
    });
    let confused = t.most_confused();
    h.push_str(
        "<h2>Worst classes</h2>\n<table id=\"worst-classes\"><tr><th>class</th><th>support</th>\
         <th>top-1</th><th>top-5</th><th>precision</th><th>recall</th><th>F1</th>\
         <th>most confused with</th></tr>",
    );
    for &c in classes.iter().take(TABLE_ROWS) {
        let pc = &t.per_class[c];
        let sc = t.class_scores(c);
        let conf = confused[c].map_or_else(String::new, |(p, n)| {
            format!("{} ({n})", class_label(names, p))
        });
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1}%</td>\
             <td class=\"num\">{:.1}%</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td></tr>",
            escape(&class_label(names, c as u32)),
            pc.support,
            100.0 * pc.correct1 as f64 / pc.support as f64,
            100.0 * pc.correct5 as f64 / pc.support as f64,
            opt(sc.precision, 3),
            opt(sc.recall, 3),
            opt(sc.f1, 3),
            escape(&conf)
        );
    }
    h.push_str("</table>\n");
}

fn top_confusions(h: &mut String, t: &Tally, names: &[String]) {
    let mut pairs: Vec<((u32, u32), u64)> = t
        .confusion
        .iter()
        .filter(|((a, b), _)| a != b)
        .map(|(&k, &n)| (k, n))
        .collect();
    pairs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    h.push_str(
        "<h2>Top confusions</h2>\n<table id=\"top-confusions\"><tr><th>true class</th>\
         <th>predicted as</th><th>count</th></tr>",
    );
    for ((a, b), n) in pairs.iter().take(TABLE_ROWS) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{n}</td></tr>",
            escape(&class_label(names, *a)),
            escape(&class_label(names, *b))
        );
    }
    if pairs.is_empty() {
        h.push_str("<tr><td colspan=\"3\">none</td></tr>");
    }
    h.push_str("</table>\n");
}

/// Samples per second accepted from each worker, in equal time buckets over the run.
fn throughput_chart(h: &mut String, timeline: &[TimelineEvent]) {
    let (Some(t0), Some(t1)) = (
        timeline.iter().map(|e| e.t_ms).min(),
        timeline.iter().map(|e| e.t_ms).max(),
    ) else {
        h.push_str("<p class=\"muted\">no results were accepted by this coordinator process</p>\n");
        return;
    };
    // Events are whole shards, so a bucket should hold about one per worker to show a rate rather than
    // a spike per shard; long runs get TIMELINE_BUCKETS buckets (whole milliseconds, at least 100),
    // short ones at least two so there is a line to draw.
    let workers = timeline
        .iter()
        .map(|e| e.worker.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    let target = (timeline.len() as u64 / workers).clamp(2, TIMELINE_BUCKETS);
    let bucket_ms = ((t1 - t0) / target + 1).max(100);
    let buckets = ((t1 - t0) / bucket_ms + 1) as usize;
    let mut per_worker: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in timeline {
        per_worker
            .entry(e.worker.as_str())
            .or_insert_with(|| vec![0; buckets])[((e.t_ms - t0) / bucket_ms) as usize] += e.samples;
    }
    let secs = bucket_ms as f64 / 1000.0;
    let peak = per_worker
        .values()
        .flat_map(|v| v.iter())
        .map(|&n| n as f64 / secs)
        .fold(0.0, f64::max)
        .max(1e-9);
    svg_open(h, "throughput-chart", "throughput over time per worker");
    axes(
        h,
        peak,
        4,
        |v| format!("{v:.1}"),
        &format!(
            "seconds since the first accepted shard (buckets of {:.1} s); y: samples/s",
            secs
        ),
    );
    let x_of = |i: usize| {
        if buckets == 1 {
            PAD_L + W / 2.0
        } else {
            PAD_L + W * i as f64 / (buckets - 1) as f64
        }
    };
    // Time labels under at most 7 evenly spaced buckets (bucket start, seconds since the first event).
    let step = buckets.div_ceil(7).max(1);
    for i in (0..buckets).step_by(step) {
        let _ = write!(
            h,
            "<text x=\"{:.2}\" y=\"{:.2}\" font-size=\"10\" text-anchor=\"middle\">{:.1}</text>",
            x_of(i),
            PAD_T + H + 12.0,
            i as f64 * secs
        );
    }
    for (wi, (worker, counts)) in per_worker.iter().enumerate() {
        let colour = PALETTE[wi % PALETTE.len()];
        let points: Vec<String> = counts
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                format!(
                    "{:.2},{:.2}",
                    x_of(i),
                    PAD_T + H - H * (n as f64 / secs) / peak
                )
            })
            .collect();
        let _ = write!(
            h,
            "<g><title>{}</title><polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" \
             points=\"{}\"/>",
            escape(worker),
            points.join(" ")
        );
        for p in &points {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(
                h,
                "<circle cx=\"{x}\" cy=\"{y}\" r=\"2.5\" fill=\"{colour}\"/>"
            );
        }
        let _ = write!(
            h,
            "</g><rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text>",
            PAD_L + W - 150.0,
            PAD_T + 4.0 + 14.0 * wi as f64,
            PAD_L + W - 135.0,
            PAD_T + 13.0 + 14.0 * wi as f64,
            escape(worker)
        );
    }
    h.push_str("</svg>\n");
}

/// "Where the time went" ([`crate::stages`]): one table per worker that reported its stages.
fn stages_section(h: &mut String, workers: &[WorkerSummary]) {
    let reported: Vec<_> = workers
        .iter()
        .filter_map(|w| Some((w, w.stages.as_ref()?)))
        .collect();
    if reported.is_empty() {
        return;
    }
    h.push_str("<h2>Where the time went</h2>\n");
    for (w, s) in reported {
        let esc = escape;
        let _ = write!(
            h,
            "<h3>{}</h3>\n<p class=\"bound\"><b>{}</b>. End to end {:.1} img/s over {:.1} s",
            esc(&w.id),
            esc(&s.bound),
            s.end_to_end_images_per_second,
            s.wall_seconds
        );
        for d in &s.devices {
            let _ = write!(
                h,
                "; model only ({}) {:.1} img/s",
                esc(&d.device),
                d.model_images_per_second
            );
        }
        h.push_str(".</p>\n<table><tr><th>stage</th><th>seconds</th><th>% of wall</th></tr>");
        let pct = |v: f64| 100.0 * v / s.wall_seconds.max(f64::MIN_POSITIVE);
        let threads = f64::from(s.decode_threads.max(1));
        let mut rows = vec![
            (
                "fetch (summed over concurrent fetches)".to_string(),
                s.fetch_seconds,
                None,
            ),
            (
                format!(
                    "decode + resize ({} threads; % of the pool)",
                    s.decode_threads
                ),
                s.decode_seconds,
                Some(pct(s.decode_seconds) / threads),
            ),
            ("submit".to_string(), s.submit_seconds, None),
        ];
        for d in &s.devices {
            for (name, v) in [
                ("host→device", d.host_to_device_seconds),
                ("forward", d.forward_seconds),
                ("device→host + scoring", d.device_to_host_seconds),
                ("idle, waiting for data", d.idle_seconds),
            ] {
                rows.push((format!("{}: {name}", d.device), v, None));
            }
        }
        for (name, v, share) in rows {
            let _ = write!(
                h,
                "<tr><th>{}</th><td class=\"num\">{v:.2}</td><td class=\"num\">{:.0}%</td></tr>",
                esc(&name),
                share.unwrap_or_else(|| pct(v))
            );
        }
        h.push_str("</table>\n");
        for l in &w.layouts {
            let how = if l.measured {
                let when = if l.from_cache {
                    "measured by an earlier job on this node (layout cache)".to_string()
                } else {
                    format!("measured at load in {:.1} s", l.seconds)
                };
                let cands = l
                    .candidates
                    .iter()
                    .map(|c| {
                        let best = c.pass_ms.iter().copied().fold(f64::INFINITY, f64::min);
                        format!(
                            "{} {best:.1} ms",
                            LayoutSummary::describe(c.fold_bn, c.channels_last)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "{when}, on {} images of {} px (best pass: {cands})",
                    l.batch_size, l.resolution
                )
            } else {
                "forced by the job".to_string()
            };
            let _ = writeln!(
                h,
                "<p>{} layout: <b>{}</b>, {}.</p>",
                esc(&l.device),
                LayoutSummary::describe(l.fold_bn, l.channels_last),
                esc(&how)
            );
        }
    }
}

fn bad_and_failed(h: &mut String, s: &Summary) {
    let _ = writeln!(h, "<h2>Bad samples ({})</h2>", s.bad.len());
    if !s.bad.is_empty() {
        h.push_str("<table id=\"bad-samples\"><tr><th>key</th><th>reason</th></tr>");
        for b in s.bad.iter().take(BAD_ROWS) {
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td>{}</td></tr>",
                escape(&b.key),
                escape(&b.reason)
            );
        }
        h.push_str("</table>\n");
        if s.bad.len() > BAD_ROWS {
            let _ = writeln!(
                h,
                "<p class=\"muted\">and {} more in summary.json</p>",
                s.bad.len() - BAD_ROWS
            );
        }
    }
    let _ = writeln!(h, "<h2>Failed shards ({})</h2>", s.failed_shards.len());
    if !s.failed_shards.is_empty() {
        h.push_str(
            "<table id=\"failed-shards\"><tr><th>shard</th><th>samples</th><th>reasons</th></tr>",
        );
        for f in &s.failed_shards {
            let _ = write!(
                h,
                "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                f.shard,
                f.samples.len(),
                escape(&f.reasons.join("; "))
            );
        }
        h.push_str("</table>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_in_names_and_keys() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn throughput_buckets_per_worker() {
        let ev = |t_ms, w: &str, samples| TimelineEvent {
            t_ms,
            worker: w.into(),
            shard: 0,
            samples,
        };
        let mut h = String::new();
        throughput_chart(
            &mut h,
            &[ev(0, "a", 4), ev(50, "b", 4), ev(1000, "a<b>", 8)],
        );
        assert_eq!(h.matches("<polyline").count(), 3);
        assert!(h.contains("a&lt;b&gt;"));
        assert!(!h.contains("a<b>"));
    }
}
