"""PyTorch eager reference for `cargo bench -p genesis-models --bench unet3d`.

    .venv/bin/python crates/genesis-models/scripts/bench_pytorch.py [--threads 2] [--repeats 10]

Times the official UNet3D (from parity.py, a verbatim copy of the official
definition) on a (2, 1, 64, 64, 32) batch: a forward pass under no_grad, and
a training step (forward, MSE loss, backward, SGD step), after one warm-up
each; prints the median and the spread in seconds.
"""

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity import UNet3D  # noqa: E402

SHAPE = (2, 1, 64, 64, 32)


def timed(step, repeats):
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = UNet3D()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.rand(*SHAPE)
    target = torch.rand(*SHAPE)

    def forward():
        model.eval()
        with torch.no_grad():
            model(x)

    def train_step():
        model.train()
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), target)
        loss.backward()
        optimizer.step()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {SHAPE}")
    for name, step in [("forward", forward), ("train_step_sgd", train_step)]:
        times = timed(step, args.repeats)
        print(f"{name}: median {statistics.median(times):.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f}, n={len(times)})")


if __name__ == "__main__":
    main()
