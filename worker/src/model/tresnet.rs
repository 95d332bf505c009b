//! The TResNet network: `body` (s2d, conv1, layer1..4) and `head` (fast global average pool + fc).

use tch::{Kind, Tensor};

use super::blocks::{BasicBlock, Block, BlockSpec, Bottleneck, Downsample};
use super::config::TResNetConfig;
use super::conv_norm_act::{Act, ConvNormAct};
use super::space_to_depth::{BLOCK, space_to_depth};
use super::weights::{BuildOptions, Params};

/// Smallest input side accepted. SpaceToDepth needs multiples of 4, and the reflect padding of the
/// last blur pool needs a feature map of at least 2×2, which 32 guarantees with margin.
pub const MIN_INPUT_SIDE: i64 = 32;

/// Input that the network cannot take; checked before any kernel runs so libtorch never aborts.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ForwardError {
    #[error("input must be a 4-D NCHW batch, got shape {0:?}")]
    Rank(Vec<i64>),
    #[error("input must have 3 (RGB) channels, got {0}")]
    Channels(i64),
    #[error(
        "input height and width must be multiples of 4 and at least {MIN_INPUT_SIDE}, got {h}x{w}"
    )]
    Spatial { h: i64, w: i64 },
    #[error("input batch is empty")]
    Empty,
}

#[derive(Debug)]
pub struct TResNet {
    conv1: ConvNormAct,
    layers: Vec<Vec<Block>>,
    fc_w: Tensor,
    fc_b: Tensor,
    num_classes: i64,
    opts: BuildOptions,
}

impl TResNet {
    /// Builds the network, pulling every tensor from `p` under timm's names.
    pub fn new(cfg: &TResNetConfig, p: &Params, num_classes: i64, opts: &BuildOptions) -> Self {
        let body = p.sub("body");
        let planes = cfg.planes();
        let conv1 = ConvNormAct::new(
            &body.sub("conv1"),
            3 * BLOCK * BLOCK,
            planes,
            3,
            1,
            Act::LeakyRelu(cfg.stem_slope),
            false,
            opts,
        );
        let mut inplanes = planes;
        let mut layers = Vec::with_capacity(4);
        for (stage, &depth) in cfg.layers.iter().enumerate() {
            let bottleneck = cfg.v2 || stage >= 2;
            let expansion = if bottleneck {
                Bottleneck::EXPANSION
            } else {
                BasicBlock::EXPANSION
            };
            let stage_planes = planes << stage;
            let stride = if stage == 0 { 1 } else { 2 };
            let lp = body.sub(format!("layer{}", stage + 1));
            let mut blocks = Vec::with_capacity(depth);
            for i in 0..depth {
                let bp = lp.sub(i);
                let first = i == 0;
                let downsample = (first && (stride != 1 || inplanes != stage_planes * expansion))
                    .then(|| {
                        Downsample::new(
                            &bp.sub("downsample"),
                            inplanes,
                            stage_planes * expansion,
                            stride,
                            opts,
                        )
                    });
                let spec = BlockSpec {
                    inplanes,
                    planes: stage_planes,
                    stride: if first { stride } else { 1 },
                    use_se: stage < 3,
                    slope: cfg.block_slope,
                };
                blocks.push(if bottleneck {
                    Block::Bottleneck(Bottleneck::new(&bp, spec, downsample, opts))
                } else {
                    Block::Basic(BasicBlock::new(&bp, spec, downsample, opts))
                });
                inplanes = stage_planes * expansion;
            }
            layers.push(blocks);
        }
        let fc = p.sub("head").sub("fc");
        let nf = cfg.num_features();
        // The classifier stays 2-D: channels_last does not apply to it.
        let fc_w = fc
            .param("weight", &[num_classes, nf])
            .to_device(opts.device)
            .to_kind(opts.kind);
        let fc_b = fc
            .param("bias", &[num_classes])
            .to_device(opts.device)
            .to_kind(opts.kind);
        TResNet {
            conv1,
            layers,
            fc_w,
            fc_b,
            num_classes,
            opts: *opts,
        }
    }

    pub fn num_classes(&self) -> i64 {
        self.num_classes
    }

    pub fn options(&self) -> &BuildOptions {
        &self.opts
    }

    /// Checks an input's shape before it reaches libtorch, which aborts on shape errors.
    pub fn check_input(&self, x: &Tensor) -> Result<(), ForwardError> {
        let size = x.size();
        let [n, c, h, w] = size[..] else {
            return Err(ForwardError::Rank(size));
        };
        if n == 0 {
            return Err(ForwardError::Empty);
        }
        if c != 3 {
            return Err(ForwardError::Channels(c));
        }
        if h % BLOCK != 0 || w % BLOCK != 0 || h < MIN_INPUT_SIDE || w < MIN_INPUT_SIDE {
            return Err(ForwardError::Spatial { h, w });
        }
        Ok(())
    }

    /// Logits `[N, classes]` (model kind) for an NCHW batch in [0, 1] of any float kind on any device.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ForwardError> {
        self.check_input(x)?;
        let _guard = tch::no_grad_guard();
        let x = x.to_device(self.opts.device).to_kind(self.opts.kind);
        let x = space_to_depth(&x);
        let x = if self.opts.channels_last {
            super::weights::to_channels_last(&x)
        } else {
            x
        };
        let mut x = self.conv1.forward(&x);
        for stage in &self.layers {
            for block in stage {
                x = block.forward(&x);
            }
        }
        // timm's 'fast' pool: a plain mean over H and W.
        let pooled = x.mean_dim([2i64, 3].as_slice(), false, None::<Kind>);
        Ok(pooled.linear(&self.fc_w, Some(&self.fc_b)))
    }
}
