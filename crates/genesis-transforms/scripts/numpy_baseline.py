"""Times Models Genesis pair generation written the way the original NumPy code does it.

The published code (pytorch/utils.py of MrGiovanni/ModelsGenesis) makes each training
pair with Python loops over NumPy calls: 10,000 `np.random.shuffle` calls on small
windows for local pixel shuffling, a 100,000-sample Bezier curve sorted and passed to
`np.interp` for the non-linear map, `np.random.rand` boxes for the paintings. This script
follows the same rules and calls (see issue #4 and crates/genesis-transforms), so its
rate is the baseline the Rust crate is compared with in docs/benchmarks.md.

Usage (NumPy is not part of the project's environment):

    .venv/bin/pip install numpy
    .venv/bin/python crates/genesis-transforms/scripts/numpy_baseline.py [--pairs 100]

It prints the single-threaded rate for 64x64x32 float32 cubes with the paper's rates.
"""

import argparse
import math
import random
import time

import numpy as np


def bezier_map(x, n_samples=100_000):
    points = [[0, 0], [random.random(), random.random()], [random.random(), random.random()], [1, 1]]
    xs = np.array([p[0] for p in points])
    ys = np.array([p[1] for p in points])
    t = np.linspace(0.0, 1.0, n_samples)
    # Bernstein weights ordered so that t = 0 sits at the last control point.
    weights = np.array([math.comb(3, i) * t ** (3 - i) * (1 - t) ** i for i in range(4)])
    xvals = np.dot(xs, weights)
    yvals = np.dot(ys, weights)
    if random.random() < 0.5:
        xvals = np.sort(xvals)  # inverting map
    else:
        xvals, yvals = np.sort(xvals), np.sort(yvals)
    return np.interp(x, xvals, yvals)


def local_shuffle(x, n_blocks=10_000):
    rows, cols, deps = x.shape
    original = x.copy()
    out = x.copy()
    for _ in range(n_blocks):
        bx = random.randint(1, rows // 10)
        by = random.randint(1, cols // 10)
        bz = random.randint(1, deps // 10)
        ox = random.randint(0, rows - bx)
        oy = random.randint(0, cols - by)
        oz = random.randint(0, deps - bz)
        window = original[ox:ox + bx, oy:oy + by, oz:oz + bz].flatten()
        np.random.shuffle(window)
        out[ox:ox + bx, oy:oy + by, oz:oz + bz] = window.reshape((bx, by, bz))
    return out


def in_paint(x):
    rows, cols, deps = x.shape
    count = 5
    while count > 0 and random.random() < 0.95:
        bx = random.randint(rows // 6, rows // 3)
        by = random.randint(cols // 6, cols // 3)
        bz = random.randint(deps // 6, deps // 3)
        ox = random.randint(3, rows - bx - 3)
        oy = random.randint(3, cols - by - 3)
        oz = random.randint(3, deps - bz - 3)
        x[ox:ox + bx, oy:oy + by, oz:oz + bz] = np.random.rand(bx, by, bz)
        count -= 1
    return x


def out_paint(x):
    rows, cols, deps = x.shape
    kept = x.copy()
    x = np.random.rand(rows, cols, deps)

    def restore():
        bx = rows - random.randint(3 * rows // 7, 4 * rows // 7)
        by = cols - random.randint(3 * cols // 7, 4 * cols // 7)
        bz = deps - random.randint(3 * deps // 7, 4 * deps // 7)
        ox = random.randint(3, rows - bx - 3)
        oy = random.randint(3, cols - by - 3)
        oz = random.randint(3, deps - bz - 3)
        x[ox:ox + bx, oy:oy + by, oz:oz + bz] = kept[ox:ox + bx, oy:oy + by, oz:oz + bz]

    restore()
    count = 4
    while count > 0 and random.random() < 0.95:
        restore()
        count -= 1
    return x


def pair(cube):
    target = cube.copy()
    x = cube.copy()
    for _ in range(3):
        if random.random() >= 0.4:
            break
        axis = random.choice([0, 1, 2])
        target = np.flip(target, axis=axis)
        x = np.flip(x, axis=axis)
    if random.random() < 0.5:
        x = local_shuffle(x)
    if random.random() < 0.9:
        x = bezier_map(x)
    if random.random() < 0.9:
        x = in_paint(x) if random.random() < 0.2 else out_paint(x)
    return x, target


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    random.seed(args.seed)
    np.random.seed(args.seed)
    i, j, k = np.meshgrid(np.arange(64), np.arange(64), np.arange(32), indexing="ij")
    cube = (0.1 + 0.8 * ((i * 7 + j * 3 + k * 5) % 97) / 97.0).astype(np.float32)
    pair(cube)  # warm-up
    start = time.process_time()
    for _ in range(args.pairs):
        pair(cube)
    seconds = time.process_time() - start
    print(f"{args.pairs} pairs in {seconds:.2f} s CPU: {args.pairs / seconds:.1f} pairs/s "
          f"({1000 * seconds / args.pairs:.1f} ms per pair), NumPy {np.__version__}")


if __name__ == "__main__":
    main()
