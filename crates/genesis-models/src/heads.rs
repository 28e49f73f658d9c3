//! Task heads: segmentation (the whole encoder-decoder) and classification
//! (the official `TargetNet`: global average pooling over the deepest
//! encoder features → `dense_1` → ReLU → `dense_2`).

use tch::Tensor;
use tch::nn::{self, ModuleT};

use crate::config::{Arch, BatchNormMode, ModelConfig};
use crate::{Error, Result, UNet3d, VNet, unet3d, vnet};

/// Checks an input can go through `config`'s encoder; the message says
/// what to change.
fn check_input(config: &ModelConfig, xs: &Tensor, train: bool) -> Result<()> {
    let arch = match config.arch {
        Arch::UNet3d => "3D U-Net",
        Arch::VNet => "V-Net",
    };
    let shape = xs.size();
    let fail = |reason: String| Error::InputShape {
        arch,
        shape: shape.clone(),
        reason,
    };
    if shape.len() != 5 {
        return Err(fail(format!(
            "expected 5 axes (N, 1, D1, D2, D3), got {}",
            shape.len()
        )));
    }
    if shape[1] != 1 {
        return Err(fail(format!("expected 1 input channel, got {}", shape[1])));
    }
    let multiple = config.spatial_multiple();
    if let Some((axis, side)) = shape[2..]
        .iter()
        .enumerate()
        .find(|(_, side)| **side < multiple || **side % multiple != 0)
    {
        return Err(fail(format!(
            "spatial side D{} = {side} is not a positive multiple of {multiple}",
            axis + 1
        )));
    }
    // Batch norm with batch statistics (always in `Batch` mode, in training
    // otherwise) needs more than one value per channel at the deepest level.
    let deepest: i64 = shape[2..].iter().map(|side| side / multiple).product();
    if (config.batch_norm == BatchNormMode::Batch || train) && shape[0] * deepest < 2 {
        return Err(fail(format!(
            "batch-statistics batch norm needs more than one value per channel at the deepest level \
             (batch {} × {deepest} voxel); use a larger batch or volume",
            shape[0]
        )));
    }
    let kind = xs.kind();
    if !matches!(
        kind,
        tch::Kind::Float | tch::Kind::Double | tch::Kind::Half | tch::Kind::BFloat16
    ) {
        return Err(fail(format!(
            "expected a floating-point tensor, got {kind:?}"
        )));
    }
    Ok(())
}

#[derive(Debug)]
enum SegmentationNet {
    UNet3d(Box<UNet3d>),
    VNet(Box<VNet>),
}

/// The whole encoder-decoder with `n_class` outputs; initialise it from
/// pretrained weights with [`crate::InitScope::Whole`].
///
/// # Shapes
/// `(N, 1, D1, D2, D3)` → `(N, n_class, D1, D2, D3)` probabilities (sigmoid
/// per class; softmax for a multi-class V-Net).
#[derive(Debug)]
pub struct SegmentationModel {
    net: SegmentationNet,
    config: ModelConfig,
}

impl SegmentationModel {
    /// Validates `config` and builds the network under `p`.
    pub fn new(p: &nn::Path, config: &ModelConfig) -> Result<Self> {
        config.validate()?;
        let net = match config.arch {
            Arch::UNet3d => SegmentationNet::UNet3d(Box::new(UNet3d::new(p, &config.unet3d()))),
            Arch::VNet => SegmentationNet::VNet(Box::new(VNet::new(p, &config.vnet()))),
        };
        Ok(Self {
            net,
            config: *config,
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// [`ModuleT::forward_t`] after checking the input's shape and kind.
    ///
    /// # Shapes
    /// `(N, 1, D1, D2, D3)` → `(N, n_class, D1, D2, D3)`; each `Di` a
    /// multiple of [`ModelConfig::spatial_multiple`] (8 for the U-Net, 16
    /// for the V-Net).
    pub fn try_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        check_input(&self.config, xs, train)?;
        Ok(self.forward_t(xs, train))
    }

    /// The deepest encoder features, after checking the input.
    pub fn try_encode_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        check_input(&self.config, xs, train)?;
        Ok(match &self.net {
            SegmentationNet::UNet3d(net) => net.encode_t(xs, train),
            SegmentationNet::VNet(net) => net.encode_t(xs, train),
        })
    }
}

impl ModuleT for SegmentationModel {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match &self.net {
            SegmentationNet::UNet3d(net) => net.forward_t(xs, train),
            SegmentationNet::VNet(net) => net.forward_t(xs, train),
        }
    }
}

#[derive(Debug)]
enum ClassificationEncoder {
    UNet3d(Box<unet3d::Encoder>),
    VNet(Box<vnet::Encoder>),
}

/// The encoder with the official classification head on top. Variables:
/// the encoder's own (`down_tr64…down_tr512` for the U-Net, `in_tr`,
/// `down_tr32…down_tr256` for the V-Net), then `dense_1.{weight,bias}`
/// (deepest channels → 1024) and `dense_2.{weight,bias}` (1024 →
/// `n_class`), the attribute names of the official `TargetNet`. Initialise
/// it from pretrained weights with [`crate::InitScope::EncoderOnly`].
///
/// # Shapes
/// `(N, 1, D1, D2, D3)` → `(N, n_class)` logits.
#[derive(Debug)]
pub struct ClassificationModel {
    encoder: ClassificationEncoder,
    dense_1: nn::Linear,
    dense_2: nn::Linear,
    config: ModelConfig,
}

impl ClassificationModel {
    /// Width of the hidden layer of the head.
    pub const HIDDEN: i64 = 1024;

    /// Validates `config` and builds the encoder and head under `p`.
    pub fn new(p: &nn::Path, config: &ModelConfig) -> Result<Self> {
        config.validate()?;
        let encoder = match config.arch {
            Arch::UNet3d => {
                ClassificationEncoder::UNet3d(Box::new(unet3d::Encoder::new(p, &config.unet3d())))
            }
            Arch::VNet => {
                ClassificationEncoder::VNet(Box::new(vnet::Encoder::new(p, &config.vnet())))
            }
        };
        // Both encoders end at 16 × base_width channels.
        let features = 16 * config.base_width;
        let dense_1 = crate::layers::linear(p / "dense_1", features, Self::HIDDEN);
        let dense_2 = crate::layers::linear(p / "dense_2", Self::HIDDEN, config.n_class);
        Ok(Self {
            encoder,
            dense_1,
            dense_2,
            config: *config,
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// [`ModuleT::forward_t`] after checking the input's shape and kind.
    pub fn try_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        check_input(&self.config, xs, train)?;
        Ok(self.forward_t(xs, train))
    }
}

impl ModuleT for ClassificationModel {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let features = match &self.encoder {
            ClassificationEncoder::UNet3d(encoder) => encoder.forward_t(xs, train),
            ClassificationEncoder::VNet(encoder) => encoder.forward_t(xs, train),
        };
        let pooled = features.adaptive_avg_pool3d([1, 1, 1]).flatten(1, -1);
        pooled.apply(&self.dense_1).relu().apply(&self.dense_2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn small(arch: Arch, n_class: i64) -> ModelConfig {
        ModelConfig {
            arch,
            n_class,
            base_width: 4,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn segmentation_checks_the_input_shape() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = SegmentationModel::new(&vs.root(), &small(Arch::UNet3d, 2)).unwrap();
        let ok = Tensor::randn([2, 1, 16, 16, 8], (Kind::Float, Device::Cpu));
        assert_eq!(
            model.try_forward_t(&ok, false).unwrap().size(),
            [2, 2, 16, 16, 8]
        );
        for bad in [
            vec![2, 1, 16, 16, 12],
            vec![2, 2, 16, 16, 8],
            vec![1, 16, 16, 8],
        ] {
            let xs = Tensor::zeros(bad.as_slice(), (Kind::Float, Device::Cpu));
            let err = model.try_forward_t(&xs, false).unwrap_err();
            assert!(matches!(err, Error::InputShape { .. }), "{err}");
        }
        let single_voxel = Tensor::zeros([1, 1, 8, 8, 8], (Kind::Float, Device::Cpu));
        let err = model.try_forward_t(&single_voxel, true).unwrap_err();
        assert!(err.to_string().contains("more than one value"), "{err}");
        let ints = Tensor::zeros([2, 1, 16, 16, 8], (Kind::Int64, Device::Cpu));
        assert!(model.try_forward_t(&ints, false).is_err());

        let vs = nn::VarStore::new(Device::Cpu);
        let vnet = SegmentationModel::new(&vs.root(), &small(Arch::VNet, 1)).unwrap();
        let err = vnet.try_forward_t(&ok, false).unwrap_err();
        assert!(err.to_string().contains("multiple of 16"), "{err}");
    }

    #[test]
    fn classification_outputs_logits_and_has_encoder_and_head_only() {
        for arch in [Arch::UNet3d, Arch::VNet] {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = ClassificationModel::new(&vs.root(), &small(arch, 3)).unwrap();
            let xs = Tensor::randn([2, 1, 16, 16, 16], (Kind::Float, Device::Cpu));
            let logits = model.try_forward_t(&xs, true).unwrap();
            assert_eq!(logits.size(), [2, 3]);
            let variables = vs.variables();
            assert_eq!(variables["dense_1.weight"].size(), [1024, 64]);
            assert_eq!(variables["dense_2.weight"].size(), [3, 1024]);
            assert!(
                variables
                    .keys()
                    .all(|k| !k.starts_with("up_tr") && !k.starts_with("out_tr"))
            );
        }
    }

    #[test]
    fn invalid_config_is_an_error() {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = ModelConfig {
            base_width: 0,
            ..ModelConfig::default()
        };
        assert!(matches!(
            SegmentationModel::new(&vs.root(), &config),
            Err(Error::InvalidConfig(_))
        ));
        assert!(ClassificationModel::new(&vs.root(), &config).is_err());
    }
}
