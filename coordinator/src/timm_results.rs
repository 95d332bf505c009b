//! The sweep's results in the shape of timm's published `results-*.csv` (one file per dataset, rows
//! ranked by top-1), so that a user can diff this tool's numbers against timm's line by line.
//!
//! Columns follow timm's: `model, top1, top1_err, top5, top5_err, param_count, img_size, crop_pct,
//! interpolation`, with the same number formats (accuracies and errors to 3 decimals, parameters in
//! millions to 2). A dataset other than the reference one (ImageNet-val) adds timm's `top1_diff,
//! top5_diff, rank_diff` against the same model's reference row: signed strings (`+0.123`, `-2`), the
//! rank difference being the reference rank minus this rank, as timm's `generate_csv_results.py`
//! writes them. `crop_mode` and `precision` follow at the end: a sweep may vary them, timm's tables do
//! not.

use std::collections::HashMap;

use polars::prelude::*;

/// The only resize filter the pipeline has (Pillow's bilinear, as timm's TResNet configs use).
pub const INTERPOLATION: &str = "bilinear";

/// One evaluated cell, reduced to what the table shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    pub dataset: String,
    /// `architecture.weights-label`, timm's `model.pretrained_tag` shape.
    pub model: String,
    pub top1: f64,
    pub top5: f64,
    /// Millions of parameters (BN statistics and other buffers excluded, as timm counts them).
    pub param_count: Option<f64>,
    pub img_size: u32,
    pub crop_pct: f64,
    pub crop_mode: String,
    pub precision: String,
}

impl ResultRow {
    /// What pairs a row with its reference row: everything but the dataset and the numbers.
    fn pairing(&self) -> (&str, u32, &str, &str) {
        (&self.model, self.img_size, &self.crop_mode, &self.precision)
    }
}

/// One dataset's table, best top-1 first.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultsTable {
    pub dataset: String,
    pub rows: Vec<ResultRow>,
    /// Per row: `(top1_diff, top5_diff, rank_diff)` against the reference dataset; `None` for the
    /// reference table itself (no diff columns), and empty strings where the model has no reference row.
    pub diffs: Option<Vec<(String, String, String)>>,
}

fn rank(mut rows: Vec<ResultRow>) -> Vec<ResultRow> {
    rows.sort_by(|a, b| {
        b.top1
            .total_cmp(&a.top1)
            .then(b.top5.total_cmp(&a.top5))
            .then(a.model.cmp(&b.model))
            .then(a.img_size.cmp(&b.img_size))
    });
    rows
}

fn signed3(v: f64) -> String {
    // timm writes "+0.000" for no change and "-x" only below zero.
    if v >= 0.0 {
        format!("+{v:.3}")
    } else {
        format!("-{:.3}", v.abs())
    }
}

fn rank_diff(rank: usize, base_rank: usize) -> String {
    match rank.cmp(&base_rank) {
        std::cmp::Ordering::Equal => "0".into(),
        std::cmp::Ordering::Greater => format!("-{}", rank - base_rank),
        std::cmp::Ordering::Less => format!("+{}", base_rank - rank),
    }
}

/// Groups `rows` by dataset (in first-seen order) and ranks each; `reference` names the dataset the
/// others are diffed against (absent from the sweep: no diff columns anywhere).
pub fn results_tables(rows: Vec<ResultRow>, reference: Option<&str>) -> Vec<ResultsTable> {
    let mut order: Vec<String> = Vec::new();
    let mut by_dataset: HashMap<String, Vec<ResultRow>> = HashMap::new();
    for r in rows {
        if !by_dataset.contains_key(&r.dataset) {
            order.push(r.dataset.clone());
        }
        by_dataset.entry(r.dataset.clone()).or_default().push(r);
    }
    let ranked: HashMap<String, Vec<ResultRow>> = by_dataset
        .into_iter()
        .map(|(d, rows)| (d, rank(rows)))
        .collect();
    let base = reference.and_then(|d| ranked.get(d));
    order
        .into_iter()
        .map(|dataset| {
            let rows = ranked[&dataset].clone();
            let diffs = match base {
                Some(base) if Some(dataset.as_str()) != reference => Some(
                    rows.iter()
                        .enumerate()
                        .map(
                            |(i, r)| match base.iter().position(|b| b.pairing() == r.pairing()) {
                                Some(j) => (
                                    signed3(r.top1 - base[j].top1),
                                    signed3(r.top5 - base[j].top5),
                                    rank_diff(i, j),
                                ),
                                None => Default::default(),
                            },
                        )
                        .collect(),
                ),
                _ => None,
            };
            ResultsTable {
                dataset,
                rows,
                diffs,
            }
        })
        .collect()
}

impl ResultsTable {
    /// The table as timm's CSV columns (strings, so each number keeps timm's format).
    pub fn frame(&self) -> PolarsResult<DataFrame> {
        let r = &self.rows;
        let col = |name: &str, f: &dyn Fn(&ResultRow) -> String| {
            Column::new(name.into(), r.iter().map(f).collect::<Vec<_>>())
        };
        let mut cols = vec![
            col("model", &|x| x.model.clone()),
            col("top1", &|x| format!("{:.3}", x.top1)),
            col("top1_err", &|x| format!("{:.3}", 100.0 - x.top1)),
            col("top5", &|x| format!("{:.3}", x.top5)),
            col("top5_err", &|x| format!("{:.3}", 100.0 - x.top5)),
            col("param_count", &|x| {
                x.param_count.map(|p| format!("{p:.2}")).unwrap_or_default()
            }),
            col("img_size", &|x| x.img_size.to_string()),
            col("crop_pct", &|x| format!("{:.3}", x.crop_pct)),
            col("interpolation", &|_| INTERPOLATION.to_string()),
        ];
        if let Some(d) = &self.diffs {
            for (name, pick) in [("top1_diff", 0usize), ("top5_diff", 1), ("rank_diff", 2)] {
                let v: Vec<String> = d
                    .iter()
                    .map(|t| match pick {
                        0 => t.0.clone(),
                        1 => t.1.clone(),
                        _ => t.2.clone(),
                    })
                    .collect();
                cols.push(Column::new(name.into(), v));
            }
        }
        cols.push(col("crop_mode", &|x| x.crop_mode.clone()));
        cols.push(col("precision", &|x| x.precision.clone()));
        DataFrame::new_infer_height(cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(dataset: &str, model: &str, top1: f64, top5: f64) -> ResultRow {
        ResultRow {
            dataset: dataset.into(),
            model: model.into(),
            top1,
            top5,
            param_count: Some(31.389_032),
            img_size: 224,
            crop_pct: 0.875,
            crop_mode: "center".into(),
            precision: "fp32".into(),
        }
    }

    #[test]
    fn tables_rank_by_top1_and_diff_against_the_reference_like_timm() {
        let rows = vec![
            row("val", "m.a", 80.0, 95.0),
            row("val", "l.a", 81.5, 95.5),
            row("val", "xl.a", 82.0, 96.0),
            row("v2", "m.a", 69.0, 88.0),
            row("v2", "l.a", 68.5, 88.2),
            row("v2", "xl.a", 70.0, 89.0),
            row("v2", "new.a", 60.0, 80.0),
        ];
        let t = results_tables(rows, Some("val"));
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].dataset, "val");
        assert!(t[0].diffs.is_none());
        let names: Vec<&str> = t[1].rows.iter().map(|r| r.model.as_str()).collect();
        assert_eq!(names, ["xl.a", "m.a", "l.a", "new.a"]);
        let d = t[1].diffs.as_ref().unwrap();
        // xl: rank 0 in both; m: rank 1 here, 2 in val -> "+1"; l: rank 2 here, 1 in val -> "-1".
        assert_eq!(d[0], ("-12.000".into(), "-7.000".into(), "0".into()));
        assert_eq!(d[1], ("-11.000".into(), "-7.000".into(), "+1".into()));
        assert_eq!(d[2], ("-13.000".into(), "-7.300".into(), "-1".into()));
        // No reference row: empty diff cells, not a made-up zero.
        assert_eq!(d[3], (String::new(), String::new(), String::new()));

        let f = t[1].frame().unwrap();
        let cols: Vec<&str> = f.get_column_names().iter().map(|c| c.as_str()).collect();
        assert_eq!(
            cols,
            [
                "model",
                "top1",
                "top1_err",
                "top5",
                "top5_err",
                "param_count",
                "img_size",
                "crop_pct",
                "interpolation",
                "top1_diff",
                "top5_diff",
                "rank_diff",
                "crop_mode",
                "precision"
            ]
        );
        let first = |c: &str| {
            f.column(c)
                .unwrap()
                .str()
                .unwrap()
                .get(0)
                .unwrap()
                .to_string()
        };
        assert_eq!(first("top1"), "70.000");
        assert_eq!(first("top1_err"), "30.000");
        assert_eq!(first("param_count"), "31.39");
        assert_eq!(first("crop_pct"), "0.875");
        assert_eq!(first("interpolation"), "bilinear");
    }

    #[test]
    fn rows_pair_only_with_the_same_resolution_crop_and_precision() {
        let mut at448 = row("val", "m.a", 83.0, 96.0);
        at448.img_size = 448;
        let rows = vec![at448, row("real", "m.a", 86.0, 97.0)];
        let t = results_tables(rows, Some("val"));
        assert_eq!(
            t[1].diffs.as_ref().unwrap()[0],
            Default::default(),
            "a 224 row is not diffed against a 448 one"
        );
        // Without a reference in the sweep, no table has diff columns.
        let t = results_tables(vec![row("real", "m.a", 86.0, 97.0)], None);
        assert!(t[0].diffs.is_none());
    }
}
