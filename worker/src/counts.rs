//! Counts-only scoring: a shard's correct@1/@5, confusion matrix, loss and calibration sums
//! accumulated on the device that computed the logits, so no per-sample data leaves it, then summed
//! across the node's executors by the collective and shipped as one `ShardCounts`.
//!
//! The arithmetic mirrors the per-sample path (`scoring.rs`): ties rank the lower class first, loss and
//! confidence come from a log-sum-exp in f64, and a confidence lands in bin `ceil(15·c) - 1` (0 in the
//! first), the coordinator's rule. Integer counts are therefore identical to a per-sample run's; the
//! float sums agree to rounding (the reduction order differs).
//!
//! The confusion matrix is kept sparse: a shard of n samples touches at most n of its C² cells, so the
//! device keeps each batch's `label·C + predicted` codes and only the report message counts them. A
//! dense C×C accumulator (8 MB at 1000 classes) zeroed per lease, added per batch, all-reduced and
//! scanned per shard made counts-only, the mode meant for scale, slower than per-sample results.

use tch::{Device, Kind, Tensor};
use tresnet_common::protocol::pb::{ClassCount, ConfusionCell, ShardCounts};

/// Calibration bins, as the coordinator's report uses (`tresnet_common::scoring`), as a tensor size.
const ECE_BINS: i64 = tresnet_common::scoring::ECE_BINS as i64;
/// Leading integer counters: evaluated, correct@1, correct@k.
const HEAD: i64 = 3;

/// One shard's running counts on one device: `ints` = [evaluated, correct1, correct5,
/// bin_count[15], bin_correct[15], correct5_by_class[C]], `floats` = [loss_sum,
/// bin_confidence_sum[15]] (two flat tensors, so each needs one all-reduce), and the confusion cells
/// as `label·C + predicted` codes, one per sample (gathered, not reduced).
#[derive(Debug)]
pub struct DeviceCounts {
    pub ints: Tensor,
    pub floats: Tensor,
    /// One int64 tensor of codes per batch, concatenated when the lease is reduced.
    confusion: Vec<Tensor>,
    classes: i64,
    device: Device,
}

impl DeviceCounts {
    pub fn zeros(classes: i64, device: Device) -> Self {
        let n = HEAD + 2 * ECE_BINS + classes;
        DeviceCounts {
            ints: Tensor::zeros([n], (Kind::Int64, device)),
            floats: Tensor::zeros([1 + ECE_BINS], (Kind::Double, device)),
            confusion: Vec::new(),
            classes,
            device,
        }
    }

    /// This device's confusion codes of the lease, one tensor (empty when it got no batch).
    pub fn confusion_codes(&self) -> Tensor {
        if self.confusion.is_empty() {
            Tensor::zeros([0], (Kind::Int64, self.device))
        } else {
            Tensor::cat(&self.confusion, 0)
        }
    }

    /// Replaces the codes with `codes` (every device's, after a gather).
    pub fn set_confusion_codes(&mut self, codes: Tensor) {
        self.confusion = vec![codes];
    }

    /// Adds host-side per-sample outcomes: `(label, top-k classes best first, loss, confidence)`,
    /// scored as the coordinator scores a per-sample record (`k` is the report's top-5 k). Used by
    /// synthetic workers, whose records are made without logits.
    pub fn add_records<'a>(
        &mut self,
        records: impl IntoIterator<Item = (u32, &'a [u32], f64, f64)>,
        k: usize,
    ) {
        let b = ECE_BINS as usize;
        let c = self.classes as usize;
        let mut ints = vec![0i64; HEAD as usize + 2 * b + c];
        let mut floats = vec![0f64; 1 + b];
        let mut codes = Vec::new();
        for (label, top, loss, conf) in records {
            let hit1 = top.first() == Some(&label);
            let hitk = top.iter().take(k).any(|&t| t == label);
            let bin = tresnet_common::scoring::ece_bin(conf);
            ints[0] += 1;
            ints[1] += i64::from(hit1);
            ints[2] += i64::from(hitk);
            ints[HEAD as usize + bin] += 1;
            ints[HEAD as usize + b + bin] += i64::from(hit1);
            ints[HEAD as usize + 2 * b + label as usize] += i64::from(hitk);
            floats[0] += loss;
            floats[1 + bin] += conf;
            codes.push(i64::from(label) * self.classes + i64::from(top[0]));
        }
        self.ints += Tensor::from_slice(&ints).to_device(self.device);
        self.floats += Tensor::from_slice(&floats).to_device(self.device);
        self.confusion
            .push(Tensor::from_slice(&codes).to_device(self.device));
    }

    /// Adds a batch: `logits` `[n, classes]` (any float kind) and `labels` `[n]` int64, both on this
    /// device; `k` is the report's top-5 k.
    pub fn add_batch(&mut self, logits: &Tensor, labels: &Tensor, k: i64) {
        let dev = logits.device();
        let c = self.classes;
        let y = logits.to_kind(Kind::Double);
        let lab = labels.unsqueeze(1);
        let ly = y.gather(1, &lab, false);
        let cls = Tensor::arange(c, (Kind::Int64, dev)).unsqueeze(0);
        // A sample's rank is the number of classes ordered before its label under the tie rule.
        let before = y
            .gt_tensor(&ly)
            .logical_or(&y.eq_tensor(&ly).logical_and(&cls.lt_tensor(&lab)));
        let rank = before.sum_dim_intlist(Some([1i64].as_slice()), false, Kind::Int64);
        let hit1 = rank.eq(0);
        let hitk = rank.lt(k);
        let (max, _) = y.max_dim(1, true);
        // The predicted class is the lowest index holding the maximum (not argmax's tie order).
        let pred = cls
            .expand_as(&y)
            .where_self(
                &y.eq_tensor(&max),
                &Tensor::full_like(&cls.expand_as(&y), c),
            )
            .amin(1, false);
        let lse = &max
            + (&y - &max)
                .exp()
                .sum_dim_intlist(Some([1i64].as_slice()), true, Kind::Double)
                .log();
        let loss = (&lse - &ly).squeeze_dim(1);
        let conf = (&max - &lse).exp().squeeze_dim(1);
        let bin = ((&conf * ECE_BINS as f64).ceil().clamp(1.0, ECE_BINS as f64) - 1.0)
            .to_kind(Kind::Int64);
        let n = Tensor::from_slice(&[labels.size()[0]]).to_device(dev);
        let as_f64 = |t: &Tensor| t.to_kind(Kind::Double);
        let ints = Tensor::cat(
            &[
                n,
                hit1.sum(Kind::Int64).view([1]),
                hitk.sum(Kind::Int64).view([1]),
                bin.bincount(None::<Tensor>, ECE_BINS),
                // Weighted bincounts come back as f64; the weights are 0/1, so the sums are exact.
                bin.bincount(Some(as_f64(&hit1)), ECE_BINS)
                    .to_kind(Kind::Int64),
                labels.bincount(Some(as_f64(&hitk)), c).to_kind(Kind::Int64),
            ],
            0,
        );
        self.ints += ints;
        self.confusion.push(labels * c + &pred);
        let floats = Tensor::cat(
            &[
                loss.sum(Kind::Double).view([1]),
                bin.bincount(Some(&conf), ECE_BINS),
            ],
            0,
        );
        self.floats += floats;
    }

    /// The counts as the protocol message (sparse confusion and per-class hits).
    pub fn to_pb(&self) -> Result<ShardCounts, tch::TchError> {
        let ints = Vec::<i64>::try_from(self.ints.to_device(Device::Cpu))?;
        let floats = Vec::<f64>::try_from(self.floats.to_device(Device::Cpu))?;
        let mut codes = Vec::<i64>::try_from(self.confusion_codes().to_device(Device::Cpu))?;
        // Sorted codes are row-major (label, predicted) order: runs are the cells.
        codes.sort_unstable();
        let u = |v: i64| v.max(0) as u64;
        let b = ECE_BINS as usize;
        let c = self.classes as usize;
        let (head, rest) = ints.split_at(HEAD as usize);
        let (bin_count, rest) = rest.split_at(b);
        let (bin_correct, rest) = rest.split_at(b);
        let by_class = rest;
        let mut confusion: Vec<ConfusionCell> = Vec::new();
        for &code in &codes {
            let (label, predicted) = ((code / c as i64) as u32, (code % c as i64) as u32);
            match confusion.last_mut() {
                Some(cell) if (cell.label, cell.predicted) == (label, predicted) => cell.count += 1,
                _ => confusion.push(ConfusionCell {
                    label,
                    predicted,
                    count: 1,
                }),
            }
        }
        Ok(ShardCounts {
            evaluated: u(head[0]),
            correct1: u(head[1]),
            correct5: u(head[2]),
            loss_sum: floats[0],
            bin_count: bin_count.iter().map(|&v| u(v)).collect(),
            bin_confidence_sum: floats[1..].to_vec(),
            bin_correct: bin_correct.iter().map(|&v| u(v)).collect(),
            confusion,
            correct5_by_class: by_class
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, &n)| ClassCount {
                    class_index: i as u32,
                    count: u(n),
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::{loss_and_confidence, top_k};

    /// What the coordinator's per-sample tally would count, from the host scoring functions.
    /// The exact parts of two shards' counts agree (the float sums are compared by each caller).
    fn assert_same_counts(got: &ShardCounts, want: &ShardCounts) {
        assert_eq!(
            (got.evaluated, got.correct1, got.correct5),
            (want.evaluated, want.correct1, want.correct5)
        );
        assert_eq!(got.confusion, want.confusion);
        assert_eq!(got.correct5_by_class, want.correct5_by_class);
        assert_eq!(got.bin_count, want.bin_count);
        assert_eq!(got.bin_correct, want.bin_correct);
    }

    fn host_counts(logits: &[Vec<f32>], labels: &[u32], k: usize) -> ShardCounts {
        let c = logits[0].len();
        let mut out = ShardCounts {
            bin_count: vec![0; ECE_BINS as usize],
            bin_confidence_sum: vec![0.0; ECE_BINS as usize],
            bin_correct: vec![0; ECE_BINS as usize],
            ..Default::default()
        };
        let mut confusion = std::collections::BTreeMap::new();
        let mut by_class = vec![0u64; c];
        for (row, &label) in logits.iter().zip(labels) {
            let (top, _) = top_k(row, k);
            let (loss, conf) = loss_and_confidence(row, label);
            let hit1 = top[0] == label;
            let hitk = top.contains(&label);
            out.evaluated += 1;
            out.correct1 += u64::from(hit1);
            out.correct5 += u64::from(hitk);
            out.loss_sum += loss;
            let bin = tresnet_common::scoring::ece_bin(conf);
            out.bin_count[bin] += 1;
            out.bin_confidence_sum[bin] += conf;
            out.bin_correct[bin] += u64::from(hit1);
            *confusion.entry((label, top[0])).or_insert(0u64) += 1;
            by_class[label as usize] += u64::from(hitk);
        }
        out.confusion = confusion
            .into_iter()
            .map(|((label, predicted), count)| ConfusionCell {
                label,
                predicted,
                count,
            })
            .collect();
        out.correct5_by_class = by_class
            .into_iter()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .map(|(i, count)| ClassCount {
                class_index: i as u32,
                count,
            })
            .collect();
        out
    }

    #[test]
    fn device_counts_equal_the_per_sample_tally_including_ties() {
        let classes = 7usize;
        let mut s = 12345u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut logits = Vec::new();
        let mut labels = Vec::new();
        for i in 0..300 {
            // Coarse values make ties (also with the label) common; some rows are all equal.
            let row: Vec<f32> = (0..classes)
                .map(|_| {
                    if i % 17 == 0 {
                        1.0
                    } else {
                        (next() % 5) as f32 * 0.5
                    }
                })
                .collect();
            logits.push(row);
            labels.push((next() % classes as u64) as u32);
        }
        let k = 3;
        let want = host_counts(&logits, &labels, k);
        let mut counts = DeviceCounts::zeros(classes as i64, Device::Cpu);
        // Two batches, as a shard's would arrive.
        for (rows, labs) in [
            (&logits[..128], &labels[..128]),
            (&logits[128..], &labels[128..]),
        ] {
            let flat: Vec<f32> = rows.iter().flatten().copied().collect();
            let y = Tensor::from_slice(&flat).view([rows.len() as i64, classes as i64]);
            let l = Tensor::from_slice(&labs.iter().map(|&v| v as i64).collect::<Vec<_>>());
            counts.add_batch(&y, &l, k as i64);
        }
        let got = counts.to_pb().unwrap();
        assert_same_counts(&got, &want);
        assert!((got.loss_sum - want.loss_sum).abs() < 1e-9 * want.loss_sum.max(1.0));
        for (g, w) in got.bin_confidence_sum.iter().zip(&want.bin_confidence_sum) {
            assert!((g - w).abs() < 1e-9, "{g} vs {w}");
        }
        // Host-side records (what synthetic workers add) count exactly as the coordinator would.
        let mut records = DeviceCounts::zeros(classes as i64, Device::Cpu);
        let scored: Vec<(u32, Vec<u32>, f64, f64)> = logits
            .iter()
            .zip(&labels)
            .map(|(row, &l)| {
                let (top, _) = top_k(row, k);
                let (loss, conf) = loss_and_confidence(row, l);
                (l, top, loss, conf)
            })
            .collect();
        for half in scored.chunks(150) {
            records.add_records(
                half.iter()
                    .map(|(l, top, loss, conf)| (*l, top.as_slice(), *loss, *conf)),
                k,
            );
        }
        let got = records.to_pb().unwrap();
        assert_same_counts(&got, &want);
    }

    /// Two devices' codes of one lease, gathered, give the cells of both (summed where they meet).
    #[test]
    fn gathered_confusion_codes_merge_into_cells() {
        let mut a = DeviceCounts::zeros(3, Device::Cpu);
        a.add_records([(0, [1u32].as_slice(), 1.0, 0.5), (2, &[2], 0.1, 0.9)], 1);
        let mut b = DeviceCounts::zeros(3, Device::Cpu);
        b.add_records([(0, [1u32].as_slice(), 1.0, 0.5)], 1);
        a.set_confusion_codes(Tensor::cat(&[a.confusion_codes(), b.confusion_codes()], 0));
        let cells: Vec<(u32, u32, u64)> = a
            .to_pb()
            .unwrap()
            .confusion
            .iter()
            .map(|c| (c.label, c.predicted, c.count))
            .collect();
        assert_eq!(cells, [(0, 1, 2), (2, 2, 1)]);
        assert_eq!(
            DeviceCounts::zeros(3, Device::Cpu).confusion_codes().size(),
            [0]
        );
    }
}
