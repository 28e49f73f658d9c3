"""Writes the small torch.save fixtures in tests/fixtures/ (committed, so
the checkpoint tests run without Python):

    .venv/bin/python crates/genesis-models/scripts/make_fixtures.py

- tiny_zip.pt: a flat state dict in the zip format (PyTorch >= 1.6);
- tiny_legacy.pt: a training checkpoint in the legacy format (PyTorch <= 1.5)
  with `module.` names under `state_dict`, storages tagged `cuda:0`.

The state dict holds deterministic values the Rust test checks:
`a.weight` = arange(6) as float32 (2, 3); `a.bias` = [1.5, -2.0] as float64;
`a.count` = 7 as an int64 scalar; `b.view` = [1, 3, 5] as float32, a strided
view at offset 1 of a 6-element storage; `b.t` = arange(6).view(2, 3).t()
(non-contiguous) as float32.
"""

import collections
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures")

FAKE_CUDA = [False]


def _tag(obj):
    return "cuda:0" if FAKE_CUDA[0] else None


def _restore(obj, location):
    return None


def state_dict(prefix=""):
    base = torch.arange(6, dtype=torch.float32)
    items = [
        ("a.weight", torch.arange(6, dtype=torch.float32).view(2, 3)),
        ("a.bias", torch.tensor([1.5, -2.0], dtype=torch.float64)),
        ("a.count", torch.tensor(7, dtype=torch.int64)),
        ("b.view", base[1::2]),
        ("b.t", torch.arange(6, dtype=torch.float32).view(2, 3).t()),
    ]
    return collections.OrderedDict((prefix + k, v) for k, v in items)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.save(state_dict(), os.path.join(OUT, "tiny_zip.pt"))
    torch.serialization.register_package(0, _tag, _restore)
    FAKE_CUDA[0] = True
    checkpoint = {"epoch": 1, "state_dict": state_dict("module."), "optimizer_state_dict": {"param_groups": []}}
    torch.save(checkpoint, os.path.join(OUT, "tiny_legacy.pt"), _use_new_zipfile_serialization=False)
    FAKE_CUDA[0] = False
    print(sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
