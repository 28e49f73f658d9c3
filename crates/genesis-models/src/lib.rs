//! Models Genesis networks on libtorch (through `tch`): the 3D U-Net of
//! Zhou et al. (MICCAI 2019) exactly as the official PyTorch code defines
//! it, the V-Net of Milletari et al. (3DV 2016), segmentation and
//! classification heads, and weight import/export that moves the published
//! `Genesis_Chest_CT.pt` (and any PyTorch state dict of these networks) in
//! and out with no Python.
//!
//! - [`UNet3d`]: variable names equal the official state dict keys
//!   (`down_tr64.ops.0.conv1.weight`, `up_tr256.up_conv.weight`, …);
//!   19,073,665 trainable parameters at the paper's width; the original
//!   batch-statistics batch norm by default ([`BatchNormMode::Batch`]).
//! - [`VNet`]: residual 5×5×5 stages, PReLU, optional batch norm and
//!   dropout.
//! - [`SegmentationModel`], [`ClassificationModel`]: the task heads over
//!   either network, with input checks ([`SegmentationModel::try_forward_t`]).
//! - [`load_weights`], [`read_state_dict`], [`save_safetensors`]:
//!   safetensors and both `torch.save` formats (zip and legacy), with the
//!   `module.` prefix dropped and nested `state_dict`s found.
//!
//! Not here: data loading and volume I/O (`genesis-io`), the image
//! transformations of self-supervised pretraining (`genesis-transforms`),
//! losses, optimisers and training loops (`genesis-train`).
//!
//! ```
//! use genesis_models::{ModelConfig, SegmentationModel};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! # fn main() -> genesis_models::Result<()> {
//! let vs = nn::VarStore::new(Device::Cpu);
//! // The paper's network has base_width 32; 4 keeps the example fast.
//! let config = ModelConfig { base_width: 4, ..ModelConfig::default() };
//! let model = SegmentationModel::new(&vs.root(), &config)?;
//! let volume = Tensor::rand([2, 1, 16, 16, 16], (Kind::Float, Device::Cpu));
//! let probabilities = model.try_forward_t(&volume, false)?;
//! assert_eq!(probabilities.size(), [2, 1, 16, 16, 16]);
//! // A badly shaped input is an error, not a libtorch panic.
//! let odd = Tensor::rand([2, 1, 16, 16, 12], (Kind::Float, Device::Cpu));
//! assert!(model.try_forward_t(&odd, false).is_err());
//! # Ok(())
//! # }
//! ```

mod checkpoint;
mod config;
mod device;
mod error;
mod heads;
mod layers;
mod pickle;
mod unet3d;
mod vnet;

pub use checkpoint::{
    InitScope, LoadReport, load_weights, official_name, read_state_dict, save_safetensors,
    write_state_dict,
};
pub use config::{Activation, Arch, BatchNormMode, ModelConfig, UNet3dConfig, VNetConfig};
pub use device::parse_device;
pub use error::{Error, Result};
pub use heads::{ClassificationModel, SegmentationModel};
pub use unet3d::UNet3d;
pub use vnet::VNet;

#[cfg(test)]
mod tests {
    /// Proves that libtorch is linked, loads at run time and computes.
    #[test]
    fn libtorch_runs_a_tensor_op() {
        let a = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let b = (&a * 2.0).sum(tch::Kind::Float);
        assert_eq!(b.double_value(&[]), 12.0);
    }
}
