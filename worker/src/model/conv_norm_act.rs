//! timm's `ConvNormAct`: conv (no bias) → BatchNorm → activation → optional blur-pool anti-aliasing.

use tch::{Kind, Tensor};

use super::blur_pool::BlurPool2d;
use super::weights::{BuildOptions, Params};

/// BatchNorm epsilon of every TResNet norm (timm BatchNormAct2d default and inplace-ABN's).
pub const BN_EPS: f64 = 1e-5;

/// Activation applied after the norm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    LeakyRelu(f64),
    /// The last BN of a residual branch and every shortcut BN.
    Identity,
}

impl Act {
    /// Applies the activation in place on `x`, which the caller owns (a fresh conv or BN output),
    /// as timm's `inplace=True` activations do: one kernel, no new allocation.
    pub fn forward(self, x: Tensor) -> Tensor {
        match self {
            // tch binds leaky_relu only with the default 0.01 slope; the one binding that takes the
            // slope is leaky_relu's backward, whose kernel is `self > 0 ? grad : grad * slope` with the
            // slope in the same opmath type as leaky_relu's `x > 0 ? x : x * slope`. With self = grad
            // = x it *is* leaky_relu, bit for bit (worker/tests/parity.rs and the unit test below),
            // and writing into x makes it in place.
            Act::LeakyRelu(slope) => x.leaky_relu_backward_grad_input(&x, &x, slope, false),
            Act::Identity => x,
        }
    }
}

#[derive(Debug)]
struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

#[derive(Debug)]
pub struct ConvNormAct {
    weight: Tensor,
    /// Present only when the BN was folded into the conv.
    bias: Option<Tensor>,
    bn: Option<BatchNorm>,
    stride: i64,
    padding: i64,
    act: Act,
    aa: Option<BlurPool2d>,
}

impl ConvNormAct {
    /// `stride == 2 && anti_alias` gives timm's stride-1 conv followed by a stride-2 blur pool.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &Params,
        c_in: i64,
        c_out: i64,
        kernel: i64,
        stride: i64,
        act: Act,
        anti_alias: bool,
        opts: &BuildOptions,
    ) -> Self {
        let use_aa = anti_alias && stride > 1;
        let w = p
            .sub("conv")
            .param("weight", &[c_out, c_in, kernel, kernel]);
        let bnp = p.sub("bn");
        let gamma = bnp.param("weight", &[c_out]);
        let beta = bnp.param("bias", &[c_out]);
        let mean = bnp.buffer("running_mean", &[c_out]);
        let var = bnp.buffer("running_var", &[c_out]);
        let (weight, bias, bn) = if opts.fold_bn {
            // Folding in f64 keeps the rounding of the product below fp32 resolution.
            let scale = gamma.to_kind(Kind::Double) / (var.to_kind(Kind::Double) + BN_EPS).sqrt();
            let w = w.to_kind(Kind::Double) * scale.view([-1, 1, 1, 1]);
            let b = beta.to_kind(Kind::Double) - mean.to_kind(Kind::Double) * &scale;
            (
                opts.place(w.to_kind(Kind::Float)),
                Some(opts.place(b.to_kind(Kind::Float))),
                None,
            )
        } else {
            let bn = BatchNorm {
                weight: opts.place(gamma),
                bias: opts.place(beta),
                running_mean: opts.place(mean),
                running_var: opts.place(var),
            };
            (opts.place(w), None, Some(bn))
        };
        ConvNormAct {
            weight,
            bias,
            bn,
            stride: if use_aa { 1 } else { stride },
            padding: kernel / 2,
            act,
            aa: use_aa.then(|| BlurPool2d::new(c_out, opts)),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut y = x.conv2d(
            &self.weight,
            self.bias.as_ref(),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        );
        if let Some(bn) = &self.bn {
            y = y.batch_norm(
                Some(&bn.weight),
                Some(&bn.bias),
                Some(&bn.running_mean),
                Some(&bn.running_var),
                false,
                0.1,
                BN_EPS,
                true,
            );
        }
        let y = self.act.forward(y);
        match &self.aa {
            Some(aa) => aa.forward(&y),
            None => y,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The definition timm computes: x for x > 0, slope * x otherwise (slope applied in opmath).
    fn reference(x: &Tensor, slope: f64) -> Tensor {
        let neg = x * slope;
        x.where_self(&x.gt(0.0), &neg)
    }

    #[test]
    fn in_place_leaky_relu_is_bit_identical_to_the_definition() {
        let mut v: Vec<f32> = (-500..500).map(|i| i as f32 * 0.37).collect();
        v.extend([0.0, -0.0, 1e-30, -1e-30, f32::MAX, f32::MIN, f32::NAN]);
        for kind in [Kind::Float, Kind::BFloat16, Kind::Double] {
            for slope in [1e-3, 0.01, 0.0, 1.0] {
                let x = Tensor::from_slice(&v).to_kind(kind);
                let want = reference(&x, slope);
                let got = Act::LeakyRelu(slope).forward(x.copy());
                // Compare bit patterns (NaN == NaN, -0 != +0).
                let bits = |t: &Tensor| {
                    Vec::<f64>::try_from(t.to_kind(Kind::Double))
                        .unwrap()
                        .iter()
                        .map(|f| f.to_bits())
                        .collect::<Vec<_>>()
                };
                assert_eq!(bits(&got), bits(&want), "{kind:?} slope {slope}");
                assert_eq!(got.device(), Device::Cpu);
            }
        }
    }

    #[test]
    fn the_activation_writes_into_its_input() {
        let x = Tensor::from_slice(&[-2.0f32, 3.0]);
        let y = Act::LeakyRelu(0.5).forward(x.shallow_clone());
        assert_eq!(Vec::<f32>::try_from(&x).unwrap(), [-1.0, 3.0]);
        assert_eq!(y.data_ptr(), x.data_ptr());
    }
}
