//! TResNet's residual blocks (timm `BasicBlock`, `Bottleneck`) and the stage shortcut (`downsample`).

use tch::Tensor;

use super::conv_norm_act::{Act, ConvNormAct};
use super::squeeze_excite::SEModule;
use super::weights::{BuildOptions, Params};

/// Shortcut of a stage's first block: `AvgPool2d(2, 2, ceil_mode, count_include_pad=False)` then a 1×1
/// conv + BN when striding (state-dict index 1), or the conv alone (index 0) for v2's layer1.
#[derive(Debug)]
pub struct Downsample {
    pool: bool,
    conv: ConvNormAct,
}

impl Downsample {
    pub fn new(p: &Params, c_in: i64, c_out: i64, stride: i64, opts: &BuildOptions) -> Self {
        let pool = stride == 2;
        let idx = if pool { 1 } else { 0 };
        let conv = ConvNormAct::new(&p.sub(idx), c_in, c_out, 1, 1, Act::Identity, false, opts);
        Downsample { pool, conv }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.pool {
            self.conv
                .forward(&x.avg_pool2d([2, 2], [2, 2], [0, 0], true, false, None))
        } else {
            self.conv.forward(x)
        }
    }
}

/// Hyper-parameters shared by the blocks of one stage.
#[derive(Debug, Clone, Copy)]
pub struct BlockSpec {
    pub inplanes: i64,
    pub planes: i64,
    pub stride: i64,
    pub use_se: bool,
    pub slope: f64,
}

#[derive(Debug)]
pub struct BasicBlock {
    conv1: ConvNormAct,
    conv2: ConvNormAct,
    se: Option<SEModule>,
    downsample: Option<Downsample>,
}

impl BasicBlock {
    pub const EXPANSION: i64 = 1;

    pub fn new(
        p: &Params,
        s: BlockSpec,
        downsample: Option<Downsample>,
        opts: &BuildOptions,
    ) -> Self {
        let conv1 = ConvNormAct::new(
            &p.sub("conv1"),
            s.inplanes,
            s.planes,
            3,
            s.stride,
            Act::LeakyRelu(s.slope),
            true,
            opts,
        );
        let conv2 = ConvNormAct::new(
            &p.sub("conv2"),
            s.planes,
            s.planes,
            3,
            1,
            Act::Identity,
            false,
            opts,
        );
        let rd = (s.planes * Self::EXPANSION / 4).max(64);
        let se = s
            .use_se
            .then(|| SEModule::new(&p.sub("se"), s.planes * Self::EXPANSION, rd, opts));
        BasicBlock {
            conv1,
            conv2,
            se,
            downsample,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x),
            None => x.shallow_clone(),
        };
        let mut out = self.conv2.forward(&self.conv1.forward(x));
        if let Some(se) = &self.se {
            out = se.forward(&out);
        }
        residual_relu(out, &shortcut)
    }
}

/// `relu(out + shortcut)` in place on `out` (a fresh tensor the block owns), as timm's
/// `out += shortcut; out = act(out)` with an inplace ReLU: no temporaries.
fn residual_relu(mut out: Tensor, shortcut: &Tensor) -> Tensor {
    out += shortcut;
    out.relu_()
}

#[derive(Debug)]
pub struct Bottleneck {
    conv1: ConvNormAct,
    conv2: ConvNormAct,
    se: Option<SEModule>,
    conv3: ConvNormAct,
    downsample: Option<Downsample>,
}

impl Bottleneck {
    pub const EXPANSION: i64 = 4;

    pub fn new(
        p: &Params,
        s: BlockSpec,
        downsample: Option<Downsample>,
        opts: &BuildOptions,
    ) -> Self {
        let act = Act::LeakyRelu(s.slope);
        let conv1 = ConvNormAct::new(
            &p.sub("conv1"),
            s.inplanes,
            s.planes,
            1,
            1,
            act,
            false,
            opts,
        );
        let conv2 = ConvNormAct::new(
            &p.sub("conv2"),
            s.planes,
            s.planes,
            3,
            s.stride,
            act,
            true,
            opts,
        );
        // SE sits on the 3×3 output, before the expansion, with timm's reduction width.
        let rd = (s.planes * Self::EXPANSION / 8).max(64);
        let se = s
            .use_se
            .then(|| SEModule::new(&p.sub("se"), s.planes, rd, opts));
        let conv3 = ConvNormAct::new(
            &p.sub("conv3"),
            s.planes,
            s.planes * Self::EXPANSION,
            1,
            1,
            Act::Identity,
            false,
            opts,
        );
        Bottleneck {
            conv1,
            conv2,
            se,
            conv3,
            downsample,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x),
            None => x.shallow_clone(),
        };
        let mut out = self.conv2.forward(&self.conv1.forward(x));
        if let Some(se) = &self.se {
            out = se.forward(&out);
        }
        residual_relu(self.conv3.forward(&out), &shortcut)
    }
}

#[derive(Debug)]
pub enum Block {
    Basic(BasicBlock),
    Bottleneck(Bottleneck),
}

impl Block {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Block::Basic(b) => b.forward(x),
            Block::Bottleneck(b) => b.forward(x),
        }
    }
}
