//! Building blocks shared by the U-Net and the V-Net, named and initialised
//! as PyTorch names and initialises them.

use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use crate::config::{Activation, BatchNormMode};

/// PyTorch's default initialisation of conv and linear layers
/// (`kaiming_uniform_(a=sqrt(5))` for the weight, and the same bound for the
/// bias) is uniform in `±1/sqrt(fan_in)`.
fn pytorch_uniform(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// `nn.Conv3d(in, out, kernel, stride, padding)` with bias.
pub(crate) fn conv3d(
    p: nn::Path,
    in_channels: i64,
    out_channels: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
) -> nn::Conv3D {
    let init = pytorch_uniform(in_channels * kernel * kernel * kernel);
    let config = nn::ConvConfig {
        stride,
        padding,
        ws_init: init,
        bs_init: init,
        ..Default::default()
    };
    nn::conv3d(p, in_channels, out_channels, kernel, config)
}

/// `nn.ConvTranspose3d(in, out, kernel, stride)` with bias; PyTorch takes
/// the fan-in from the weight's second axis, the output channels.
pub(crate) fn conv_transpose3d(
    p: nn::Path,
    in_channels: i64,
    out_channels: i64,
    kernel: i64,
    stride: i64,
) -> nn::ConvTranspose3D {
    let init = pytorch_uniform(out_channels * kernel * kernel * kernel);
    let config = nn::ConvTransposeConfig {
        stride,
        ws_init: init,
        bs_init: init,
        ..Default::default()
    };
    nn::conv_transpose3d(p, in_channels, out_channels, kernel, config)
}

/// `nn.Linear(in, out)`.
pub(crate) fn linear(p: nn::Path, in_features: i64, out_features: i64) -> nn::Linear {
    let init = pytorch_uniform(in_features);
    let config = nn::LinearConfig {
        ws_init: init,
        bs_init: Some(init),
        bias: true,
    };
    nn::linear(p, in_features, out_features, config)
}

/// A 3D batch norm with PyTorch's parameters and buffers, including the
/// `num_batches_tracked` counter (an `int64` scalar) that `tch` lacks but
/// PyTorch's `load_state_dict(strict=True)` requires.
#[derive(Debug)]
pub(crate) struct BatchNorm3d {
    inner: nn::BatchNorm,
    num_batches_tracked: Tensor,
    mode: BatchNormMode,
}

impl BatchNorm3d {
    pub(crate) fn new(p: nn::Path, channels: i64, mode: BatchNormMode) -> Self {
        let config = nn::BatchNormConfig {
            ws_init: nn::Init::Const(1.0),
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let inner = nn::batch_norm3d(&p, channels, config);
        let num_batches_tracked = p.add(
            "num_batches_tracked",
            Tensor::zeros([], (Kind::Int64, p.device())),
            false,
        );
        Self {
            inner,
            num_batches_tracked,
            mode,
        }
    }
}

impl ModuleT for BatchNorm3d {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self.mode {
            // `ContBatchNorm3d` calls `F.batch_norm(training=True)` directly, so
            // it never counts batches.
            BatchNormMode::Batch => self.inner.forward_t(xs, true),
            BatchNormMode::Running => {
                if train {
                    // `nn.BatchNorm3d` counts the batches it trains on.
                    let mut counter = self.num_batches_tracked.shallow_clone();
                    tch::no_grad(|| {
                        let _ = counter.g_add_scalar_(1);
                    });
                }
                self.inner.forward_t(xs, train)
            }
        }
    }
}

/// The non-linearity, with its PReLU slopes when it has any.
#[derive(Debug)]
pub(crate) struct Act {
    activation: Activation,
    prelu_weight: Option<Tensor>,
}

impl Act {
    /// `p` is the module's own path (`….activation` or `….relu1`).
    pub(crate) fn new(p: nn::Path, channels: i64, activation: Activation) -> Self {
        let prelu_weight = match activation {
            Activation::Prelu => Some(p.var("weight", &[channels], nn::Init::Const(0.25))),
            Activation::Relu | Activation::Elu => None,
        };
        Self {
            activation,
            prelu_weight,
        }
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Tensor {
        match (&self.activation, &self.prelu_weight) {
            (Activation::Prelu, Some(weight)) => xs.prelu(weight),
            (Activation::Elu, _) => xs.elu(),
            _ => xs.relu(),
        }
    }
}

/// The official `LUConv`: `conv1` (3×3×3, padding 1) → `bn1` →
/// `activation`. The V-Net uses a 5×5×5 variant with the activation named
/// `relu1` and optional batch norm.
#[derive(Debug)]
pub(crate) struct LuConv {
    conv1: nn::Conv3D,
    bn1: Option<BatchNorm3d>,
    activation: Act,
}

/// Options of an [`LuConv`] that differ between the U-Net and the V-Net.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LuConvSpec {
    pub(crate) kernel: i64,
    pub(crate) activation: Activation,
    pub(crate) batch_norm: Option<BatchNormMode>,
    /// Sub-path name of the activation module.
    pub(crate) activation_name: &'static str,
}

impl LuConv {
    pub(crate) fn new(p: nn::Path, in_channels: i64, out_channels: i64, spec: LuConvSpec) -> Self {
        let conv1 = conv3d(
            &p / "conv1",
            in_channels,
            out_channels,
            spec.kernel,
            1,
            spec.kernel / 2,
        );
        let bn1 = spec
            .batch_norm
            .map(|mode| BatchNorm3d::new(&p / "bn1", out_channels, mode));
        let activation = Act::new(&p / spec.activation_name, out_channels, spec.activation);
        Self {
            conv1,
            bn1,
            activation,
        }
    }
}

impl ModuleT for LuConv {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs.apply(&self.conv1);
        let ys = match &self.bn1 {
            Some(bn) => ys.apply_t(bn, train),
            None => ys,
        };
        self.activation.forward(&ys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_mode_normalises_with_batch_statistics_in_eval() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let bn = BatchNorm3d::new(vs.root() / "bn", 2, BatchNormMode::Batch);
        let xs = Tensor::arange(2 * 2 * 8, (Kind::Float, tch::Device::Cpu)).view([2, 2, 2, 2, 2])
            * 3.0
            + 5.0;
        let ys = tch::no_grad(|| bn.forward_t(&xs, false));
        // Batch statistics make every channel zero-mean, even in eval.
        let mean = ys.mean_dim([0, 2, 3, 4].as_slice(), false, Kind::Float);
        assert!(mean.abs().max().double_value(&[]) < 1e-5);
        // And the running statistics moved (momentum 0.1 from zero).
        assert!(bn.inner.running_mean.abs().min().double_value(&[]) > 0.1);
        assert_eq!(bn.num_batches_tracked.int64_value(&[]), 0);
    }

    #[test]
    fn running_mode_uses_running_statistics_in_eval() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let bn = BatchNorm3d::new(vs.root() / "bn", 2, BatchNormMode::Running);
        let xs = Tensor::ones([2, 2, 2, 2, 2], (Kind::Float, tch::Device::Cpu)) * 4.0;
        // Running mean 0, var 1: eval is (x - 0) / sqrt(1 + eps).
        let ys = tch::no_grad(|| bn.forward_t(&xs, false));
        assert!((ys.mean(Kind::Float).double_value(&[]) - 4.0).abs() < 1e-3);
        let _ = bn.forward_t(&xs, true);
        assert_eq!(bn.num_batches_tracked.int64_value(&[]), 1);
    }

    #[test]
    fn prelu_names_its_slopes_weight() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let spec = LuConvSpec {
            kernel: 3,
            activation: Activation::Prelu,
            batch_norm: Some(BatchNormMode::Batch),
            activation_name: "activation",
        };
        let _block = LuConv::new(vs.root() / "block", 1, 4, spec);
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "block.activation.weight",
                "block.bn1.bias",
                "block.bn1.num_batches_tracked",
                "block.bn1.running_mean",
                "block.bn1.running_var",
                "block.bn1.weight",
                "block.conv1.bias",
                "block.conv1.weight",
            ]
        );
    }
}
