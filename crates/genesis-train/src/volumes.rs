//! Segmentation data as folders of whole volumes: pairing images with labels,
//! windowing the images, and tiling each case into cubes kept in memory.
//!
//! A split `S` of a task directory `DIR` is read from `DIR/S/images/` and
//! `DIR/S/labels/`, or from nnU-Net's `DIR/imagesTr/` + `DIR/labelsTr/` for
//! `train` and `DIR/imagesTs/` + `DIR/labelsTs/` for `test`. An image and its
//! label share a file stem (`case.nii.gz` ↔ `case.nrrd`), or the image carries
//! nnU-Net's channel suffix (`case_0000.nii.gz` ↔ `case.nii.gz`).
//!
//! Labels are binarised: every positive value is foreground, so a multi-label
//! map becomes "any structure vs background". Each volume is cut into a regular
//! grid of cubes from voxel (0, 0, 0); the last cube along an axis is padded
//! with 0 (the window's minimum after normalisation, and background in the
//! mask). All cubes with foreground are kept, plus as many background cubes
//! (fewer if the case has fewer), drawn from the seed.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use genesis_io::{Format, HuWindow, Volume, read_volume};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};

/// Seed offset of the background-cube draw, so it shares no stream with the
/// epoch shuffles.
const BACKGROUND_SEED_OFFSET: u64 = 0xBAC6_C0BE_5EED;

/// How the volumes of a split become cubes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct VolumeTiling {
    /// Cube sides along the volume's x, y and z.
    pub(crate) cube_shape: [usize; 3],
    /// Window mapping image intensities to [0, 1]; `None`: already in [0, 1].
    pub(crate) window: Option<HuWindow>,
    /// Seed of the background-cube draw.
    pub(crate) seed: u64,
}

/// Equally shaped cubes held in memory, one after the other.
#[derive(Debug)]
pub(crate) struct MemoryCubes {
    shape: [usize; 3],
    item_len: usize,
    values: Vec<f32>,
}

impl MemoryCubes {
    fn new(shape: [usize; 3]) -> Self {
        Self {
            shape,
            item_len: shape.iter().product(),
            values: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len() / self.item_len.max(1)
    }

    pub(crate) fn shape(&self) -> [usize; 3] {
        self.shape
    }

    pub(crate) fn item_len(&self) -> usize {
        self.item_len
    }

    /// Copies items `indices` into consecutive chunks of `out`.
    pub(crate) fn read_many(&self, indices: &[usize], out: &mut [f32]) -> Result<()> {
        for (chunk, &index) in out.chunks_exact_mut(self.item_len).zip(indices) {
            let start = index * self.item_len;
            let item = self
                .values
                .get(start..start + self.item_len)
                .ok_or_else(|| {
                    Error::Config(format!("item {index} out of range ({} items)", self.len()))
                })?;
            chunk.copy_from_slice(item);
        }
        Ok(())
    }

    /// Appends one cube of `values` (a volume of `shape`, z fastest) starting
    /// at voxel `origin`, padding with 0 past the volume's end.
    fn push_cube(
        &mut self,
        values: &[f32],
        shape: [usize; 3],
        origin: [usize; 3],
        map: impl Fn(f32) -> f32,
    ) {
        let start = self.values.len();
        self.values.resize(start + self.item_len, 0.0);
        let out = &mut self.values[start..];
        let [_, ny, nz] = shape;
        let [_, cube_cols, cube_deps] = self.shape;
        let extent: [usize; 3] = std::array::from_fn(|a| self.shape[a].min(shape[a] - origin[a]));
        for x in 0..extent[0] {
            for y in 0..extent[1] {
                let src = ((origin[0] + x) * ny + origin[1] + y) * nz + origin[2];
                let dst = (x * cube_cols + y) * cube_deps;
                for (o, &v) in out[dst..dst + extent[2]]
                    .iter_mut()
                    .zip(&values[src..src + extent[2]])
                {
                    *o = map(v);
                }
            }
        }
    }
}

/// The image and label folders of split `split` of `dir`, if it has an image folder.
pub(crate) fn find_volume_folders(dir: &Path, split: &str) -> Option<(PathBuf, PathBuf)> {
    let mut candidates = vec![(
        dir.join(split).join("images"),
        dir.join(split).join("labels"),
    )];
    let nnunet_suffix = match split {
        "train" => Some("Tr"),
        "test" => Some("Ts"),
        _ => None,
    };
    if let Some(suffix) = nnunet_suffix {
        candidates.push((
            dir.join(format!("images{suffix}")),
            dir.join(format!("labels{suffix}")),
        ));
    }
    candidates.into_iter().find(|(images, _)| images.is_dir())
}

/// One case: an image and its label.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Case {
    pub(crate) image: PathBuf,
    pub(crate) label: PathBuf,
}

/// The volume files of `dir` by stem (file name less its format extension),
/// skipping hidden files and files of no volume format (such as the `.raw`
/// data files of `.mhd` headers).
fn volume_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = match path.file_name() {
            Some(name) => name.to_string_lossy().into_owned(),
            None => continue,
        };
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        let extension_len = match Format::from_path(&path) {
            Some(Format::NiftiGz) => ".nii.gz".len(),
            Some(Format::NrrdAttached | Format::NrrdDetached) => ".nrrd".len(),
            Some(_) => ".nii".len(),
            None => continue,
        };
        let stem = name[..name.len() - extension_len].to_string();
        if let Some(other) = files.get(&stem) {
            return Err(Error::data(
                &path,
                format!(
                    "two volumes with the stem `{stem}` (the other is {})",
                    other.display()
                ),
            ));
        }
        files.insert(stem, path);
    }
    Ok(files)
}

/// Splits nnU-Net's channel suffix off a stem: `case_0000` → (`case`, `0000`).
fn nnunet_channel(stem: &str) -> Option<(&str, &str)> {
    let (base, channel) = stem.rsplit_once('_')?;
    (!base.is_empty() && channel.len() == 4 && channel.bytes().all(|b| b.is_ascii_digit()))
        .then_some((base, channel))
}

/// Pairs every image of `images_dir` with its label in `labels_dir`, in file
/// name order; a file without a partner is an error.
pub(crate) fn pair_cases(images_dir: &Path, labels_dir: &Path) -> Result<Vec<Case>> {
    const FORMATS: &str = ".nii, .nii.gz, .mhd, .mha, .nrrd, .nhdr or .npy";
    if !labels_dir.is_dir() {
        return Err(Error::data(
            labels_dir,
            format!(
                "label folder not found (the images are in {})",
                images_dir.display()
            ),
        ));
    }
    let images = volume_files(images_dir)?;
    if images.is_empty() {
        return Err(Error::data(
            images_dir,
            format!("no image volumes ({FORMATS}) in the folder"),
        ));
    }
    let labels = volume_files(labels_dir)?;
    if labels.is_empty() {
        return Err(Error::data(
            labels_dir,
            format!("no label volumes ({FORMATS}) in the folder"),
        ));
    }
    let mut cases = Vec::with_capacity(images.len());
    let mut used: BTreeMap<&str, &Path> = BTreeMap::new();
    for (stem, image) in &images {
        let key = if labels.contains_key(stem) {
            stem.as_str()
        } else {
            match nnunet_channel(stem) {
                Some((base, "0000")) => base,
                Some((base, channel)) if labels.contains_key(base) => {
                    return Err(Error::data(
                        image,
                        format!(
                            "input channel {channel} of case `{base}` (nnU-Net naming): only single-channel images (`_0000`) are supported"
                        ),
                    ));
                }
                _ => stem.as_str(),
            }
        };
        let label = labels.get(key).ok_or_else(|| {
            Error::data(
                image,
                format!(
                    "no label for this image: expected `{key}` with a volume extension in {}",
                    labels_dir.display()
                ),
            )
        })?;
        if let Some(other) = used.insert(key, image) {
            return Err(Error::data(
                image,
                format!(
                    "this image and {} both pair with the label {}",
                    other.display(),
                    label.display()
                ),
            ));
        }
        cases.push(Case {
            image: image.clone(),
            label: label.clone(),
        });
    }
    for (stem, label) in &labels {
        if !used.contains_key(stem.as_str()) {
            return Err(Error::data(
                label,
                format!(
                    "no image for this label: expected `{stem}` or `{stem}_0000` with a volume extension in {}",
                    images_dir.display()
                ),
            ));
        }
    }
    Ok(cases)
}

/// The voxels of a volume in standard (x, y, z with z fastest) order,
/// borrowed when the array already is in that layout.
fn standard_values(volume: &Volume) -> Cow<'_, [f32]> {
    match volume.data.as_slice() {
        Some(values) => Cow::Borrowed(values),
        None => Cow::Owned(volume.data.iter().copied().collect()),
    }
}

/// Refuses a volume read from `path` that holds NaN or an infinite value, naming the
/// first such voxel: a network fed one gives NaN everywhere its patches reach.
pub(crate) fn check_finite(path: &Path, volume: &Volume) -> Result<()> {
    let Some(index) = volume.data.iter().position(|v| !v.is_finite()) else {
        return Ok(());
    };
    let [x, y, z] = crate::data::voxel_at(index, volume.shape());
    Err(Error::data(
        path,
        format!(
            "voxel (x, y, z) = ({x}, {y}, {z}) is {}; the volume must hold finite values",
            volume.data[[x, y, z]]
        ),
    ))
}

/// Reads the image of a case and maps it to [0, 1]. The values are checked before
/// the window, which would map NaN to 0 (so not with the fused
/// `read_volume_normalized`: each case is read once, when the task opens).
fn read_image(path: &Path, window: Option<HuWindow>) -> Result<Volume> {
    let mut volume = read_volume(path)?;
    check_finite(path, &volume)?;
    match window {
        Some(window) => {
            volume.normalize(window);
            Ok(volume)
        }
        None => {
            if let Some(bad) = volume.data.iter().find(|v| !(0.0..=1.0).contains(*v)) {
                return Err(Error::data(
                    path,
                    format!(
                        "value {bad} outside [0, 1] with window `none`: set the window to ct, mri or LOWER,UPPER"
                    ),
                ));
            }
            Ok(volume)
        }
    }
}

/// Grid cells (index `(gx · GY + gy) · GZ + gz`) of `label` holding a
/// foreground voxel; checks every value is a non-negative integer.
fn foreground_cells(
    label: &[f32],
    shape: [usize; 3],
    cube_shape: [usize; 3],
    grid: [usize; 3],
    path: &Path,
) -> Result<Vec<bool>> {
    let [_, ny, nz] = shape;
    let mut foreground = vec![false; grid.iter().product()];
    for (row_idx, row) in label.chunks_exact(nz).enumerate() {
        let (x, y) = (row_idx / ny, row_idx % ny);
        let cell_row = ((x / cube_shape[0]) * grid[1] + y / cube_shape[1]) * grid[2];
        for (z, &v) in row.iter().enumerate() {
            if v > 0.0 && v.is_finite() && v.fract() == 0.0 {
                foreground[cell_row + z / cube_shape[2]] = true;
            } else if v != 0.0 {
                return Err(Error::data(
                    path,
                    format!(
                        "label value {v} at voxel ({x}, {y}, {z}): labels must be non-negative integers (is this an image?)"
                    ),
                ));
            }
        }
    }
    Ok(foreground)
}

/// The grid cells of one case to keep: all with foreground, plus as many
/// background ones drawn from `(seed, case_idx)`; in grid order.
fn select_cells(foreground: &[bool], seed: u64, case_idx: usize) -> Vec<usize> {
    let (mut kept, mut background): (Vec<usize>, Vec<usize>) =
        (0..foreground.len()).partition(|&cell| foreground[cell]);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ BACKGROUND_SEED_OFFSET);
    rng.set_stream(case_idx as u64);
    background.shuffle(&mut rng);
    background.truncate(kept.len());
    kept.extend(background);
    kept.sort_unstable();
    kept
}

/// Reads the cases of a split and tiles them: image cubes in [0, 1] and
/// binary mask cubes, in case then grid order.
pub(crate) fn load_split(
    images_dir: &Path,
    labels_dir: &Path,
    tiling: &VolumeTiling,
) -> Result<(MemoryCubes, MemoryCubes)> {
    let cube_shape = tiling.cube_shape;
    if cube_shape.contains(&0) {
        return Err(Error::Config(format!(
            "cube_shape {cube_shape:?} has a zero side"
        )));
    }
    let cases = pair_cases(images_dir, labels_dir)?;
    let mut images = MemoryCubes::new(cube_shape);
    let mut masks = MemoryCubes::new(cube_shape);
    for (case_idx, case) in cases.iter().enumerate() {
        let image = read_image(&case.image, tiling.window)?;
        let label = read_volume(&case.label)?;
        let shape = image.shape();
        if shape.contains(&0) {
            return Err(Error::data(
                &case.image,
                format!("volume of shape {shape:?} has no voxels"),
            ));
        }
        if label.shape() != shape {
            return Err(Error::data(
                &case.label,
                format!(
                    "label has shape {:?} but its image {} has {shape:?}",
                    label.shape(),
                    case.image.display()
                ),
            ));
        }
        let image_values = standard_values(&image);
        let label_values = standard_values(&label);
        let grid: [usize; 3] = std::array::from_fn(|a| shape[a].div_ceil(cube_shape[a]));
        let foreground = foreground_cells(&label_values, shape, cube_shape, grid, &case.label)?;
        for cell in select_cells(&foreground, tiling.seed, case_idx) {
            let (gx, rest) = (cell / (grid[1] * grid[2]), cell % (grid[1] * grid[2]));
            let (gy, gz) = (rest / grid[2], rest % grid[2]);
            let origin = [gx * cube_shape[0], gy * cube_shape[1], gz * cube_shape[2]];
            images.push_cube(&image_values, shape, origin, |v| v);
            masks.push_cube(&label_values, shape, origin, |v| f32::from(v > 0.0));
        }
    }
    if images.len() == 0 {
        return Err(Error::data(
            labels_dir,
            "no label has a foreground voxel, so there are no cubes",
        ));
    }
    Ok((images, masks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FinetuneConfig, IntensityWindow, Task};
    use crate::data::{BatchSource, TaskSource};
    use crate::engine::RunOptions;
    use crate::finetune::{EvaluateConfig, evaluate, finetune};
    use genesis_io::{ElementType, write_volume};
    use ndarray::Array3;

    const SHAPE: [usize; 3] = [40, 40, 20];

    /// Writes a CT-like image (−800 HU background, +200 HU ball) and its label.
    fn write_case(image: &Path, label: &Path, centre: [f32; 3], radius: f32) {
        let inside = |x: usize, y: usize, z: usize| {
            let d2 = (x as f32 - centre[0]).powi(2)
                + (y as f32 - centre[1]).powi(2)
                + (z as f32 - centre[2]).powi(2);
            d2 <= radius * radius
        };
        let hu = Array3::from_shape_fn((SHAPE[0], SHAPE[1], SHAPE[2]), |(x, y, z)| {
            if inside(x, y, z) { 200.0 } else { -800.0 }
        });
        let mut scan = Volume::new(hu, [1.0, 1.0, 2.0]);
        scan.element_type = ElementType::I16;
        write_volume(image, &scan).unwrap();
        let mask = Array3::from_shape_fn((SHAPE[0], SHAPE[1], SHAPE[2]), |(x, y, z)| {
            if inside(x, y, z) { 1.0 } else { 0.0 }
        });
        let mut mask = Volume::new(mask, [1.0, 1.0, 2.0]);
        mask.element_type = ElementType::U8;
        write_volume(label, &mask).unwrap();
    }

    fn tiling() -> VolumeTiling {
        VolumeTiling {
            cube_shape: [16, 16, 16],
            window: Some(HuWindow::CT),
            seed: 1,
        }
    }

    /// `train` and `valid` splits of two cases each. With 16³ cubes a 40×40×20
    /// volume is a 3×3×2 grid; a ball at (16, 16, 8) touches the four cells
    /// around x = y = 16 in the first z layer, so each case gives 4 + 4 cubes.
    fn make_task(dir: &Path) {
        for split in ["train", "valid"] {
            let images = dir.join(split).join("images");
            let labels = dir.join(split).join("labels");
            std::fs::create_dir_all(&images).unwrap();
            std::fs::create_dir_all(&labels).unwrap();
            for (name, centre) in [("a", [16.0, 16.0, 8.0]), ("b", [15.5, 16.5, 6.0])] {
                write_case(
                    &images.join(format!("{name}.nii.gz")),
                    &labels.join(format!("{name}.nii.gz")),
                    centre,
                    3.0,
                );
            }
        }
    }

    #[test]
    fn cases_pair_by_stem_and_nnunet_channel() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("imagesTr");
        let labels = dir.path().join("labelsTr");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&labels).unwrap();
        for name in [
            "case_001_0000.nii.gz",
            "other.mha",
            ".hidden.nii",
            "notes.txt",
        ] {
            std::fs::write(images.join(name), b"").unwrap();
        }
        for name in ["case_001.nii.gz", "other.nrrd", "dataset.json"] {
            std::fs::write(labels.join(name), b"").unwrap();
        }
        let (found_images, found_labels) = find_volume_folders(dir.path(), "train").unwrap();
        assert_eq!(
            (found_images.clone(), found_labels.clone()),
            (images.clone(), labels.clone())
        );
        assert!(find_volume_folders(dir.path(), "valid").is_none());
        let cases = pair_cases(&found_images, &found_labels).unwrap();
        assert_eq!(
            cases,
            vec![
                Case {
                    image: images.join("case_001_0000.nii.gz"),
                    label: labels.join("case_001.nii.gz"),
                },
                Case {
                    image: images.join("other.mha"),
                    label: labels.join("other.nrrd"),
                },
            ]
        );
        // A second input channel is named as such.
        std::fs::write(images.join("case_001_0001.nii.gz"), b"").unwrap();
        let err = pair_cases(&images, &labels).unwrap_err().to_string();
        assert!(
            err.contains("case_001_0001.nii.gz") && err.contains("channel"),
            "{err}"
        );
    }

    #[test]
    fn background_draw_is_deterministic_and_balanced() {
        let mut foreground = vec![false; 20];
        foreground[3] = true;
        foreground[17] = true;
        let a = select_cells(&foreground, 7, 0);
        assert_eq!(a.len(), 4);
        assert!(a.contains(&3) && a.contains(&17));
        assert_eq!(a, select_cells(&foreground, 7, 0));
        assert!(select_cells(&[false; 20], 7, 0).is_empty());
        // All background cells when there are fewer than foreground ones.
        assert_eq!(select_cells(&[true, true, false], 7, 0), vec![0, 1, 2]);
    }

    #[test]
    fn cubes_are_padded_and_labels_binarised() {
        let mut cubes = MemoryCubes::new([2, 2, 2]);
        // A 3×3×3 volume; the cube at (2, 2, 2) holds one voxel, the rest is padding.
        let values: Vec<f32> = (0..27).map(|v| v as f32).collect();
        cubes.push_cube(&values, [3, 3, 3], [2, 2, 2], |v| v);
        cubes.push_cube(&values, [3, 3, 3], [0, 1, 1], |v| f32::from(v > 13.0));
        let mut out = vec![0.0; 16];
        cubes.read_many(&[0, 1], &mut out).unwrap();
        assert_eq!(&out[..8], &[26.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        // Voxels (0..2, 1..3, 1..3): values 4, 5, 7, 8, 13, 14, 16, 17.
        assert_eq!(&out[8..], &[0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        assert!(cubes.read_many(&[2], &mut out[..8]).is_err());
    }

    #[test]
    fn nifti_folders_fine_tune_and_evaluate() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("task");
        make_task(&data);
        let source = TaskSource::open(&data, "train", false, &tiling()).unwrap();
        assert_eq!(source.len(), 16);
        assert_eq!(source.shape(), [16, 16, 16]);
        let mut inputs = vec![0.0; 16 * 4096];
        let mut targets = vec![0.0; 16 * 4096];
        let indices: Vec<usize> = (0..16).collect();
        source
            .fill(&indices, 0, 0, &mut inputs, &mut targets, &mut Vec::new())
            .unwrap();
        // −800 HU is 0.1 in the CT window, +200 HU is 0.6, padding is 0.
        assert!(inputs.iter().all(|&v| v == 0.0 || v == 0.1 || v == 0.6));
        assert!(inputs.contains(&0.0) && inputs.contains(&0.6));
        assert!(targets.iter().all(|&v| v == 0.0 || v == 1.0));
        let foreground_cubes = targets
            .chunks_exact(4096)
            .filter(|cube| cube.contains(&1.0))
            .count();
        assert_eq!(foreground_cubes, 8);

        let mut config = FinetuneConfig::paper();
        config.task = Task::Segmentation;
        config.data = data.clone();
        config.run_dir = dir.path().join("run");
        config.cube_shape = [16, 16, 16];
        config.window = IntensityWindow::Ct;
        config.batch_size = 8;
        config.epochs = 1;
        config.device = "cpu".into();
        config.queue_depth = 1;
        config.model.base_width = 4;
        let options = RunOptions {
            quiet: true,
            ..RunOptions::default()
        };
        let summary = finetune(&config, &options).unwrap();
        assert_eq!(summary.history.len(), 1);
        assert!(summary.history[0].train_loss.is_finite());
        let saved = std::fs::read_to_string(config.run_dir.join("config.toml")).unwrap();
        assert!(saved.contains("window = \"ct\""), "{saved}");

        let metrics = evaluate(&EvaluateConfig {
            data: data.clone(),
            split: "valid".into(),
            weights: config.run_dir.join("best.safetensors"),
            model: config.model,
            cube_shape: [16, 16, 16],
            device: "cpu".into(),
            ..EvaluateConfig::default()
        })
        .unwrap();
        assert_eq!(metrics.n_cubes, 16);
        assert!(metrics.dice.is_some_and(|d| (0.0..=1.0).contains(&d)));

        // The command line takes the cube shape, window and seed from the
        // run's config.toml: the default 64×64×32 cubes would give one per case.
        let output = dir.path().join("valid_metrics.json");
        let cli = <crate::Cli as clap::Parser>::try_parse_from([
            "genesis-train",
            "evaluate",
            "--data",
            data.to_str().unwrap(),
            "--weights",
            config.run_dir.join("best.safetensors").to_str().unwrap(),
            "--split",
            "valid",
            "--output",
            output.to_str().unwrap(),
            "--device",
            "cpu",
        ])
        .unwrap();
        crate::run(cli).unwrap();
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
        assert_eq!(written["n_cubes"], 16);
        assert_eq!(written["dice"].as_f64(), metrics.dice);
    }

    fn open_error(data: &Path) -> String {
        TaskSource::open(data, "train", false, &tiling())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn missing_partners_bad_shapes_and_bad_labels_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("task");
        let images = data.join("train/images");
        let labels = data.join("train/labels");
        std::fs::create_dir_all(&images).unwrap();

        // No label folder.
        let err = open_error(&data);
        assert!(err.contains("labels") && err.contains("not found"), "{err}");
        std::fs::create_dir_all(&labels).unwrap();
        // Empty folders.
        let err = open_error(&data);
        assert!(
            err.contains("images") && err.contains("no image volumes"),
            "{err}"
        );

        write_case(
            &images.join("a.nii.gz"),
            &labels.join("a.nii.gz"),
            [8.0; 3],
            3.0,
        );
        // An image without its label.
        write_case(
            &images.join("b.nii"),
            &dir.path().join("b.nii"),
            [8.0; 3],
            3.0,
        );
        let err = open_error(&data);
        assert!(err.contains("b.nii") && err.contains("no label"), "{err}");
        // A label without its image.
        std::fs::remove_file(images.join("b.nii")).unwrap();
        std::fs::copy(labels.join("a.nii.gz"), labels.join("c.nii.gz")).unwrap();
        let err = open_error(&data);
        assert!(
            err.contains("c.nii.gz") && err.contains("no image"),
            "{err}"
        );
        std::fs::remove_file(labels.join("c.nii.gz")).unwrap();
        TaskSource::open(&data, "train", false, &tiling()).unwrap();

        // A label of another shape.
        let small = Volume::new(Array3::zeros((40, 40, 10)), [1.0; 3]);
        write_volume(labels.join("a.nii.gz"), &small).unwrap();
        let err = open_error(&data);
        assert!(
            err.contains("a.nii.gz")
                && err.contains("[40, 40, 10]")
                && err.contains("[40, 40, 20]"),
            "{err}"
        );

        // A label that is not integer-valued (here the image itself).
        std::fs::copy(images.join("a.nii.gz"), labels.join("a.nii.gz")).unwrap();
        let err = open_error(&data);
        assert!(
            err.contains("labels/a.nii.gz") && err.contains("-800"),
            "{err}"
        );

        // Multi-label maps are binarised.
        let multi = Volume::new(
            Array3::from_shape_fn((40, 40, 20), |(x, _, _)| if x < 3 { 2.0 } else { 0.0 }),
            [1.0; 3],
        );
        write_volume(labels.join("a.nii.gz"), &multi).unwrap();
        let source = TaskSource::open(&data, "train", false, &tiling()).unwrap();
        // Foreground in the 3 × 2 cells of the first x layer, and 6 background cells.
        assert_eq!(source.len(), 12);

        // Window `none` needs images in [0, 1].
        let none = VolumeTiling {
            window: None,
            ..tiling()
        };
        let err = TaskSource::open(&data, "train", false, &none)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("images/a.nii.gz") && err.contains("[0, 1]"),
            "{err}"
        );

        // An image with a NaN voxel, windowed or not.
        let mut image = genesis_io::read_volume(images.join("a.nii.gz")).unwrap();
        image.data[[5, 6, 7]] = f32::NAN;
        image.element_type = genesis_io::ElementType::F32; // integers cannot hold NaN
        write_volume(images.join("a.nii.gz"), &image).unwrap();
        for window in [tiling(), none] {
            let Err(err) = TaskSource::open(&data, "train", false, &window) else {
                panic!("an image with NaN was accepted");
            };
            let err = err.to_string();
            assert!(
                err.contains("images/a.nii.gz") && err.contains("(x, y, z) = (5, 6, 7) is NaN"),
                "{err}"
            );
        }

        // No stacks and no folders.
        let err = TaskSource::open(&data, "valid", false, &tiling())
            .unwrap_err()
            .to_string();
        assert!(err.contains("valid/images"), "{err}");
    }
}
