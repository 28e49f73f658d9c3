"""PyTorch eager reference for `cargo bench -p genesis-models --bench unet3d`.

    .venv/bin/python crates/genesis-models/scripts/bench_pytorch.py [--threads 2] [--repeats 10] [--device cuda]

Times the official UNet3D (from parity.py, a verbatim copy of the official
definition) on a (2, 1, 64, 64, 32) batch: a forward pass under no_grad, and
a training step (forward, MSE loss, backward, SGD step), after one warm-up
each; prints the median and the spread in milliseconds. On a GPU (`--device cuda`)
each timed step ends with `torch.cuda.synchronize()`, as the Rust bench does.
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


def timed(step, repeats, sync):
    step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = UNet3D().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.rand(*SHAPE, device=device)
    target = torch.rand(*SHAPE, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

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

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}, input {SHAPE}")
    for name, step in [("forward", forward), ("train_step_sgd", train_step)]:
        times = timed(step, args.repeats, sync)
        print(f"{name}: median {statistics.median(times) * 1e3:.2f} ms "
              f"(min {min(times) * 1e3:.2f}, max {max(times) * 1e3:.2f}, n={len(times)})")


if __name__ == "__main__":
    main()
