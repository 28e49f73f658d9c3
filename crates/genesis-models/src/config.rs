//! Serde configuration for the networks, with the papers' settings as
//! defaults.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The non-linearity after each batch norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `max(x, 0)`; the Models Genesis default.
    #[default]
    Relu,
    /// Parametric ReLU with one learnt slope per channel (initialised to
    /// 0.25, as PyTorch does); the slopes are parameters named
    /// `….activation.weight` in the U-Net and `….relu1.weight` in the V-Net.
    Prelu,
    /// Exponential linear unit with alpha 1.
    Elu,
}

/// How batch norm layers normalise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchNormMode {
    /// The original Models Genesis behaviour (`ContBatchNorm3d`): normalise
    /// with the statistics of the current batch in training *and* in
    /// evaluation, and update the running statistics both times. Required
    /// for output parity with the published weights.
    #[default]
    Batch,
    /// Standard batch norm: batch statistics in training, running
    /// statistics in evaluation.
    Running,
}

/// The 3D U-Net of Models Genesis (Zhou et al., MICCAI 2019).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UNet3dConfig {
    /// Output channels (one sigmoid per class).
    pub n_class: i64,
    /// Channels of the first convolution; 32 is the paper's network, smaller
    /// values give a proportionally thinner network for tests and CPU demos.
    pub base_width: i64,
    /// Non-linearity after each batch norm.
    pub activation: Activation,
    /// Batch norm behaviour.
    pub batch_norm: BatchNormMode,
}

impl UNet3dConfig {
    /// The network of the published `Genesis_Chest_CT.pt` weights.
    pub fn genesis_chest_ct() -> Self {
        Self {
            n_class: 1,
            base_width: 32,
            activation: Activation::Relu,
            batch_norm: BatchNormMode::Batch,
        }
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        check_positive("n_class", self.n_class)?;
        check_positive("base_width", self.base_width)?;
        check_at_most("n_class", self.n_class, MAX_N_CLASS)?;
        check_at_most("base_width", self.base_width, MAX_BASE_WIDTH)
    }
}

impl Default for UNet3dConfig {
    fn default() -> Self {
        Self::genesis_chest_ct()
    }
}

/// The V-Net (Milletari et al., 3DV 2016).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VNetConfig {
    /// Output channels: one sigmoid when 1, a softmax over channels when
    /// more.
    pub n_class: i64,
    /// Channels of the first stage; 16 in the paper (16, 32, 64, 128, 256).
    pub base_width: i64,
    /// Non-linearity; the paper uses PReLU.
    pub activation: Activation,
    /// Whether a batch norm follows each convolution.
    pub use_batch_norm: bool,
    /// Batch norm behaviour when `use_batch_norm` is set.
    pub batch_norm: BatchNormMode,
    /// Channel-wise (3D feature) dropout probability in the two deepest
    /// encoder and the two deepest decoder stages; 0 disables it.
    pub dropout: f64,
}

impl VNetConfig {
    /// The network of the paper: PReLU, 16 base channels, binary output,
    /// standard batch norm, no dropout.
    pub fn paper() -> Self {
        Self {
            n_class: 1,
            base_width: 16,
            activation: Activation::Prelu,
            use_batch_norm: true,
            batch_norm: BatchNormMode::Running,
            dropout: 0.0,
        }
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        check_positive("n_class", self.n_class)?;
        check_positive("base_width", self.base_width)?;
        check_at_most("n_class", self.n_class, MAX_N_CLASS)?;
        check_at_most("base_width", self.base_width, MAX_BASE_WIDTH)?;
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::InvalidConfig(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        Ok(())
    }
}

impl Default for VNetConfig {
    fn default() -> Self {
        Self::paper()
    }
}

/// Which encoder-decoder network a [`ModelConfig`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// The Models Genesis 3D U-Net.
    #[default]
    #[serde(rename = "unet3d")]
    UNet3d,
    /// The V-Net.
    #[serde(rename = "vnet")]
    VNet,
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::UNet3d => "unet3d",
            Arch::VNet => "vnet",
        })
    }
}

impl std::str::FromStr for Arch {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "unet3d" => Ok(Arch::UNet3d),
            "vnet" => Ok(Arch::VNet),
            other => Err(Error::InvalidConfig(format!(
                "unknown arch `{other}`: expected unet3d or vnet"
            ))),
        }
    }
}

/// The architecture-independent model description used by the task heads
/// and the training loops. The default is the paper's U-Net with one output.
///
/// For the V-Net, `base_width` is the first stage's width (16 in the
/// paper, see [`ModelConfig::vnet_paper`]), batch norm is always on and
/// dropout is off; build a [`crate::VNet`] from a [`VNetConfig`] directly for
/// those options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The network.
    pub arch: Arch,
    /// Output channels (segmentation) or classes (classification).
    pub n_class: i64,
    /// First-level channels: 32 for the paper U-Net, 16 for the paper V-Net.
    pub base_width: i64,
    /// Non-linearity.
    pub activation: Activation,
    /// Batch norm behaviour.
    pub batch_norm: BatchNormMode,
}

impl Default for ModelConfig {
    fn default() -> Self {
        let unet = UNet3dConfig::genesis_chest_ct();
        Self {
            arch: Arch::UNet3d,
            n_class: unet.n_class,
            base_width: unet.base_width,
            activation: unet.activation,
            batch_norm: unet.batch_norm,
        }
    }
}

impl ModelConfig {
    /// The paper's V-Net through the common configuration.
    pub fn vnet_paper() -> Self {
        let vnet = VNetConfig::paper();
        Self {
            arch: Arch::VNet,
            n_class: vnet.n_class,
            base_width: vnet.base_width,
            activation: vnet.activation,
            batch_norm: vnet.batch_norm,
        }
    }

    /// The U-Net configuration this describes (whatever `arch` says).
    pub fn unet3d(&self) -> UNet3dConfig {
        UNet3dConfig {
            n_class: self.n_class,
            base_width: self.base_width,
            activation: self.activation,
            batch_norm: self.batch_norm,
        }
    }

    /// The V-Net configuration this describes (whatever `arch` says).
    pub fn vnet(&self) -> VNetConfig {
        VNetConfig {
            n_class: self.n_class,
            base_width: self.base_width,
            activation: self.activation,
            use_batch_norm: true,
            batch_norm: self.batch_norm,
            dropout: 0.0,
        }
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        match self.arch {
            Arch::UNet3d => self.unet3d().validate(),
            Arch::VNet => self.vnet().validate(),
        }
    }

    /// Each spatial side of an input must be a multiple of this.
    pub fn spatial_multiple(&self) -> i64 {
        match self.arch {
            Arch::UNet3d => crate::unet3d::SPATIAL_MULTIPLE,
            Arch::VNet => crate::vnet::SPATIAL_MULTIPLE,
        }
    }
}

/// Widest first level accepted: 16 times the paper's 32, already about 5 G parameters
/// for the U-Net; wider would fail to allocate inside libtorch, which panics.
const MAX_BASE_WIDTH: i64 = 512;

/// Most output classes accepted.
const MAX_N_CLASS: i64 = 1024;

fn check_at_most(name: &str, value: i64, max: i64) -> Result<()> {
    if value > max {
        return Err(Error::InvalidConfig(format!(
            "{name} must be at most {max}, got {value}"
        )));
    }
    Ok(())
}

fn check_positive(name: &str, value: i64) -> Result<()> {
    if value < 1 {
        return Err(Error::InvalidConfig(format!(
            "{name} must be at least 1, got {value}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_paper_unet() {
        let config = ModelConfig::default();
        assert_eq!(config.arch, Arch::UNet3d);
        assert_eq!(config.n_class, 1);
        assert_eq!(config.base_width, 32);
        assert_eq!(config.unet3d(), UNet3dConfig::genesis_chest_ct());
    }

    #[test]
    fn serde_uses_lowercase_names() {
        let config: ModelConfig =
            toml::from_str("arch = \"vnet\"\nactivation = \"prelu\"\nbatch_norm = \"running\"\n")
                .unwrap();
        assert_eq!(config.arch, Arch::VNet);
        assert_eq!(config.activation, Activation::Prelu);
        assert_eq!(config.batch_norm, BatchNormMode::Running);
        assert_eq!(config.n_class, 1);
        let json = serde_json::to_string(&ModelConfig::default()).unwrap();
        assert!(json.contains("\"unet3d\""), "{json}");
        assert!(json.contains("\"relu\""), "{json}");
        assert!(json.contains("\"batch\""), "{json}");
    }

    #[test]
    fn invalid_values_are_rejected() {
        let config = ModelConfig {
            n_class: 0,
            ..ModelConfig::default()
        };
        assert!(matches!(config.validate(), Err(Error::InvalidConfig(_))));
        let vnet = VNetConfig {
            dropout: 1.5,
            ..VNetConfig::paper()
        };
        assert!(vnet.validate().is_err());
        // Widths beyond what libtorch could allocate are refused before it panics.
        for arch in [Arch::UNet3d, Arch::VNet] {
            let wide = ModelConfig {
                arch,
                base_width: 100_000,
                ..ModelConfig::default()
            };
            let message = wide.validate().unwrap_err().to_string();
            assert!(
                message.contains("base_width must be at most 512"),
                "{message}"
            );
        }
        assert!("unet".parse::<Arch>().is_err());
        assert_eq!("vnet".parse::<Arch>().unwrap(), Arch::VNet);
    }
}
