//! timm's `BlurPool2d` (filt_size 3, stride 2, reflect padding): the anti-aliased downsampling of TResNet.

use tch::{Device, Kind, Tensor};

use super::weights::BuildOptions;

/// Depthwise [1,2,1]⊗[1,2,1]/16 blur with stride 2. The filter is a constant, never stored in
/// checkpoints (timm registers it non-persistent; MIIL kept it in a TorchScript class).
#[derive(Debug)]
pub struct BlurPool2d {
    filt: Tensor,
    channels: i64,
}

impl BlurPool2d {
    pub fn new(channels: i64, opts: &BuildOptions) -> Self {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 1.0]);
        let f = (a.unsqueeze(1) * a.unsqueeze(0)) / 16.0;
        let filt = f
            .view([1, 1, 3, 3])
            .expand([channels, 1, 3, 3], false)
            .contiguous()
            .to_device(Device::Cpu)
            .to_kind(Kind::Float);
        BlurPool2d {
            filt: opts.place(filt),
            channels,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.reflection_pad2d([1, 1, 1, 1]).conv2d(
            &self.filt,
            None::<&Tensor>,
            [2, 2],
            [0, 0],
            [1, 1],
            self.channels,
        )
    }
}
