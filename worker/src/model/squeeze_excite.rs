//! timm's `SEModule` as TResNet configures it: mean pool, 1×1 conv, ReLU, 1×1 conv, sigmoid gate.

use tch::Tensor;

use super::weights::{BuildOptions, Params};

#[derive(Debug)]
pub struct SEModule {
    fc1_w: Tensor,
    fc1_b: Tensor,
    fc2_w: Tensor,
    fc2_b: Tensor,
}

impl SEModule {
    pub fn new(p: &Params, channels: i64, rd_channels: i64, opts: &BuildOptions) -> Self {
        let fc1 = p.sub("fc1");
        let fc2 = p.sub("fc2");
        SEModule {
            fc1_w: opts.place(fc1.param("weight", &[rd_channels, channels, 1, 1])),
            fc1_b: opts.place(fc1.param("bias", &[rd_channels])),
            fc2_w: opts.place(fc2.param("weight", &[channels, rd_channels, 1, 1])),
            fc2_b: opts.place(fc2.param("bias", &[channels])),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        // Mean over H and W rather than adaptive pooling: timm's choice, which also avoids NaNs under
        // channels_last + AMP (pytorch/pytorch#43992).
        let s = x.mean_dim([2i64, 3].as_slice(), true, None);
        let s = s
            .conv2d(&self.fc1_w, Some(&self.fc1_b), [1, 1], [0, 0], [1, 1], 1)
            .relu();
        let s = s
            .conv2d(&self.fc2_w, Some(&self.fc2_b), [1, 1], [0, 0], [1, 1], 1)
            .sigmoid();
        x * s
    }
}
