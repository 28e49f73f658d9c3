//! The V-Net: Milletari, Navab and Ahmadi, "V-Net: Fully Convolutional
//! Neural Networks for Volumetric Medical Image Segmentation", 3DV 2016.
//!
//! Module names follow the widely used PyTorch port (`mattmacy/vnet.pytorch`):
//! `in_tr`, `down_tr32` … `down_tr256`, `up_tr256` … `up_tr32`, with
//! `down_conv`/`up_conv`, `bn1`, `relu1`, `ops.<i>.{conv1,bn1,relu1}` and
//! `relu2` inside a stage, and `out_tr.final_conv` as in the U-Net. The stage
//! names keep the paper's widths whatever `base_width` is.
//!
//! Stage layout, with `w = base_width` (16 in the paper):
//! - `in_tr`: 5×5×5 conv 1 → w, batch norm, plus the input repeated w
//!   times, activation;
//! - `down_tr32/64/128/256`: 2×2×2 stride-2 conv doubling the channels,
//!   then a residual stage of 2, 3, 3, 3 convolutions (5×5×5);
//! - `up_tr256/128/64/32`: 2×2×2 stride-2 transposed conv halving the
//!   channels, concatenation with the encoder stage of the same resolution,
//!   then a residual stage of 3, 3, 2, 1 convolutions at 16w, 8w, 4w, 2w
//!   channels;
//! - `out_tr.final_conv`: 1×1×1 conv 2w → `n_class`, then a sigmoid (one
//!   class) or a softmax over the channels (several).

use tch::Tensor;
use tch::nn::{self, ModuleT};

use crate::config::VNetConfig;
use crate::layers::{Act, BatchNorm3d, LuConv, LuConvSpec, conv_transpose3d, conv3d};

/// Four stride-2 down-samplings: each spatial side must be a multiple of 16.
pub(crate) const SPATIAL_MULTIPLE: i64 = 16;

/// Names of the encoder's top-level modules, deepest last.
pub(crate) const ENCODER_MODULES: [&str; 5] = [
    "in_tr",
    "down_tr32",
    "down_tr64",
    "down_tr128",
    "down_tr256",
];

/// Convolutions in the residual stages of the encoder after `in_tr`.
const DOWN_CONVS: [usize; 4] = [2, 3, 3, 3];
/// Convolutions in the residual stages of the decoder, deepest first.
const UP_CONVS: [usize; 4] = [3, 3, 2, 1];
/// Decoder stage names, deepest first.
const UP_MODULES: [&str; 4] = ["up_tr256", "up_tr128", "up_tr64", "up_tr32"];

fn spec(config: &VNetConfig) -> LuConvSpec {
    LuConvSpec {
        kernel: 5,
        activation: config.activation,
        batch_norm: config.use_batch_norm.then_some(config.batch_norm),
        activation_name: "relu1",
    }
}

fn batch_norm(p: nn::Path, channels: i64, config: &VNetConfig) -> Option<BatchNorm3d> {
    config
        .use_batch_norm
        .then(|| BatchNorm3d::new(p, channels, config.batch_norm))
}

fn apply_bn(xs: Tensor, bn: &Option<BatchNorm3d>, train: bool) -> Tensor {
    match bn {
        Some(bn) => xs.apply_t(bn, train),
        None => xs,
    }
}

/// `conv1` → `bn1` → `+ input repeated` → `relu1`.
#[derive(Debug)]
struct InputTransition {
    conv1: nn::Conv3D,
    bn1: Option<BatchNorm3d>,
    relu1: Act,
    width: i64,
}

impl InputTransition {
    fn new(p: nn::Path, config: &VNetConfig) -> Self {
        let width = config.base_width;
        Self {
            conv1: conv3d(&p / "conv1", 1, width, 5, 1, 2),
            bn1: batch_norm(&p / "bn1", width, config),
            relu1: Act::new(&p / "relu1", width, config.activation),
            width,
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let out = apply_bn(xs.apply(&self.conv1), &self.bn1, train);
        let repeated = xs.repeat([1, self.width, 1, 1, 1]);
        self.relu1.forward(&(out + repeated))
    }
}

/// `down_conv` → `bn1` → `relu1` → [dropout] → `ops` → `+` → `relu2`.
#[derive(Debug)]
struct DownTransition {
    down_conv: nn::Conv3D,
    bn1: Option<BatchNorm3d>,
    relu1: Act,
    ops: Vec<LuConv>,
    relu2: Act,
    dropout: f64,
}

impl DownTransition {
    fn new(
        p: nn::Path,
        in_channels: i64,
        n_convs: usize,
        dropout: f64,
        config: &VNetConfig,
    ) -> Self {
        let out_channels = 2 * in_channels;
        let ops_p = &p / "ops";
        Self {
            down_conv: conv3d(&p / "down_conv", in_channels, out_channels, 2, 2, 0),
            bn1: batch_norm(&p / "bn1", out_channels, config),
            relu1: Act::new(&p / "relu1", out_channels, config.activation),
            ops: (0..n_convs)
                .map(|i| LuConv::new(&ops_p / i, out_channels, out_channels, spec(config)))
                .collect(),
            relu2: Act::new(&p / "relu2", out_channels, config.activation),
            dropout,
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let down = self
            .relu1
            .forward(&apply_bn(xs.apply(&self.down_conv), &self.bn1, train));
        let mut out = feature_dropout(&down, self.dropout, train);
        for op in &self.ops {
            out = op.forward_t(&out, train);
        }
        self.relu2.forward(&(out + down))
    }
}

/// [dropout] `up_conv` → `bn1` → `relu1` → concat skip → `ops` → `+` →
/// `relu2`.
#[derive(Debug)]
struct UpTransition {
    up_conv: nn::ConvTranspose3D,
    bn1: Option<BatchNorm3d>,
    relu1: Act,
    ops: Vec<LuConv>,
    relu2: Act,
    dropout: f64,
}

impl UpTransition {
    /// `in_channels` come from below; the stage works at `out_channels`,
    /// half of them upsampled and half from the skip.
    fn new(
        p: nn::Path,
        in_channels: i64,
        out_channels: i64,
        n_convs: usize,
        dropout: f64,
        config: &VNetConfig,
    ) -> Self {
        let half = out_channels / 2;
        let ops_p = &p / "ops";
        Self {
            up_conv: conv_transpose3d(&p / "up_conv", in_channels, half, 2, 2),
            bn1: batch_norm(&p / "bn1", half, config),
            relu1: Act::new(&p / "relu1", half, config.activation),
            ops: (0..n_convs)
                .map(|i| LuConv::new(&ops_p / i, out_channels, out_channels, spec(config)))
                .collect(),
            relu2: Act::new(&p / "relu2", out_channels, config.activation),
            dropout,
        }
    }

    fn forward_t(&self, xs: &Tensor, skip: &Tensor, train: bool) -> Tensor {
        let xs = feature_dropout(xs, self.dropout, train);
        let skip = feature_dropout(skip, self.dropout, train);
        let up = self
            .relu1
            .forward(&apply_bn(xs.apply(&self.up_conv), &self.bn1, train));
        let concat = Tensor::cat(&[&up, &skip], 1);
        let mut out = concat.shallow_clone();
        for op in &self.ops {
            out = op.forward_t(&out, train);
        }
        self.relu2.forward(&(out + concat))
    }
}

fn feature_dropout(xs: &Tensor, p: f64, train: bool) -> Tensor {
    if p > 0.0 && train {
        xs.feature_dropout(p, train)
    } else {
        xs.shallow_clone()
    }
}

/// The V-Net encoder (`in_tr` and the four `down_tr*` stages).
#[derive(Debug)]
pub(crate) struct Encoder {
    in_tr: InputTransition,
    down: [DownTransition; 4],
}

impl Encoder {
    pub(crate) fn new(p: &nn::Path, config: &VNetConfig) -> Self {
        let width = config.base_width;
        let in_tr = InputTransition::new(p / ENCODER_MODULES[0], config);
        let down = std::array::from_fn(|i| {
            // Dropout in the two deepest stages, as in the PyTorch port.
            let dropout = if i >= 2 { config.dropout } else { 0.0 };
            DownTransition::new(
                p / ENCODER_MODULES[i + 1],
                width << i,
                DOWN_CONVS[i],
                dropout,
                config,
            )
        });
        Self { in_tr, down }
    }

    /// Every stage's output, shallowest (full resolution) first.
    fn stages(&self, xs: &Tensor, train: bool) -> [Tensor; 5] {
        let s0 = self.in_tr.forward_t(xs, train);
        let s1 = self.down[0].forward_t(&s0, train);
        let s2 = self.down[1].forward_t(&s1, train);
        let s3 = self.down[2].forward_t(&s2, train);
        let s4 = self.down[3].forward_t(&s3, train);
        [s0, s1, s2, s3, s4]
    }

    /// Deepest features, `(N, 16·base_width, D1/16, D2/16, D3/16)`.
    pub(crate) fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let [.., deepest] = self.stages(xs, train);
        deepest
    }
}

/// The V-Net, usable wherever the U-Net is (same input and output
/// conventions).
///
/// # Shapes
/// Input `(N, 1, D1, D2, D3)` with each `Di` a multiple of 16; output
/// `(N, n_class, D1, D2, D3)`: sigmoid probabilities when `n_class == 1`,
/// softmax over the channel axis otherwise.
#[derive(Debug)]
pub struct VNet {
    encoder: Encoder,
    up: [UpTransition; 4],
    final_conv: nn::Conv3D,
    config: VNetConfig,
}

impl VNet {
    /// Builds the network under `p`. Config values are not validated here;
    /// [`crate::SegmentationModel::new`] validates them.
    pub fn new(p: &nn::Path, config: &VNetConfig) -> Self {
        let width = config.base_width;
        let encoder = Encoder::new(p, config);
        // Stage width, deepest first: 16w, 8w, 4w, 2w; the input of each
        // comes from the stage below (16w for the first).
        let up = std::array::from_fn(|i| {
            let out_channels = (16 * width) >> i;
            let in_channels = if i == 0 { 16 * width } else { out_channels * 2 };
            let dropout = if i < 2 { config.dropout } else { 0.0 };
            UpTransition::new(
                p / UP_MODULES[i],
                in_channels,
                out_channels,
                UP_CONVS[i],
                dropout,
                config,
            )
        });
        let final_conv = conv3d(
            p / "out_tr" / "final_conv",
            2 * width,
            config.n_class,
            1,
            1,
            0,
        );
        Self {
            encoder,
            up,
            final_conv,
            config: *config,
        }
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &VNetConfig {
        &self.config
    }

    /// The deepest encoder features.
    ///
    /// # Shapes
    /// `(N, 1, D1, D2, D3)` → `(N, 16·base_width, D1/16, D2/16, D3/16)`.
    pub fn encode_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.encoder.forward_t(xs, train)
    }
}

impl ModuleT for VNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let [s0, s1, s2, s3, s4] = self.encoder.stages(xs, train);
        let out = self.up[0].forward_t(&s4, &s3, train);
        let out = self.up[1].forward_t(&out, &s2, train);
        let out = self.up[2].forward_t(&out, &s1, train);
        let out = self.up[3].forward_t(&out, &s0, train);
        let logits = out.apply(&self.final_conv);
        if self.config.n_class == 1 {
            logits.sigmoid()
        } else {
            logits.softmax(1, logits.kind())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Activation;
    use tch::{Device, Kind};

    fn small(n_class: i64) -> VNetConfig {
        VNetConfig {
            n_class,
            base_width: 4,
            dropout: 0.2,
            ..VNetConfig::paper()
        }
    }

    #[test]
    fn stage_layout_matches_the_paper() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = VNet::new(&vs.root(), &small(1));
        let variables = vs.variables();
        let convs = |prefix: &str| {
            variables
                .keys()
                .filter(|k| k.starts_with(prefix) && k.ends_with(".conv1.weight"))
                .count()
        };
        assert_eq!(convs("in_tr."), 1);
        assert_eq!(
            [
                convs("down_tr32."),
                convs("down_tr64."),
                convs("down_tr128."),
                convs("down_tr256.")
            ],
            [2, 3, 3, 3]
        );
        assert_eq!(
            [
                convs("up_tr256."),
                convs("up_tr128."),
                convs("up_tr64."),
                convs("up_tr32.")
            ],
            [3, 3, 2, 1]
        );
        assert_eq!(
            variables["down_tr256.down_conv.weight"].size(),
            [64, 32, 2, 2, 2]
        );
        assert_eq!(
            variables["down_tr256.ops.0.conv1.weight"].size(),
            [64, 64, 5, 5, 5]
        );
        assert_eq!(
            variables["up_tr256.up_conv.weight"].size(),
            [64, 32, 2, 2, 2]
        );
        assert_eq!(
            variables["up_tr256.ops.2.conv1.weight"].size(),
            [64, 64, 5, 5, 5]
        );
        assert_eq!(
            variables["up_tr32.ops.0.conv1.weight"].size(),
            [8, 8, 5, 5, 5]
        );
        assert_eq!(
            variables["out_tr.final_conv.weight"].size(),
            [1, 8, 1, 1, 1]
        );
        assert_eq!(variables["in_tr.relu1.weight"].size(), [4]);
    }

    #[test]
    fn forward_shapes_and_output_activations() {
        let xs = Tensor::randn([2, 1, 16, 16, 16], (Kind::Float, Device::Cpu));
        let vs = nn::VarStore::new(Device::Cpu);
        let binary = VNet::new(&vs.root(), &small(1));
        let ys = binary.forward_t(&xs, true);
        assert_eq!(ys.size(), [2, 1, 16, 16, 16]);
        assert!(ys.min().double_value(&[]) >= 0.0 && ys.max().double_value(&[]) <= 1.0);
        assert_eq!(binary.encode_t(&xs, false).size(), [2, 64, 1, 1, 1]);

        let vs = nn::VarStore::new(Device::Cpu);
        let multi = VNet::new(&vs.root(), &small(3));
        let ys = tch::no_grad(|| multi.forward_t(&xs, false));
        assert_eq!(ys.size(), [2, 3, 16, 16, 16]);
        let sums = ys.sum_dim_intlist([1].as_slice(), false, Kind::Float);
        assert!((sums - 1.0).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn batch_norm_can_be_switched_off() {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = VNetConfig {
            use_batch_norm: false,
            activation: Activation::Relu,
            ..small(1)
        };
        let net = VNet::new(&vs.root(), &config);
        assert!(vs.variables().keys().all(|k| !k.contains("bn1")));
        // Without batch norm a batch of one voxel-per-channel is fine.
        let xs = Tensor::randn([1, 1, 16, 16, 16], (Kind::Float, Device::Cpu));
        assert_eq!(net.forward_t(&xs, true).size(), [1, 1, 16, 16, 16]);
    }
}
