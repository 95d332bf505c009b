//! `tresnet-worker preprocess`: one image file → float32 `[1, 3, H, W]` `.npy` in [0, 1], the input
//! `infer` takes, so the Rust pipeline can be compared with timm's transform from the command line.

use std::path::PathBuf;

use tresnet_common::npy::{self, NpyError};
use tresnet_common::preprocess::PreprocessConfig;

use super::{PreprocessError, Preprocessor};
use crate::cli::PreprocessArgs;

#[derive(Debug, thiserror::Error)]
pub enum PreprocessCommandError {
    #[error("cannot read image {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: PreprocessError,
    },
    #[error(transparent)]
    Config(PreprocessError),
    #[error(transparent)]
    Npy(#[from] NpyError),
}

/// Validated settings of one `preprocess` invocation.
#[derive(Debug, Clone)]
pub struct PreprocessCommand {
    pub image: PathBuf,
    pub output: PathBuf,
    pub config: PreprocessConfig,
}

impl PreprocessCommand {
    pub fn from_args(a: &PreprocessArgs) -> Result<Self, PreprocessCommandError> {
        let mut config = PreprocessConfig::tresnet(a.resolution);
        config.crop_pct = a.crop_pct;
        config.crop_mode = a.crop_mode;
        config.dct_scaling = a.dct_scaling;
        if let Some(m) = a.max_pixels {
            config.max_pixels = m;
        }
        config
            .validate()
            .map_err(|e| PreprocessCommandError::Config(e.into()))?;
        Ok(Self {
            image: a.image.clone(),
            output: a.output.clone(),
            config,
        })
    }

    /// Runs the pipeline and writes the `.npy`; returns the (height, width) written.
    pub fn run(&self) -> Result<(u32, u32), PreprocessCommandError> {
        let bytes = std::fs::read(&self.image).map_err(|source| PreprocessCommandError::Read {
            path: self.image.clone(),
            source,
        })?;
        let mut p =
            Preprocessor::new(self.config.clone()).map_err(PreprocessCommandError::Config)?;
        let img = p
            .run(&bytes)
            .map_err(|source| PreprocessCommandError::Image {
                path: self.image.clone(),
                source,
            })?;
        let shape = [1, 3, img.height as usize, img.width as usize];
        npy::write_f32(&self.output, &shape, &img.to_f32())?;
        Ok((img.height, img.width))
    }
}
