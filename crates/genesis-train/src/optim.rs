//! SGD with momentum and Adam over a `VarStore`'s trainable variables.
//!
//! Written here rather than taken from `tch::nn::Optimizer` because that one
//! hides its state (momentum buffers, Adam moments), and an exact resume needs
//! that state saved and restored. The update rules are PyTorch's
//! (`torch.optim.SGD` with dampening 0, `torch.optim.Adam` with L2 weight
//! decay), applied under `no_grad` to each variable in place.

use tch::{Tensor, nn};

use crate::config::{OptimizerConfig, OptimizerKind};
use crate::{Error, Result};

/// One trainable variable and its optimiser buffers.
#[derive(Debug)]
struct Slot {
    name: String,
    var: Tensor,
    /// SGD momentum buffer or Adam first moment.
    first: Tensor,
    /// Adam second moment (undefined for SGD).
    second: Option<Tensor>,
}

/// An optimiser whose whole state is a set of named tensors plus a step count.
#[derive(Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    slots: Vec<Slot>,
    steps: u64,
}

impl Optimizer {
    /// An optimiser over every trainable variable of `vs` (sorted by name),
    /// with zeroed buffers.
    pub fn new(vs: &nn::VarStore, config: &OptimizerConfig) -> Result<Self> {
        config.validate()?;
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = named
            .into_iter()
            .map(|(name, var)| {
                let first = tch::no_grad(|| var.zeros_like());
                let second =
                    (config.kind == OptimizerKind::Adam).then(|| tch::no_grad(|| var.zeros_like()));
                Slot {
                    name,
                    var,
                    first,
                    second,
                }
            })
            .collect();
        Ok(Self {
            config: config.clone(),
            slots,
            steps: 0,
        })
    }

    /// Number of updates done.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Clears the gradients of every variable.
    pub fn zero_grad(&mut self) {
        for slot in &mut self.slots {
            slot.var.zero_grad();
        }
    }

    /// One update with learning rate `lr` from the current gradients.
    /// Variables without a gradient are left alone (as PyTorch does).
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.steps += 1;
        let c = &self.config;
        let t = self.steps as f64;
        tch::no_grad(|| -> Result<()> {
            for slot in &mut self.slots {
                let grad = slot.var.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = if c.weight_decay != 0.0 {
                    grad.f_add(&(&slot.var * c.weight_decay))?
                } else {
                    grad
                };
                match c.kind {
                    OptimizerKind::Sgd => {
                        let update = if c.momentum != 0.0 {
                            // buf = momentum·buf + g (PyTorch sets buf = g on the first
                            // step, which is the same thing from a zero buffer).
                            let _ = slot.first.f_mul_scalar_(c.momentum)?;
                            let _ = slot.first.f_add_(&grad)?;
                            if c.nesterov {
                                grad.f_add(&(&slot.first * c.momentum))?
                            } else {
                                slot.first.shallow_clone()
                            }
                        } else {
                            grad
                        };
                        let _ = slot.var.f_sub_(&(update * lr))?;
                    }
                    OptimizerKind::Adam => {
                        let second = slot.second.as_mut().ok_or_else(|| {
                            Error::Config("adam state missing its second moment".into())
                        })?;
                        let _ = slot.first.f_mul_scalar_(c.beta1)?;
                        let _ = slot.first.f_add_(&(&grad * (1.0 - c.beta1)))?;
                        let _ = second.f_mul_scalar_(c.beta2)?;
                        let _ = second.f_add_(&(&grad * &grad * (1.0 - c.beta2)))?;
                        let bias1 = 1.0 - c.beta1.powf(t);
                        let bias2 = 1.0 - c.beta2.powf(t);
                        let denom = (second.f_sqrt()? / bias2.sqrt()).f_add_scalar(c.eps)?;
                        let _ = slot
                            .var
                            .f_sub_(&(slot.first.f_div(&denom)? * (lr / bias1)))?;
                    }
                }
            }
            Ok(())
        })
    }

    /// The state as named tensors (`optimizer.first.{var}`, `optimizer.second.{var}`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.slots.len() * 2);
        for slot in &self.slots {
            out.push((
                format!("optimizer.first.{}", slot.name),
                slot.first.shallow_clone(),
            ));
            if let Some(second) = &slot.second {
                out.push((
                    format!("optimizer.second.{}", slot.name),
                    second.shallow_clone(),
                ));
            }
        }
        out
    }

    /// Restores the state saved by [`Optimizer::state_tensors`] and the step count.
    pub fn load_state(
        &mut self,
        lookup: &dyn Fn(&str) -> Option<Tensor>,
        steps: u64,
    ) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for slot in &mut self.slots {
                let key = format!("optimizer.first.{}", slot.name);
                let saved = lookup(&key)
                    .ok_or_else(|| Error::Config(format!("checkpoint lacks `{key}`")))?;
                check_shape(&key, &slot.first, &saved)?;
                slot.first.f_copy_(&saved)?;
                if let Some(second) = &mut slot.second {
                    let key = format!("optimizer.second.{}", slot.name);
                    let saved = lookup(&key)
                        .ok_or_else(|| Error::Config(format!("checkpoint lacks `{key}`")))?;
                    check_shape(&key, second, &saved)?;
                    second.f_copy_(&saved)?;
                }
            }
            Ok(())
        })?;
        self.steps = steps;
        Ok(())
    }
}

fn check_shape(key: &str, expected: &Tensor, found: &Tensor) -> Result<()> {
    if expected.size() != found.size() {
        return Err(Error::Config(format!(
            "checkpoint `{key}` has shape {:?}, the model needs {:?}",
            found.size(),
            expected.size()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Minimises ½‖w − 3‖² and compares with the closed-form SGD/Adam trajectories.
    fn run(config: &OptimizerConfig, steps: usize) -> (Vec<f64>, Optimizer, nn::VarStore) {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().zeros("w", &[1]);
        let mut opt = Optimizer::new(&vs, config).unwrap();
        let mut values = Vec::new();
        for _ in 0..steps {
            opt.zero_grad();
            let loss = ((&w - 3.0).square() * 0.5).sum(Kind::Float);
            loss.backward();
            opt.step(config.lr).unwrap();
            values.push(w.double_value(&[0]));
        }
        (values, opt, vs)
    }

    #[test]
    fn sgd_momentum_matches_pytorch_recurrence() {
        let c = OptimizerConfig {
            lr: 0.1,
            ..OptimizerConfig::paper_pretrain()
        };
        let (values, _, _) = run(&c, 3);
        // Hand-computed: g = w − 3; buf = 0.9·buf + g; w −= 0.1·buf.
        let (mut w, mut buf) = (0.0f64, 0.0f64);
        for v in values {
            buf = 0.9 * buf + (w - 3.0);
            w -= 0.1 * buf;
            assert!((v - w).abs() < 1e-6, "{v} vs {w}");
        }
    }

    #[test]
    fn adam_matches_pytorch_recurrence() {
        let c = OptimizerConfig {
            lr: 0.1,
            ..OptimizerConfig::paper_finetune()
        };
        let (values, _, _) = run(&c, 4);
        let (mut w, mut m, mut v2) = (0.0f64, 0.0f64, 0.0f64);
        for (i, v) in values.into_iter().enumerate() {
            let t = (i + 1) as f64;
            let g = w - 3.0;
            m = 0.9 * m + 0.1 * g;
            v2 = 0.999 * v2 + 0.001 * g * g;
            let mh = m / (1.0 - 0.9f64.powf(t));
            let vh = v2 / (1.0 - 0.999f64.powf(t));
            w -= 0.1 * mh / (vh.sqrt() + 1e-8);
            assert!((v - w).abs() < 1e-5, "{v} vs {w}");
        }
    }

    #[test]
    fn state_round_trips() {
        let c = OptimizerConfig {
            lr: 0.1,
            ..OptimizerConfig::paper_finetune()
        };
        let (_, opt, _) = run(&c, 2);
        let saved: Vec<(String, Tensor)> = opt
            .state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        assert_eq!(saved.len(), 2);
        let vs = nn::VarStore::new(Device::Cpu);
        let _w = vs.root().zeros("w", &[1]);
        let mut fresh = Optimizer::new(&vs, &c).unwrap();
        let lookup = |k: &str| {
            saved
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, t)| t.shallow_clone())
        };
        fresh.load_state(&lookup, opt.steps()).unwrap();
        assert_eq!(fresh.steps(), 2);
        for ((_, a), (_, b)) in fresh.state_tensors().iter().zip(opt.state_tensors().iter()) {
            assert_eq!(a.double_value(&[0]), b.double_value(&[0]));
        }
        let empty = |_: &str| None;
        assert!(fresh.load_state(&empty, 0).is_err());
    }
}
