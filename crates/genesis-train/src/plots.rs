//! PNG pictures of a run: restoration samples and the loss curve, drawn with
//! the `image` crate alone (no font or plotting dependency).

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::checkpoint::temp_path;
use crate::{Error, Result};

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const TRAIN: Rgb<u8> = Rgb([31, 119, 180]);
const VALID: Rgb<u8> = Rgb([214, 39, 40]);

/// Depth indices of the four slices shown per cube, as in the original's
/// sample figures: evenly spread through the cube.
pub fn sample_depths(deps: usize) -> [usize; 4] {
    [1, 3, 5, 7].map(|k| (k * deps / 8).min(deps.saturating_sub(1)))
}

/// Writes `input | target | prediction` of one cube (`shape` = rows, cols,
/// deps; values in [0, 1], deps fastest) as a grid: one row of tiles per
/// image, one column per depth of [`sample_depths`].
pub fn write_restoration_sample(
    path: &Path,
    shape: [usize; 3],
    input: &[f32],
    target: &[f32],
    prediction: &[f32],
) -> Result<()> {
    let [rows, cols, deps] = shape;
    let n = rows * cols * deps;
    if input.len() != n || target.len() != n || prediction.len() != n || n == 0 {
        return Err(Error::Image {
            path: path.to_path_buf(),
            message: format!("sample buffers do not match the cube shape {shape:?}"),
        });
    }
    let zoom = (128 / rows.max(cols)).max(1);
    let gap = 2;
    let tile_w = cols * zoom;
    let tile_h = rows * zoom;
    let depths = sample_depths(deps);
    let width = depths.len() * (tile_w + gap) + gap;
    let height = 3 * (tile_h + gap) + gap;
    let mut img = RgbImage::from_pixel(width as u32, height as u32, WHITE);
    for (row, volume) in [input, target, prediction].into_iter().enumerate() {
        for (column, &z) in depths.iter().enumerate() {
            let x0 = gap + column * (tile_w + gap);
            let y0 = gap + row * (tile_h + gap);
            for r in 0..tile_h {
                for c in 0..tile_w {
                    let v = volume[((r / zoom) * cols + c / zoom) * deps + z];
                    let g = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                    img.put_pixel((x0 + c) as u32, (y0 + r) as u32, Rgb([g, g, g]));
                }
            }
        }
    }
    save_png(path, &img)
}

/// Draws training (blue) and validation (red) loss per epoch on a log scale,
/// with the extreme values and the epoch range written on the axes and the
/// best epoch marked by a vertical grey line.
pub fn write_loss_curve(
    path: &Path,
    train: &[f64],
    valid: &[f64],
    best_epoch: Option<usize>,
) -> Result<()> {
    let (width, height) = (720i64, 420i64);
    let (left, right, top, bottom) = (70i64, 20i64, 20i64, 40i64);
    let mut img = RgbImage::from_pixel(width as u32, height as u32, WHITE);
    let values: Vec<f64> = train
        .iter()
        .chain(valid)
        .copied()
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let n = train.len().max(valid.len());
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    if let (Some(lo), Some(hi)) = (
        values.iter().copied().reduce(f64::min),
        values.iter().copied().reduce(f64::max),
    ) {
        let (lo, hi) = (lo.log10(), hi.log10());
        let (lo, hi) = if hi - lo < 1e-9 {
            (lo - 0.5, hi + 0.5)
        } else {
            (lo, hi)
        };
        let x_of = |i: usize| {
            left + if n > 1 {
                i as i64 * plot_w / (n as i64 - 1)
            } else {
                plot_w / 2
            }
        };
        let y_of = |v: f64| top + ((hi - v.log10()) / (hi - lo) * plot_h as f64).round() as i64;
        // Decade grid lines.
        let mut decade = lo.floor() as i32;
        while f64::from(decade) <= hi {
            if f64::from(decade) >= lo {
                let y = y_of(10f64.powi(decade));
                line(&mut img, left, y, width - right, y, GRID);
            }
            decade += 1;
        }
        if let Some(best) = best_epoch.filter(|&b| b < n) {
            line(&mut img, x_of(best), top, x_of(best), height - bottom, GRID);
        }
        for (series, colour) in [(train, TRAIN), (valid, VALID)] {
            let points: Vec<(i64, i64)> = series
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite() && **v > 0.0)
                .map(|(i, &v)| (x_of(i), y_of(v)))
                .collect();
            for pair in points.windows(2) {
                thick_line(&mut img, pair[0], pair[1], colour);
            }
            for &(x, y) in &points {
                for dy in -2..=2 {
                    for dx in -2..=2 {
                        put(&mut img, x + dx, y + dy, colour);
                    }
                }
            }
        }
        text(&mut img, 4, top, &format_value(10f64.powf(hi)), BLACK);
        text(
            &mut img,
            4,
            height - bottom - 10,
            &format_value(10f64.powf(lo)),
            BLACK,
        );
        text(&mut img, left, height - bottom + 8, "0", BLACK);
        let last = n.saturating_sub(1).to_string();
        text(
            &mut img,
            width - right - 8 * last.len() as i64,
            height - bottom + 8,
            &last,
            BLACK,
        );
    }
    // Axes and a legend: a blue square (train) and a red square (valid).
    line(&mut img, left, top, left, height - bottom, BLACK);
    line(
        &mut img,
        left,
        height - bottom,
        width - right,
        height - bottom,
        BLACK,
    );
    for (k, colour) in [TRAIN, VALID].into_iter().enumerate() {
        let x = width - right - 60 + 30 * k as i64;
        for dy in 0..12 {
            for dx in 0..20 {
                put(&mut img, x + dx, top + 4 + dy, colour);
            }
        }
    }
    save_png(path, &img)
}

fn format_value(v: f64) -> String {
    if (1e-3..1e4).contains(&v.abs()) {
        format!("{v:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{v:.1e}")
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, colour);
    }
}

/// Bresenham's line.
fn line(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, colour: Rgb<u8>) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        put(img, x, y, colour);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

fn thick_line(img: &mut RgbImage, a: (i64, i64), b: (i64, i64), colour: Rgb<u8>) {
    for d in -1..=1 {
        line(img, a.0, a.1 + d, b.0, b.1 + d, colour);
    }
}

/// A 3×5 bitmap font for the characters of numbers, drawn at twice the size.
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'e' => [0, 7, 7, 4, 7],
        _ => return None,
    })
}

fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, colour: Rgb<u8>) {
    for (k, c) in s.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                        put(
                            img,
                            x + 8 * k as i64 + 2 * col + dx,
                            y + 2 * r as i64 + dy,
                            colour,
                        );
                    }
                }
            }
        }
    }
}

fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    let temp = temp_path(path);
    let result = img
        .save_with_format(&temp, image::ImageFormat::Png)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
        .and_then(|()| std::fs::rename(&temp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_grid_has_three_rows_and_four_depths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.png");
        let shape = [16, 16, 8];
        let cube: Vec<f32> = (0..16 * 16 * 8).map(|i| (i % 8) as f32 / 7.0).collect();
        write_restoration_sample(&path, shape, &cube, &cube, &cube).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        // zoom 8: tiles 128 px, gap 2.
        assert_eq!(img.width(), 4 * 130 + 2);
        assert_eq!(img.height(), 3 * 130 + 2);
        // The first tile shows depth 1 (value 1/7).
        assert_eq!(img.get_pixel(10, 10)[0], (255.0f32 / 7.0).round() as u8);
        assert!(write_restoration_sample(&path, shape, &cube[1..], &cube, &cube).is_err());
        assert_eq!(sample_depths(32), [4, 12, 20, 28]);
    }

    #[test]
    fn loss_curve_draws_both_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        write_loss_curve(&path, &[1.0, 0.5, 0.2], &[1.2, 0.6, 0.3], Some(2)).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!((img.width(), img.height()), (720, 420));
        let count = |c: Rgb<u8>| img.pixels().filter(|p| **p == c).count();
        assert!(count(TRAIN) > 100 && count(VALID) > 100);
        // No finite values: axes only, still a picture.
        write_loss_curve(&path, &[f64::NAN], &[], None).unwrap();
    }
}
