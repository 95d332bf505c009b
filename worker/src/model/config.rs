//! Named TResNet variants and their hyper-parameters, as timm's `tresnet_*` entry points define them.

use std::fmt;
use std::str::FromStr;

/// A TResNet variant by its timm name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelName {
    TresnetM,
    TresnetL,
    TresnetXl,
    TresnetV2L,
}

impl ModelName {
    pub const ALL: [ModelName; 4] = [
        ModelName::TresnetM,
        ModelName::TresnetL,
        ModelName::TresnetXl,
        ModelName::TresnetV2L,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelName::TresnetM => "tresnet_m",
            ModelName::TresnetL => "tresnet_l",
            ModelName::TresnetXl => "tresnet_xl",
            ModelName::TresnetV2L => "tresnet_v2_l",
        }
    }

    pub fn config(self) -> TResNetConfig {
        match self {
            ModelName::TresnetM => TResNetConfig::m(),
            ModelName::TresnetL => TResNetConfig::l(),
            ModelName::TresnetXl => TResNetConfig::xl(),
            ModelName::TresnetV2L => TResNetConfig::v2_l(),
        }
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model name that is not one of the TResNet variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown model {0:?}; expected one of tresnet_m, tresnet_l, tresnet_xl, tresnet_v2_l")]
pub struct UnknownModel(pub String);

impl FromStr for ModelName {
    type Err = UnknownModel;

    /// Accepts timm names with an optional pretrained tag (`tresnet_m.miil_in1k_448`) and timm's
    /// deprecated `_448` aliases, since users copy those straight from timm's model list.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let base = s.split('.').next().unwrap_or(s);
        let base = base.strip_suffix("_448").unwrap_or(base);
        ModelName::ALL
            .into_iter()
            .find(|m| m.as_str() == base)
            .ok_or_else(|| UnknownModel(s.to_string()))
    }
}

/// Architecture hyper-parameters of one variant.
#[derive(Debug, Clone, PartialEq)]
pub struct TResNetConfig {
    /// Blocks per stage.
    pub layers: [usize; 4],
    pub width_factor: f64,
    /// v2: Bottlenecks in every stage and widths rounded down to a multiple of 8.
    pub v2: bool,
    /// LeakyReLU slope after the stem conv (timm: 1e-2).
    pub stem_slope: f64,
    /// LeakyReLU slope inside blocks (timm: 1e-3). The official v2 Stanford-Cars code uses 1e-6 for
    /// every layer, so both slopes are settings rather than constants.
    pub block_slope: f64,
}

impl TResNetConfig {
    pub fn m() -> Self {
        Self::new([3, 4, 11, 3], 1.0, false)
    }

    pub fn l() -> Self {
        Self::new([4, 5, 18, 3], 1.2, false)
    }

    pub fn xl() -> Self {
        Self::new([4, 5, 24, 3], 1.3, false)
    }

    pub fn v2_l() -> Self {
        Self::new([3, 4, 23, 3], 1.0, true)
    }

    fn new(layers: [usize; 4], width_factor: f64, v2: bool) -> Self {
        TResNetConfig {
            layers,
            width_factor,
            v2,
            stem_slope: 1e-2,
            block_slope: 1e-3,
        }
    }

    /// Stem width: Python's `int(64 * width_factor)`, truncated; v2 rounds down to a multiple of 8.
    pub fn planes(&self) -> i64 {
        let p = (64.0 * self.width_factor) as i64;
        if self.v2 { p / 8 * 8 } else { p }
    }

    /// Width of the pooled features that feed the classifier.
    pub fn num_features(&self) -> i64 {
        self.planes() * 8 * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timm_names_with_tags() {
        assert_eq!("tresnet_m".parse(), Ok(ModelName::TresnetM));
        assert_eq!("tresnet_xl.miil_in1k_448".parse(), Ok(ModelName::TresnetXl));
        assert_eq!("tresnet_l_448".parse(), Ok(ModelName::TresnetL));
        assert_eq!(
            "tresnet_v2_l.miil_in21k_ft_in1k".parse(),
            Ok(ModelName::TresnetV2L)
        );
        let err = "resnet50".parse::<ModelName>().unwrap_err();
        assert!(err.to_string().contains("resnet50"), "{err}");
    }

    #[test]
    fn widths_match_timm() {
        assert_eq!(TResNetConfig::m().planes(), 64);
        assert_eq!(TResNetConfig::l().planes(), 76);
        assert_eq!(TResNetConfig::xl().planes(), 83);
        assert_eq!(TResNetConfig::v2_l().planes(), 64);
        assert_eq!(TResNetConfig::xl().num_features(), 2656);
    }
}
