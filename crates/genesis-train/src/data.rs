//! Data: finding and memory-mapping the `.npy` stacks (or tiling volume
//! folders, see `volumes.rs`), turning item indices into batches, and a
//! background producer that prepares batches ahead of the model through a
//! bounded queue.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel, sync_channel};
use std::thread::JoinHandle;

use genesis_io::{NpyDtype, NpyStack};
use genesis_transforms::TransformConfig;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::volumes::{MemoryCubes, VolumeTiling, find_volume_folders, load_split};
use crate::{Error, Result};

/// Seed offset of validation pairs, so they differ from every training epoch's
/// yet are the same at every epoch.
pub(crate) const VALID_SEED_OFFSET: u64 = 0x5EED_0F7A_1D00;

/// What a [`StackSet`] holds, which decides the values it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StackKind {
    /// Pretraining cubes: float values in [0, 1], which the transforms assume.
    Cubes,
    /// Task images: float values (already normalised, not necessarily to [0, 1]).
    Images,
    /// Segmentation masks: values in [0, 1], of any element type.
    Masks,
}

impl StackKind {
    fn name(self) -> &'static str {
        match self {
            StackKind::Cubes => "pretraining cubes",
            StackKind::Images => "task images",
            StackKind::Masks => "segmentation masks",
        }
    }
}

/// Several stacks of equally shaped items seen as one indexed collection.
#[derive(Debug)]
pub(crate) struct StackSet {
    kind: StackKind,
    stacks: Vec<NpyStack>,
    /// `offsets[k]` is the global index of the first item of `stacks[k]`.
    offsets: Vec<usize>,
    len: usize,
    item_len: usize,
    shape: [usize; 3],
}

impl StackSet {
    /// Opens `paths`; every item must have the same shape, 3-D (`rows, cols,
    /// deps`) or 4-D with a leading channel of 1. Cubes and images must be stored as
    /// floats: an integer stack (CT in HU, 8-bit pictures) would reach the network
    /// unscaled.
    pub(crate) fn open(paths: &[PathBuf], kind: StackKind) -> Result<Self> {
        let mut stacks = Vec::with_capacity(paths.len());
        let mut offsets = Vec::with_capacity(paths.len());
        let mut len = 0;
        let mut shape: Option<[usize; 3]> = None;
        for path in paths {
            let stack = NpyStack::open(path)?;
            let float = matches!(stack.dtype(), NpyDtype::F32 | NpyDtype::F64);
            if kind != StackKind::Masks && !float {
                let scaled = match kind {
                    StackKind::Cubes => "scaled to [0, 1]",
                    _ => "already normalised",
                };
                return Err(Error::data(
                    path,
                    format!(
                        "values are {:?}; {} must be float32 or float64 {scaled} (for CT in \
                         HU: clip to [-1000, 1000], then (HU + 1000) / 2000)",
                        stack.dtype(),
                        kind.name()
                    ),
                ));
            }
            let this = cube_shape(path, stack.item_shape())?;
            match shape {
                Some(s) if s != this => {
                    return Err(Error::data(
                        path,
                        format!("items have shape {this:?} but the other stacks have {s:?}"),
                    ));
                }
                _ => shape = Some(this),
            }
            offsets.push(len);
            len += stack.len();
            stacks.push(stack);
        }
        let shape = shape.ok_or_else(|| Error::Config("no stack files given".into()))?;
        Ok(Self {
            kind,
            stacks,
            offsets,
            len,
            item_len: shape.iter().product(),
            shape,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn shape(&self) -> [usize; 3] {
        self.shape
    }

    pub(crate) fn item_len(&self) -> usize {
        self.item_len
    }

    /// Copies global item `index` into `out`. An item holding NaN or an infinite value,
    /// or for cubes and masks a value outside [0, 1], is an error naming its stack, item
    /// and voxel: training on NaN ends in a NaN loss, which reads like a diverged run,
    /// and a mask outside [0, 1] makes the Dice loss negative.
    pub(crate) fn read(&self, index: usize, out: &mut [f32]) -> Result<()> {
        let k = self
            .offsets
            .partition_point(|&o| o <= index)
            .saturating_sub(1);
        let stack = self.stacks.get(k).ok_or_else(|| {
            Error::Config(format!("item {index} out of range ({} items)", self.len))
        })?;
        let item = index - self.offsets[k];
        stack.read_item_into(item, out)?;
        let unit = self.kind != StackKind::Images;
        let bad = |v: &f32| !v.is_finite() || (unit && !(0.0..=1.0).contains(v));
        let Some(voxel) = out.iter().position(bad) else {
            return Ok(());
        };
        let value = out[voxel];
        let [row, col, dep] = voxel_at(voxel, self.shape);
        let (kind_of_value, rule) = if value.is_finite() {
            (
                "an out-of-range",
                format!("{} must lie in [0, 1]", self.kind.name()),
            )
        } else {
            (
                "a non-finite",
                "the data must hold finite values".to_string(),
            )
        };
        Err(Error::data(
            stack.path(),
            format!(
                "item {item} has {kind_of_value} value ({value}) at (row, col, dep) = \
                 ({row}, {col}, {dep}); {rule}"
            ),
        ))
    }

    /// Copies items `indices` into consecutive chunks of `out`, in parallel.
    pub(crate) fn read_many(&self, indices: &[usize], out: &mut [f32]) -> Result<()> {
        out.par_chunks_mut(self.item_len)
            .zip(indices.par_iter())
            .try_for_each(|(chunk, &i)| self.read(i, chunk))
    }
}

/// The 3-D position of flat index `index` in a C-order cube of `shape`.
pub(crate) fn voxel_at(index: usize, shape: [usize; 3]) -> [usize; 3] {
    let [_, cols, deps] = shape;
    [index / (cols * deps), index / deps % cols, index % deps]
}

/// Why `dir`, which is not a directory, cannot be the `what` asked for.
fn not_a_directory(dir: &Path, what: &str) -> String {
    if dir.exists() {
        format!("is a file; the {what} must be a directory")
    } else {
        format!("{what} not found")
    }
}

fn cube_shape(path: &Path, item_shape: &[usize]) -> Result<[usize; 3]> {
    match item_shape {
        [r, c, d] | [1, r, c, d] if *r > 0 && *c > 0 && *d > 0 => Ok([*r, *c, *d]),
        other => Err(Error::data(
            path,
            format!(
                "items have shape {other:?}; expected (rows, cols, deps) or (1, rows, cols, deps)"
            ),
        )),
    }
}

/// Finds `bat_{scale}_s_{rows}x{cols}x{deps}_{fold}.npy` in `dir`, whatever the cube shape.
pub(crate) fn find_fold_stack(dir: &Path, scale: usize, fold: usize) -> Result<Option<PathBuf>> {
    let prefix = format!("bat_{scale}_s_");
    let suffix = format!("_{fold}.npy");
    let found = list_matching(dir, |name| {
        name.strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(&suffix))
            .is_some_and(is_shape_token)
    })?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        many => Err(Error::data(
            dir,
            format!(
                "fold {fold} has stacks of several cube shapes: {}",
                names(many)
            ),
        )),
    }
}

/// The training and validation stacks of pretraining; missing folds are
/// skipped with a warning, but each side needs at least one.
pub(crate) fn pretrain_stacks(
    dir: &Path,
    scale: usize,
    folds: &[usize],
    role: &str,
) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::data(dir, not_a_directory(dir, "data directory")));
    }
    let mut paths = Vec::new();
    let mut missing = Vec::new();
    for &fold in folds {
        match find_fold_stack(dir, scale, fold)? {
            Some(p) => paths.push(p),
            None => missing.push(fold),
        }
    }
    if paths.is_empty() {
        return Err(Error::data(
            dir,
            format!(
                "no {role} stack bat_{scale}_s_<rows>x<cols>x<deps>_<fold>.npy for folds {folds:?} (check --scale and the fold lists)"
            ),
        ));
    }
    if !missing.is_empty() {
        eprintln!(
            "warning: {}: no {role} stack for folds {missing:?}",
            dir.display()
        );
    }
    Ok(paths)
}

/// Finds `{prefix}_{split}_{r}x{c}x{d}.npy` or `{prefix}_{split}.npy` in `dir`.
pub(crate) fn find_split_file(
    dir: &Path,
    prefix: &str,
    split: &str,
    extension: &str,
) -> Result<Option<PathBuf>> {
    let exact = format!("{prefix}_{split}.{extension}");
    let start = format!("{prefix}_{split}_");
    let dotted = format!(".{extension}");
    let found = list_matching(dir, |name| {
        name == exact
            || name
                .strip_prefix(&start)
                .and_then(|rest| rest.strip_suffix(&dotted))
                .is_some_and(is_shape_token)
    })?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        many => Err(Error::data(
            dir,
            format!(
                "several `{prefix}` files for split {split}: {}",
                names(many)
            ),
        )),
    }
}

fn is_shape_token(s: &str) -> bool {
    let parts: Vec<&str> = s.split('x').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn list_matching(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if let Some(name) = entry.file_name().to_str()
            && keep(name)
        {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

fn names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads 0/1 labels from `.npy` (any shape, one value per cube) or a CSV
/// (the last field of each record; a header line is skipped; fields may be
/// quoted; the delimiter is `,`, or `;` or a tab when the first line has no comma).
pub(crate) fn read_labels(path: &Path) -> Result<Vec<f32>> {
    let labels: Vec<f32> = if path.extension().is_some_and(|e| e == "csv") {
        let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let first_line = text.split(|&b| b == b'\n').next().unwrap_or_default();
        let delimiter = [b',', b';', b'\t']
            .into_iter()
            .find(|d| first_line.contains(d))
            .unwrap_or(b',');
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(delimiter)
            .from_reader(text.as_slice());
        let mut labels = Vec::new();
        for (index, record) in reader.records().enumerate() {
            let record = record.map_err(|e| Error::data(path, format!("not valid CSV: {e}")))?;
            let line = record.position().map_or(index as u64 + 1, |p| p.line());
            let Some(last) = record.iter().next_back().map(str::trim) else {
                continue;
            };
            if last.is_empty() && record.len() == 1 {
                continue;
            }
            match last.parse::<f32>() {
                Ok(v) => labels.push(v),
                Err(_) if index == 0 => {}
                Err(_) => {
                    return Err(Error::data(
                        path,
                        format!("line {line}: `{last}` is not a label"),
                    ));
                }
            }
        }
        labels
    } else {
        genesis_io::read_npy(path)?.iter().copied().collect()
    };
    if let Some(bad) = labels.iter().find(|&&v| v != 0.0 && v != 1.0) {
        return Err(Error::data(
            path,
            format!("labels must be 0 or 1, found {bad}"),
        ));
    }
    Ok(labels)
}

/// Produces the (input, target) values of a batch of items.
pub(crate) trait BatchSource: Send + Sync + std::fmt::Debug {
    /// Number of items.
    fn len(&self) -> usize;
    /// Shape of one input cube.
    fn shape(&self) -> [usize; 3];
    /// Target values per item (voxels, or 1 for a class label).
    fn target_len(&self) -> usize;
    /// Fills `inputs` and `targets` for items `indices`, overwriting every value (the
    /// producer hands it buffers of earlier batches); `first_position` is the
    /// position of the first of them in the epoch's order (transforms use it as
    /// the cube index of their random streams). `scratch` is a buffer kept between
    /// calls, for sources that need one.
    fn fill(
        &self,
        indices: &[usize],
        epoch: u64,
        first_position: usize,
        inputs: &mut [f32],
        targets: &mut [f32],
        scratch: &mut Vec<f32>,
    ) -> Result<()>;
}

/// Pretraining: cubes transformed into (input, target) restoration pairs.
#[derive(Debug)]
pub(crate) struct RestorationSource {
    pub(crate) cubes: StackSet,
    pub(crate) transforms: TransformConfig,
    pub(crate) seed: u64,
}

impl BatchSource for RestorationSource {
    fn len(&self) -> usize {
        self.cubes.len()
    }

    fn shape(&self) -> [usize; 3] {
        self.cubes.shape()
    }

    fn target_len(&self) -> usize {
        self.cubes.item_len()
    }

    fn fill(
        &self,
        indices: &[usize],
        epoch: u64,
        first_position: usize,
        inputs: &mut [f32],
        targets: &mut [f32],
        cubes: &mut Vec<f32>,
    ) -> Result<()> {
        cubes.resize(indices.len() * self.cubes.item_len(), 0.0);
        self.cubes.read_many(indices, cubes)?;
        genesis_transforms::generate_pairs(
            cubes,
            self.cubes.shape(),
            inputs,
            targets,
            &self.transforms,
            self.seed,
            epoch,
            first_position as u64,
        )?;
        Ok(())
    }
}

/// Equally shaped cubes, memory-mapped from `.npy` stacks or held in memory.
#[derive(Debug)]
pub(crate) enum Cubes {
    /// Items of `.npy` stacks.
    Stacks(StackSet),
    /// Cubes tiled from volume folders.
    Memory(MemoryCubes),
}

impl Cubes {
    pub(crate) fn len(&self) -> usize {
        match self {
            Cubes::Stacks(s) => s.len(),
            Cubes::Memory(m) => m.len(),
        }
    }

    pub(crate) fn shape(&self) -> [usize; 3] {
        match self {
            Cubes::Stacks(s) => s.shape(),
            Cubes::Memory(m) => m.shape(),
        }
    }

    pub(crate) fn item_len(&self) -> usize {
        match self {
            Cubes::Stacks(s) => s.item_len(),
            Cubes::Memory(m) => m.item_len(),
        }
    }

    /// Copies items `indices` into consecutive chunks of `out`.
    pub(crate) fn read_many(&self, indices: &[usize], out: &mut [f32]) -> Result<()> {
        match self {
            Cubes::Stacks(s) => s.read_many(indices, out),
            Cubes::Memory(m) => m.read_many(indices, out),
        }
    }
}

/// What a target task predicts.
#[derive(Debug)]
pub(crate) enum TaskTargets {
    /// Segmentation masks, one per cube.
    Masks(Cubes),
    /// Class labels, one per cube.
    Labels(Vec<f32>),
}

/// Fine-tuning and evaluation: cubes with masks or labels, no augmentation.
#[derive(Debug)]
pub(crate) struct TaskSource {
    pub(crate) images: Cubes,
    pub(crate) targets: TaskTargets,
}

impl TaskSource {
    /// Opens split `split` of a task directory: `.npy` stacks, or for
    /// segmentation without an `x_{split}` stack, the split's volume folders
    /// tiled as `tiling` says.
    pub(crate) fn open(
        dir: &Path,
        split: &str,
        classification: bool,
        tiling: &VolumeTiling,
    ) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::data(
                dir,
                not_a_directory(dir, "task data directory"),
            ));
        }
        let x = match find_split_file(dir, "x", split, "npy")? {
            Some(x) => x,
            None if classification => {
                return Err(Error::data(
                    dir,
                    format!("no x_{split}_<rows>x<cols>x<deps>.npy"),
                ));
            }
            None => {
                let Some((images, labels)) = find_volume_folders(dir, split) else {
                    let nnunet = match split {
                        "train" => ", nor imagesTr/ + labelsTr/",
                        "test" => ", nor imagesTs/ + labelsTs/",
                        _ => "",
                    };
                    return Err(Error::data(
                        dir,
                        format!(
                            "no x_{split}_<rows>x<cols>x<deps>.npy, nor {split}/images/ + {split}/labels/ folders{nnunet}"
                        ),
                    ));
                };
                let (images, masks) = load_split(&images, &labels, tiling)?;
                return Ok(Self {
                    images: Cubes::Memory(images),
                    targets: TaskTargets::Masks(Cubes::Memory(masks)),
                });
            }
        };
        let images = StackSet::open(std::slice::from_ref(&x), StackKind::Images)?;
        let targets = if classification {
            let y = match find_split_file(dir, "y", split, "npy")? {
                Some(p) => p,
                None => find_split_file(dir, "y", split, "csv")?.ok_or_else(|| {
                    Error::data(dir, format!("no y_{split}.npy or y_{split}.csv"))
                })?,
            };
            let labels = read_labels(&y)?;
            if labels.len() != images.len() {
                return Err(Error::data(
                    &y,
                    format!(
                        "{} labels for {} cubes in {}",
                        labels.len(),
                        images.len(),
                        x.display()
                    ),
                ));
            }
            TaskTargets::Labels(labels)
        } else {
            let m = find_split_file(dir, "m", split, "npy")?.ok_or_else(|| {
                Error::data(dir, format!("no m_{split}_<rows>x<cols>x<deps>.npy"))
            })?;
            let masks = StackSet::open(std::slice::from_ref(&m), StackKind::Masks)?;
            if masks.len() != images.len() || masks.shape() != images.shape() {
                return Err(Error::data(
                    &m,
                    format!(
                        "{} masks of {:?} for {} cubes of {:?} in {}",
                        masks.len(),
                        masks.shape(),
                        images.len(),
                        images.shape(),
                        x.display()
                    ),
                ));
            }
            TaskTargets::Masks(Cubes::Stacks(masks))
        };
        if images.len() == 0 {
            return Err(Error::data(&x, "no cubes"));
        }
        Ok(Self {
            images: Cubes::Stacks(images),
            targets,
        })
    }
}

impl BatchSource for TaskSource {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn shape(&self) -> [usize; 3] {
        self.images.shape()
    }

    fn target_len(&self) -> usize {
        match &self.targets {
            TaskTargets::Masks(m) => m.item_len(),
            TaskTargets::Labels(_) => 1,
        }
    }

    fn fill(
        &self,
        indices: &[usize],
        _: u64,
        _: usize,
        inputs: &mut [f32],
        targets: &mut [f32],
        _: &mut Vec<f32>,
    ) -> Result<()> {
        self.images.read_many(indices, inputs)?;
        match &self.targets {
            TaskTargets::Masks(m) => m.read_many(indices, targets),
            TaskTargets::Labels(labels) => {
                for (t, &i) in targets.iter_mut().zip(indices) {
                    *t = labels[i];
                }
                Ok(())
            }
        }
    }
}

/// A batch ready for the model.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Items in the batch.
    pub(crate) n: usize,
    /// `n × rows × cols × deps` input values.
    pub(crate) inputs: Vec<f32>,
    /// `n × target_len` target values.
    pub(crate) targets: Vec<f32>,
}

/// Which batches of which epoch to produce.
#[derive(Debug, Clone)]
pub(crate) struct EpochPlan {
    /// Item indices in the epoch's order.
    pub(crate) order: Vec<usize>,
    pub(crate) batch_size: usize,
    /// The epoch number handed to the source (transforms seed from it).
    pub(crate) epoch: u64,
    /// First step to produce (steps before were done before an interruption).
    pub(crate) first_step: usize,
    /// Steps of the epoch.
    pub(crate) n_steps: usize,
}

impl EpochPlan {
    /// Items in a shuffled order derived from `(seed, epoch)` only.
    pub(crate) fn shuffled(n_items: usize, seed: u64, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n_items).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(
            seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        order.shuffle(&mut rng);
        order
    }

    /// Steps for `n_items` at `batch_size`: `n // batch` when dropping the
    /// last partial batch, `ceil(n / batch)` otherwise; capped by `cap`.
    pub(crate) fn steps(
        n_items: usize,
        batch_size: usize,
        drop_last: bool,
        cap: Option<usize>,
    ) -> usize {
        let steps = if drop_last {
            n_items / batch_size
        } else {
            n_items.div_ceil(batch_size)
        };
        cap.map_or(steps, |c| steps.min(c))
    }
}

/// A background thread filling a bounded queue with the batches of one plan.
/// Batches given back with [`Producer::recycle`] are filled again, so that steady
/// state allocates no batch buffers: fresh ones cost their page faults and zeroing,
/// and made a batch of six 64x64x32 pairs take 5.7-7.1 ms instead of 3.0-3.8 ms
/// (see docs/benchmarks.md). Dropping it stops the thread.
#[derive(Debug)]
pub(crate) struct Producer {
    receiver: Option<Receiver<Result<Batch>>>,
    returned: Sender<Batch>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Producer {
    /// Starts producing `plan` from `source`, at most `depth` batches ahead.
    pub(crate) fn spawn(
        source: Arc<dyn BatchSource>,
        plan: EpochPlan,
        depth: usize,
    ) -> Result<Self> {
        let (sender, receiver) = sync_channel(depth.max(1));
        let (returned, recycled) = channel::<Batch>();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("genesis-data".into())
            .spawn(move || {
                let voxels: usize = source.shape().iter().product();
                let mut scratch = Vec::new();
                for step in plan.first_step..plan.n_steps {
                    if stop_flag.load(Ordering::Relaxed) {
                        return;
                    }
                    let start = step * plan.batch_size;
                    let end = (start + plan.batch_size).min(plan.order.len());
                    let indices = &plan.order[start..end];
                    let n = indices.len();
                    let mut batch = recycled.try_recv().unwrap_or_default();
                    batch.n = n;
                    batch.inputs.resize(n * voxels, 0.0);
                    batch.targets.resize(n * source.target_len(), 0.0);
                    let result = source
                        .fill(
                            indices,
                            plan.epoch,
                            start,
                            &mut batch.inputs,
                            &mut batch.targets,
                            &mut scratch,
                        )
                        .map(|()| batch);
                    let failed = result.is_err();
                    if sender.send(result).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| Error::Producer(format!("cannot start the data thread: {e}")))?;
        Ok(Self {
            receiver: Some(receiver),
            returned,
            stop,
            handle: Some(handle),
        })
    }

    /// The next batch, blocking until it is ready.
    pub(crate) fn next_batch(&mut self) -> Result<Batch> {
        let receiver = self
            .receiver
            .as_ref()
            .ok_or_else(|| Error::Producer("the queue is closed".into()))?;
        receiver
            .recv()
            .map_err(|_| Error::Producer("the data thread ended before the epoch did".into()))?
    }

    /// Gives a batch's buffers back for a later batch, once its values are copied
    /// out. Dropping a batch instead is fine too: the producer then allocates.
    pub(crate) fn recycle(&self, batch: Batch) {
        // A send fails only once the thread has ended, when the buffers are not needed.
        let _ = self.returned.send(batch);
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a pending send.
        self.receiver.take();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_depend_only_on_seed_and_epoch() {
        let a = EpochPlan::shuffled(100, 1, 0);
        assert_eq!(a, EpochPlan::shuffled(100, 1, 0));
        assert_ne!(a, EpochPlan::shuffled(100, 1, 1));
        assert_ne!(a, EpochPlan::shuffled(100, 2, 0));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn an_item_with_nan_or_infinity_is_an_error_naming_stack_item_and_voxel() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bat_8_s_4x5x6_0.npy");
        let mut values = vec![0.5f32; 3 * 120];
        values[120 + (2 * 5 + 3) * 6 + 4] = f32::NAN; // item 1, voxel (2, 3, 4)
        values[2 * 120 + 119] = f32::INFINITY; // item 2, voxel (3, 4, 5)
        let array =
            ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[3, 1, 4, 5, 6]), values).unwrap();
        genesis_io::write_npy(&path, array.view(), genesis_io::NpyDtype::F32).unwrap();
        let stacks = StackSet::open(std::slice::from_ref(&path), StackKind::Cubes).unwrap();
        let mut out = vec![0f32; 120];
        stacks.read(0, &mut out).unwrap();
        let error = stacks.read(1, &mut out).unwrap_err().to_string();
        assert!(error.contains("bat_8_s_4x5x6_0.npy"), "{error}");
        assert!(
            error.contains("item 1 has a non-finite value (NaN) at (row, col, dep) = (2, 3, 4)"),
            "{error}"
        );
        let error = stacks.read(2, &mut out).unwrap_err().to_string();
        assert!(
            error.contains("item 2 has a non-finite value (inf) at (row, col, dep) = (3, 4, 5)"),
            "{error}"
        );
        let mut batch = vec![0f32; 2 * 120];
        assert!(stacks.read_many(&[0, 1], &mut batch).is_err());
    }

    #[test]
    fn cubes_and_masks_must_lie_in_the_unit_range_and_cubes_and_images_be_floats() {
        let dir = tempfile::tempdir().unwrap();
        let save = |name: &str, values: Vec<f32>, dtype| {
            let path = dir.path().join(name);
            let array =
                ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[2, 4, 5, 6]), values).unwrap();
            genesis_io::write_npy(&path, array.view(), dtype).unwrap();
            path
        };
        let mut values = vec![0.25f32; 240];
        values[120 + 7] = 7.0; // item 1, voxel (0, 1, 1)
        let f32_path = save("x_train_4x5x6.npy", values, genesis_io::NpyDtype::F32);
        let mut out = vec![0f32; 120];
        for kind in [StackKind::Cubes, StackKind::Masks] {
            let stacks = StackSet::open(std::slice::from_ref(&f32_path), kind).unwrap();
            stacks.read(0, &mut out).unwrap();
            let error = stacks.read(1, &mut out).unwrap_err().to_string();
            assert!(
                error.contains(
                    "item 1 has an out-of-range value (7) at (row, col, dep) = (0, 1, 1)"
                ) && error.contains(&format!("{} must lie in [0, 1]", kind.name())),
                "{error}"
            );
        }
        // Task images may be normalised otherwise (z-scores of MRI).
        let images = StackSet::open(std::slice::from_ref(&f32_path), StackKind::Images).unwrap();
        images.read(1, &mut out).unwrap();
        // Integer stacks: masks yes, cubes and images no.
        let u8_path = save(
            "m_train_4x5x6.npy",
            vec![1.0; 240],
            genesis_io::NpyDtype::U8,
        );
        StackSet::open(std::slice::from_ref(&u8_path), StackKind::Masks).unwrap();
        for kind in [StackKind::Cubes, StackKind::Images] {
            let error = StackSet::open(std::slice::from_ref(&u8_path), kind)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("m_train_4x5x6.npy: values are U8")
                    && error.contains("float32 or float64"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_file_given_as_data_directory_is_named_as_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cubes.npy");
        std::fs::write(&file, b"").unwrap();
        let error = pretrain_stacks(&file, 32, &[0], "training")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cubes.npy: is a file; the data directory must be a directory"),
            "{error}"
        );
        let error = pretrain_stacks(&dir.path().join("absent"), 32, &[0], "training")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("absent: data directory not found"),
            "{error}"
        );
    }

    /// A `.npy` stack of `n` cubes of 16x16x16 under `dir`, values in [0, 1] (or
    /// 0 and 1 when `binary`).
    fn stack_16(dir: &Path, name: &str, n: usize, binary: bool) -> StackSet {
        let path = dir.join(name);
        let values: Vec<f32> = (0..n * 4096)
            .map(|i| {
                let v = ((i * 7919) % 1000) as f32 / 1000.0;
                if binary { v.round() } else { v }
            })
            .collect();
        let array =
            ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[n, 1, 16, 16, 16]), values).unwrap();
        genesis_io::write_npy(&path, array.view(), genesis_io::NpyDtype::F32).unwrap();
        let kind = if binary {
            StackKind::Masks
        } else {
            StackKind::Cubes
        };
        StackSet::open(std::slice::from_ref(&path), kind).unwrap()
    }

    /// `source.fill` for `indices` into zeroed buffers and into buffers full of NaN.
    fn fill_twice(source: &dyn BatchSource, indices: &[usize]) -> [(Vec<f32>, Vec<f32>); 2] {
        let voxels: usize = source.shape().iter().product();
        [0.0, f32::NAN].map(|old| {
            let mut inputs = vec![old; indices.len() * voxels];
            let mut targets = vec![old; indices.len() * source.target_len()];
            let mut scratch = vec![old; 3];
            source
                .fill(indices, 2, 5, &mut inputs, &mut targets, &mut scratch)
                .unwrap();
            (inputs, targets)
        })
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn every_source_overwrites_every_value_of_the_buffers_it_fills() {
        // The producer refills the buffers of earlier batches, so no value may
        // survive from them.
        let dir = tempfile::tempdir().unwrap();
        let restoration = RestorationSource {
            cubes: stack_16(dir.path(), "cubes.npy", 4, false),
            transforms: TransformConfig::paper(),
            seed: 3,
        };
        let images = || Cubes::Stacks(stack_16(dir.path(), "images.npy", 4, false));
        let segmentation = TaskSource {
            images: images(),
            targets: TaskTargets::Masks(Cubes::Stacks(stack_16(dir.path(), "masks.npy", 4, true))),
        };
        let classification = TaskSource {
            images: images(),
            targets: TaskTargets::Labels(vec![0.0, 1.0, 1.0, 0.0]),
        };
        let sources: [&dyn BatchSource; 3] = [&restoration, &segmentation, &classification];
        for source in sources {
            let [(x0, y0), (x1, y1)] = fill_twice(source, &[3, 0, 2]);
            assert!(x1.iter().chain(&y1).all(|v| !v.is_nan()), "{source:?}");
            assert_eq!((bits(&x0), bits(&y0)), (bits(&x1), bits(&y1)), "{source:?}");
        }
    }

    #[test]
    fn recycled_batches_come_back_with_the_values_of_fresh_ones() {
        let dir = tempfile::tempdir().unwrap();
        let source: Arc<dyn BatchSource> = Arc::new(RestorationSource {
            cubes: stack_16(dir.path(), "cubes.npy", 5, false),
            transforms: TransformConfig::paper(),
            seed: 3,
        });
        // Batches of 2, 2 and 1 (a smaller last batch refills a larger buffer), twice.
        let plan = EpochPlan {
            order: vec![4, 1, 0, 3, 2],
            batch_size: 2,
            epoch: 1,
            first_step: 0,
            n_steps: 3,
        };
        let mut fresh = Producer::spawn(Arc::clone(&source), plan.clone(), 1).unwrap();
        let expected: Vec<Batch> = (0..3).map(|_| fresh.next_batch().unwrap()).collect();
        for _ in 0..2 {
            let mut producer = Producer::spawn(Arc::clone(&source), plan.clone(), 1).unwrap();
            for want in &expected {
                let mut batch = producer.next_batch().unwrap();
                assert_eq!(batch.n, want.n);
                assert_eq!(bits(&batch.inputs), bits(&want.inputs));
                assert_eq!(bits(&batch.targets), bits(&want.targets));
                // Poisoned: a value the producer failed to overwrite would show.
                batch.inputs.fill(f32::NAN);
                batch.targets.fill(f32::NAN);
                producer.recycle(batch);
            }
        }
    }

    #[test]
    fn step_counts() {
        assert_eq!(EpochPlan::steps(10, 4, true, None), 2);
        assert_eq!(EpochPlan::steps(10, 4, false, None), 3);
        assert_eq!(EpochPlan::steps(10, 4, false, Some(1)), 1);
        assert_eq!(EpochPlan::steps(3, 4, true, None), 0);
    }

    #[test]
    fn file_names_are_matched_whatever_the_cube_shape() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "bat_8_s_64x64x32_0.npy",
            "bat_8_s_16x16x16_1.npy",
            "bat_8_s_64x64x32_10.npy",
            "bat_32_s_64x64x32_0.npy",
            "x_train_64x64x32.npy",
            "y_train.csv",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let found = |fold| {
            find_fold_stack(dir.path(), 8, fold)
                .unwrap()
                .map(|p| p.file_name().unwrap().to_owned())
        };
        assert_eq!(found(0).unwrap(), "bat_8_s_64x64x32_0.npy");
        assert_eq!(found(1).unwrap(), "bat_8_s_16x16x16_1.npy");
        assert!(found(2).is_none());
        assert!(pretrain_stacks(dir.path(), 8, &[3, 4], "training").is_err());
        let x = find_split_file(dir.path(), "x", "train", "npy")
            .unwrap()
            .unwrap();
        assert!(x.ends_with("x_train_64x64x32.npy"));
        assert!(
            find_split_file(dir.path(), "y", "train", "csv")
                .unwrap()
                .is_some()
        );
        assert!(
            find_split_file(dir.path(), "x", "test", "npy")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn labels_from_csv() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("y.csv");
        std::fs::write(&path, "id,label\n0,1\n1,0\n\n2,1\n").unwrap();
        assert_eq!(read_labels(&path).unwrap(), vec![1.0, 0.0, 1.0]);
        std::fs::write(&path, "1\n2\n").unwrap();
        assert!(read_labels(&path).is_err());
        std::fs::write(&path, "1\nx\n").unwrap();
        let err = read_labels(&path).unwrap_err().to_string();
        assert!(err.contains("y.csv") && err.contains("line 2"), "{err}");
        // Quoted fields with the delimiter inside, and semicolon files.
        std::fs::write(&path, "uid,label\n\"1.3.6,a\",1\n\"b\",0\n").unwrap();
        assert_eq!(read_labels(&path).unwrap(), vec![1.0, 0.0]);
        std::fs::write(&path, "uid;label\na;0\nb;1\n").unwrap();
        assert_eq!(read_labels(&path).unwrap(), vec![0.0, 1.0]);
    }
}
