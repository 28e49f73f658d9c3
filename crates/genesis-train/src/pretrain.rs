//! Self-supervised pretraining: restore cubes from their Models Genesis
//! transformations (Zhou et al., MICCAI 2019), MSE loss.

use std::sync::Arc;

use genesis_models::SegmentationModel;
use tch::nn;

use crate::config::{PretrainConfig, to_toml};
use crate::data::{
    EpochPlan, RestorationSource, StackKind, StackSet, VALID_SEED_OFFSET, pretrain_stacks,
};
use crate::engine::{
    LoopSpec, Net, Objective, RunOptions, RunSummary, run_loop, save_config, seeded,
};
use crate::{Error, Result};

/// Pretrains a network as `config` says, writing everything into
/// `config.run_dir`; with `options.resume`, continues from its `last`
/// checkpoint (bit-exactly on CPU).
pub fn pretrain(config: &PretrainConfig, options: &RunOptions) -> Result<RunSummary> {
    config.validate()?;
    if config.model.n_class != 1 {
        return Err(Error::Config(format!(
            "pretraining restores one channel: model.n_class must be 1, got {}",
            config.model.n_class
        )));
    }
    let device = genesis_models::parse_device(&config.device)?;
    let train_cubes = StackSet::open(
        &pretrain_stacks(&config.data, config.scale, &config.train_folds, "training")?,
        StackKind::Cubes,
    )?;
    let valid_cubes = StackSet::open(
        &pretrain_stacks(
            &config.data,
            config.scale,
            &config.valid_folds,
            "validation",
        )?,
        StackKind::Cubes,
    )?;
    let shape = train_cubes.shape();
    if valid_cubes.shape() != shape {
        return Err(Error::data(
            &config.data,
            format!(
                "training cubes are {shape:?} but validation cubes are {:?}",
                valid_cubes.shape()
            ),
        ));
    }
    check_cube_shape(shape, config.model.spatial_multiple())?;
    config.transforms.validate(shape)?;
    let train_steps = EpochPlan::steps(
        train_cubes.len(),
        config.batch_size,
        true,
        config.steps_per_epoch,
    );
    let valid_steps = EpochPlan::steps(
        valid_cubes.len(),
        config.batch_size,
        true,
        config.valid_steps,
    );
    for (steps, cubes, role) in [
        (train_steps, &train_cubes, "training"),
        (valid_steps, &valid_cubes, "validation"),
    ] {
        if steps == 0 {
            return Err(Error::data(
                &config.data,
                format!(
                    "{} {role} cubes do not fill one batch of {}",
                    cubes.len(),
                    config.batch_size
                ),
            ));
        }
    }

    let config_toml = to_toml(config)?;
    save_config(&config.run_dir, &config_toml, options)?;
    if !options.quiet {
        println!("resolved configuration:\n{config_toml}");
        println!(
            "pretraining on {} training cubes ({} steps of {}) and {} validation cubes ({} steps), cubes {:?}, device {:?}",
            train_cubes.len(),
            train_steps,
            config.batch_size,
            valid_cubes.len(),
            valid_steps,
            shape,
            device
        );
    }

    let vs = nn::VarStore::new(device);
    let model = seeded(config.seed as i64, || {
        SegmentationModel::new(&vs.root(), &config.model)
    })?;
    let train = Arc::new(RestorationSource {
        cubes: train_cubes,
        transforms: config.transforms,
        seed: config.seed,
    });
    let valid = Arc::new(RestorationSource {
        cubes: valid_cubes,
        transforms: config.transforms,
        seed: config.seed.wrapping_add(VALID_SEED_OFFSET),
    });
    let spec = LoopSpec {
        run_dir: config.run_dir.clone(),
        epochs: config.epochs,
        patience: config.patience,
        batch_size: config.batch_size,
        optimizer: config.optimizer.clone(),
        seed: config.seed,
        device,
        queue_depth: config.queue_depth,
        train_steps,
        valid_steps,
        objective: Objective::Restoration,
        sample_every: config.sample_every,
        config_toml,
    };
    run_loop(&spec, &vs, &Net::Segmentation(model), train, valid, options)
}

/// Each side of the cube must be a multiple of what the network downsamples by.
pub(crate) fn check_cube_shape(shape: [usize; 3], multiple: i64) -> Result<()> {
    if shape.iter().any(|&s| s == 0 || (s as i64) % multiple != 0) {
        return Err(Error::Config(format!(
            "cubes of {shape:?} do not fit the network: each side must be a multiple of {multiple}"
        )));
    }
    Ok(())
}
