//! The 3D U-Net of Models Genesis: Zhou et al., "Models Genesis: Generic
//! Autodidactic Models for 3D Medical Image Analysis", MICCAI 2019, as
//! defined in the official `pytorch/unet3d.py`.
//!
//! Every module sits at the path of the official attribute, so the
//! variable names equal the official state dict keys
//! (`down_tr64.ops.0.conv1.weight`, `up_tr256.up_conv.weight`,
//! `out_tr.final_conv.bias`, …).

use tch::Tensor;
use tch::nn::{self, ModuleT};

use crate::config::UNet3dConfig;
use crate::layers::{LuConv, LuConvSpec, conv_transpose3d, conv3d};

/// Three 2×2×2 poolings: each spatial side must be a multiple of 8.
pub(crate) const SPATIAL_MULTIPLE: i64 = 8;

/// Names of the encoder's top-level modules, deepest last.
pub(crate) const ENCODER_MODULES: [&str; 4] =
    ["down_tr64", "down_tr128", "down_tr256", "down_tr512"];

/// The official `_make_nConv`: two `LUConv`s in a `Sequential` named `ops`.
fn make_n_conv(
    p: nn::Path,
    in_channels: i64,
    depth: u32,
    double_channel: bool,
    base_width: i64,
    spec: LuConvSpec,
) -> [LuConv; 2] {
    let ops = &p / "ops";
    let level_width = base_width * 2i64.pow(depth);
    let (mid, out) = if double_channel {
        (2 * level_width, 2 * level_width)
    } else {
        (level_width, 2 * level_width)
    };
    [
        LuConv::new(&ops / "0", in_channels, mid, spec),
        LuConv::new(&ops / "1", mid, out, spec),
    ]
}

/// The official `DownTransition`; the last level does not pool.
#[derive(Debug)]
struct DownTransition {
    ops: [LuConv; 2],
    pool: bool,
}

impl DownTransition {
    /// Returns `(pooled or not, before pooling)`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        let before_pool = self.ops[1].forward_t(&self.ops[0].forward_t(xs, train), train);
        let out = if self.pool {
            before_pool.max_pool3d([2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1], false)
        } else {
            before_pool.shallow_clone()
        };
        (out, before_pool)
    }
}

/// The official `UpTransition`: transposed conv keeping the channels, concat
/// `[upsampled, skip]`, two `LUConv`s.
#[derive(Debug)]
struct UpTransition {
    up_conv: nn::ConvTranspose3D,
    ops: [LuConv; 2],
}

impl UpTransition {
    fn forward_t(&self, xs: &Tensor, skip: &Tensor, train: bool) -> Tensor {
        let up = xs.apply(&self.up_conv);
        let concat = Tensor::cat(&[&up, skip], 1);
        self.ops[1].forward_t(&self.ops[0].forward_t(&concat, train), train)
    }
}

/// The Models Genesis 3D U-Net. Output probabilities come from a sigmoid
/// per class.
///
/// # Shapes
/// Input `(N, 1, D1, D2, D3)` with each `Di` a multiple of 8 (the paper
/// uses 64×64×32); output `(N, n_class, D1, D2, D3)` in `[0, 1]`.
/// [`crate::SegmentationModel::try_forward_t`] checks this and errs instead
/// of letting libtorch panic.
#[derive(Debug)]
pub struct UNet3d {
    down: [DownTransition; 4],
    up: [UpTransition; 3],
    final_conv: nn::Conv3D,
    config: UNet3dConfig,
}

impl UNet3d {
    /// Builds the network under `p` (usually the var store's root). Config
    /// values are not validated here; [`crate::SegmentationModel::new`]
    /// validates them.
    pub fn new(p: &nn::Path, config: &UNet3dConfig) -> Self {
        let encoder = Encoder::new(p, config);
        Self::with_encoder(p, config, encoder)
    }

    fn with_encoder(p: &nn::Path, config: &UNet3dConfig, encoder: Encoder) -> Self {
        let spec = spec(config);
        let base = config.base_width;
        // (name, channels of the deeper features = transposed conv width, depth)
        let up_specs = [
            ("up_tr256", 16 * base, 2u32),
            ("up_tr128", 8 * base, 1),
            ("up_tr64", 4 * base, 0),
        ];
        let up = up_specs.map(|(name, channels, depth)| {
            let up_p = p / name;
            let up_conv = conv_transpose3d(&up_p / "up_conv", channels, channels, 2, 2);
            // The official `inChans + outChans // 2`: upsampled plus skip.
            let ops = make_n_conv(up_p, channels + channels / 2, depth, true, base, spec);
            UpTransition { up_conv, ops }
        });
        let final_conv = conv3d(
            p / "out_tr" / "final_conv",
            2 * base,
            config.n_class,
            1,
            1,
            0,
        );
        Self {
            down: encoder.down,
            up,
            final_conv,
            config: *config,
        }
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &UNet3dConfig {
        &self.config
    }

    /// The deepest encoder features (the official `out512`, after level 3).
    ///
    /// # Shapes
    /// `(N, 1, D1, D2, D3)` → `(N, 16·base_width, D1/8, D2/8, D3/8)`.
    pub fn encode_t(&self, xs: &Tensor, train: bool) -> Tensor {
        encode(&self.down, xs, train).0
    }
}

impl ModuleT for UNet3d {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let (deepest, skips) = encode(&self.down, xs, train);
        let [skip64, skip128, skip256] = skips;
        let up256 = self.up[0].forward_t(&deepest, &skip256, train);
        let up128 = self.up[1].forward_t(&up256, &skip128, train);
        let up64 = self.up[2].forward_t(&up128, &skip64, train);
        up64.apply(&self.final_conv).sigmoid()
    }
}

/// The U-Net's encoder alone, for classification: only the `down_tr*`
/// variables exist.
#[derive(Debug)]
pub(crate) struct Encoder {
    down: [DownTransition; 4],
}

impl Encoder {
    pub(crate) fn new(p: &nn::Path, config: &UNet3dConfig) -> Self {
        let spec = spec(config);
        let base = config.base_width;
        let in_channels = [1, 2 * base, 4 * base, 8 * base];
        let down = std::array::from_fn(|depth| DownTransition {
            ops: make_n_conv(
                p / ENCODER_MODULES[depth],
                in_channels[depth],
                depth as u32,
                false,
                base,
                spec,
            ),
            pool: depth < 3,
        });
        Self { down }
    }

    /// Deepest features, `(N, 16·base_width, D1/8, D2/8, D3/8)`.
    pub(crate) fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        encode(&self.down, xs, train).0
    }
}

/// Runs the encoder; returns the deepest features and the three skips
/// before pooling (shallowest first).
fn encode(down: &[DownTransition; 4], xs: &Tensor, train: bool) -> (Tensor, [Tensor; 3]) {
    let (out64, skip64) = down[0].forward_t(xs, train);
    let (out128, skip128) = down[1].forward_t(&out64, train);
    let (out256, skip256) = down[2].forward_t(&out128, train);
    let (out512, _) = down[3].forward_t(&out256, train);
    (out512, [skip64, skip128, skip256])
}

fn spec(config: &UNet3dConfig) -> LuConvSpec {
    LuConvSpec {
        kernel: 3,
        activation: config.activation,
        batch_norm: Some(config.batch_norm),
        activation_name: "activation",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn trainable_count(vs: &nn::VarStore) -> i64 {
        vs.trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    #[test]
    fn paper_network_has_the_official_parameter_count() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = UNet3d::new(&vs.root(), &UNet3dConfig::genesis_chest_ct());
        assert_eq!(trainable_count(&vs), 19_073_665);
    }

    #[test]
    fn names_follow_the_official_state_dict() {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = UNet3dConfig {
            base_width: 4,
            ..UNet3dConfig::genesis_chest_ct()
        };
        let _net = UNet3d::new(&vs.root(), &config);
        let variables = vs.variables();
        // 14 LUConvs × 7 entries (conv weight and bias, batch norm weight,
        // bias, running mean, running var, batch count), 3 transposed convs
        // × 2, the output conv × 2: PyTorch's 106 state dict entries.
        assert_eq!(variables.len(), 14 * 7 + 3 * 2 + 2);
        for (name, shape) in [
            ("down_tr64.ops.0.conv1.weight", vec![4, 1, 3, 3, 3]),
            ("down_tr64.ops.1.conv1.weight", vec![8, 4, 3, 3, 3]),
            ("down_tr512.ops.1.bn1.running_var", vec![64]),
            ("down_tr512.ops.1.bn1.num_batches_tracked", vec![]),
            ("up_tr256.up_conv.weight", vec![64, 64, 2, 2, 2]),
            ("up_tr256.ops.0.conv1.weight", vec![32, 96, 3, 3, 3]),
            ("up_tr64.ops.1.bn1.weight", vec![8]),
            ("out_tr.final_conv.weight", vec![1, 8, 1, 1, 1]),
            ("out_tr.final_conv.bias", vec![1]),
        ] {
            let tensor = variables.get(name).unwrap_or_else(|| panic!("no {name}"));
            assert_eq!(tensor.size(), shape, "{name}");
        }
        assert_eq!(
            variables["down_tr64.ops.0.bn1.num_batches_tracked"].kind(),
            Kind::Int64
        );
    }

    #[test]
    fn forward_keeps_the_spatial_shape_and_outputs_probabilities() {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = UNet3dConfig {
            n_class: 3,
            base_width: 4,
            ..UNet3dConfig::genesis_chest_ct()
        };
        let net = UNet3d::new(&vs.root(), &config);
        let xs = Tensor::randn([2, 1, 16, 16, 8], (Kind::Float, Device::Cpu));
        let ys = net.forward_t(&xs, true);
        assert_eq!(ys.size(), [2, 3, 16, 16, 8]);
        assert!(ys.min().double_value(&[]) >= 0.0);
        assert!(ys.max().double_value(&[]) <= 1.0);
        let features = net.encode_t(&xs, false);
        assert_eq!(features.size(), [2, 64, 2, 2, 1]);
    }
}
