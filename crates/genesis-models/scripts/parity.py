"""Reference side of the genesis-models parity test.

Run with the project's venv (torch installed; numpy and safetensors are
optional):

    .venv/bin/python crates/genesis-models/scripts/parity.py gen OUT_DIR
    .venv/bin/python crates/genesis-models/scripts/parity.py check OUR.safetensors OUT_DIR

`gen` builds the official Models Genesis UNet3D (the class definitions below
are copied verbatim from MrGiovanni/ModelsGenesis, pytorch/unet3d.py), gives
its batch norms non-trivial affine parameters and running statistics, and
writes into OUT_DIR:

- the weights with torch.save in both formats and several layouts:
  `zip_flat.pt`, `legacy_flat.pt` (flat state dicts; two entries share one
  storage at an offset and one is non-contiguous), `zip_nested_module.pt`,
  `legacy_nested_module.pt` (a training checkpoint: `epoch`,
  `state_dict` with DataParallel's `module.` prefix,
  `optimizer_state_dict`, a float64 tensor outside the state dict; the
  legacy one tags every storage `cuda:0`, as the published
  Genesis_Chest_CT.pt does);
- `expected.safetensors`: the input, the outputs in eval mode with standard
  batch norm (running statistics), in eval mode and in training mode with
  the original batch norm (batch statistics), two running statistics after
  those two forward passes, and two gradients of a loss on the training
  output.

`check` loads our exported safetensors into the official network with
`load_state_dict(strict=True)` and checks every entry equals `zip_flat.pt`.
It prints `OK` and exits 0 on success.
"""

import collections
import json
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---- official definition (pytorch/unet3d.py), verbatim ----------------------


class ContBatchNorm3d(nn.modules.batchnorm._BatchNorm):
    def _check_input_dim(self, input):

        if input.dim() != 5:
            raise ValueError('expected 5D input (got {}D input)'.format(input.dim()))
        #super(ContBatchNorm3d, self)._check_input_dim(input)

    def forward(self, input):
        self._check_input_dim(input)
        return F.batch_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias,
            True, self.momentum, self.eps)


class LUConv(nn.Module):
    def __init__(self, in_chan, out_chan, act):
        super(LUConv, self).__init__()
        self.conv1 = nn.Conv3d(in_chan, out_chan, kernel_size=3, padding=1)
        self.bn1 = ContBatchNorm3d(out_chan)

        if act == 'relu':
            self.activation = nn.ReLU(out_chan)
        elif act == 'prelu':
            self.activation = nn.PReLU(out_chan)
        elif act == 'elu':
            self.activation = nn.ELU(inplace=True)
        else:
            raise

    def forward(self, x):
        out = self.activation(self.bn1(self.conv1(x)))
        return out


def _make_nConv(in_channel, depth, act, double_chnnel=False):
    if double_chnnel:
        layer1 = LUConv(in_channel, 32 * (2 ** (depth+1)),act)
        layer2 = LUConv(32 * (2 ** (depth+1)), 32 * (2 ** (depth+1)),act)
    else:
        layer1 = LUConv(in_channel, 32*(2**depth),act)
        layer2 = LUConv(32*(2**depth), 32*(2**depth)*2,act)

    return nn.Sequential(layer1,layer2)


class DownTransition(nn.Module):
    def __init__(self, in_channel,depth, act):
        super(DownTransition, self).__init__()
        self.ops = _make_nConv(in_channel, depth,act)
        self.maxpool = nn.MaxPool3d(2)
        self.current_depth = depth

    def forward(self, x):
        if self.current_depth == 3:
            out = self.ops(x)
            out_before_pool = out
        else:
            out_before_pool = self.ops(x)
            out = self.maxpool(out_before_pool)
        return out, out_before_pool

class UpTransition(nn.Module):
    def __init__(self, inChans, outChans, depth,act):
        super(UpTransition, self).__init__()
        self.depth = depth
        self.up_conv = nn.ConvTranspose3d(inChans, outChans, kernel_size=2, stride=2)
        self.ops = _make_nConv(inChans+ outChans//2,depth, act, double_chnnel=True)

    def forward(self, x, skip_x):
        out_up_conv = self.up_conv(x)
        concat = torch.cat((out_up_conv,skip_x),1)
        out = self.ops(concat)
        return out


class OutputTransition(nn.Module):
    def __init__(self, inChans, n_labels):

        super(OutputTransition, self).__init__()
        self.final_conv = nn.Conv3d(inChans, n_labels, kernel_size=1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        out = self.sigmoid(self.final_conv(x))
        return out

class UNet3D(nn.Module):
    # the number of convolutions in each layer corresponds
    # to what is in the actual prototxt, not the intent
    def __init__(self, n_class=1, act='relu'):
        super(UNet3D, self).__init__()

        self.down_tr64 = DownTransition(1,0,act)
        self.down_tr128 = DownTransition(64,1,act)
        self.down_tr256 = DownTransition(128,2,act)
        self.down_tr512 = DownTransition(256,3,act)

        self.up_tr256 = UpTransition(512, 512,2,act)
        self.up_tr128 = UpTransition(256,256, 1,act)
        self.up_tr64 = UpTransition(128,128,0,act)
        self.out_tr = OutputTransition(64, n_class)

    def forward(self, x):
        self.out64, self.skip_out64 = self.down_tr64(x)
        self.out128,self.skip_out128 = self.down_tr128(self.out64)
        self.out256,self.skip_out256 = self.down_tr256(self.out128)
        self.out512,self.skip_out512 = self.down_tr512(self.out256)

        self.out_up_256 = self.up_tr256(self.out512,self.skip_out256)
        self.out_up_128 = self.up_tr128(self.out_up_256, self.skip_out128)
        self.out_up_64 = self.up_tr64(self.out_up_128, self.skip_out64)
        self.out = self.out_tr(self.out_up_64)

        return self.out

# ---- end of the official definition -----------------------------------------

INPUT_SHAPE = (1, 1, 32, 32, 16)
BUFFERS_AFTER = ["down_tr64.ops.0.bn1.running_mean", "up_tr64.ops.1.bn1.running_var"]
GRADIENTS = ["down_tr64.ops.0.conv1.weight", "out_tr.final_conv.weight"]

_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}
_TORCH_DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}


def write_safetensors(tensors, path):
    """A minimal safetensors writer, so the script needs no extra package."""
    header, blobs, offset = {}, [], 0
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous().cpu()
        data = tensor.view(torch.uint8).flatten().tolist() if tensor.numel() else []
        blob = bytes(data)
        header[name] = {
            "dtype": _DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path):
    try:
        from safetensors.torch import load_file
    except ImportError:
        load_file = None
    if load_file is not None:
        print("reading with safetensors.torch.load_file")
        return load_file(path)
    print("safetensors is not installed; reading with the script's own reader")
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = bytearray(data[start:end])
        dtype = _TORCH_DTYPES[info["dtype"]]
        tensor = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        out[name] = tensor.reshape(info["shape"]).clone()
    return out


def standard_batch_norm_forward(self, input):
    """nn.BatchNorm3d semantics: running statistics in eval mode."""
    return F.batch_norm(
        input, self.running_mean, self.running_var, self.weight, self.bias,
        self.training, self.momentum, self.eps)


FAKE_CUDA = [False]


def _tag_as_cuda(obj):
    return "cuda:0" if FAKE_CUDA[0] else None


def _never_restore(obj, location):
    return None


def ordered(items, metadata):
    """A state dict as `Module.state_dict()` makes it: an OrderedDict with a
    `_metadata` attribute (pickled through BUILD after the items)."""
    state = collections.OrderedDict(items)
    state._metadata = metadata
    return state


def with_views(state):
    """Same values; two entries share a storage at an offset, one is
    non-contiguous."""
    state = ordered(state.items(), state._metadata)
    weight = state["out_tr.final_conv.weight"]
    bias = state["out_tr.final_conv.bias"]
    shared = torch.zeros(5 + weight.numel() + bias.numel())
    state["out_tr.final_conv.weight"] = shared[5:5 + weight.numel()].view(weight.shape)
    state["out_tr.final_conv.bias"] = shared[5 + weight.numel():].view(bias.shape)
    state["out_tr.final_conv.weight"].copy_(weight)
    state["out_tr.final_conv.bias"].copy_(bias)
    name = "up_tr64.ops.1.conv1.weight"
    original = state[name]
    state[name] = original.permute(4, 3, 2, 1, 0).contiguous().permute(4, 3, 2, 1, 0)
    assert not state[name].is_contiguous()
    assert torch.equal(state[name], original)
    return state


def gen(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = UNet3D(n_class=1, act="relu")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ContBatchNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(7)
    original = model.state_dict()
    state = ordered(((k, v.clone()) for k, v in original.items()), original._metadata)

    torch.save(with_views(state), os.path.join(out_dir, "zip_flat.pt"))
    torch.save(with_views(state), os.path.join(out_dir, "legacy_flat.pt"),
               _use_new_zipfile_serialization=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    checkpoint = {
        "epoch": 3,
        "state_dict": ordered((("module." + k, v) for k, v in state.items()), state._metadata),
        "optimizer_state_dict": optimizer.state_dict(),
        "best_loss": 0.25,
        # A tensor outside the state dict, of another element type: the
        # legacy reader must skip its storage record.
        "running_metrics": torch.arange(5, dtype=torch.float64),
    }
    torch.save(checkpoint, os.path.join(out_dir, "zip_nested_module.pt"))
    torch.serialization.register_package(0, _tag_as_cuda, _never_restore)
    FAKE_CUDA[0] = True
    try:
        torch.save(checkpoint, os.path.join(out_dir, "legacy_nested_module.pt"),
                   _use_new_zipfile_serialization=False)
    finally:
        FAKE_CUDA[0] = False

    x = torch.randn(*INPUT_SHAPE)
    expected = {"input": x}
    original_forward = ContBatchNorm3d.forward
    ContBatchNorm3d.forward = standard_batch_norm_forward
    try:
        model.eval()
        with torch.no_grad():
            expected["out_eval_running"] = model(x)
    finally:
        ContBatchNorm3d.forward = original_forward
    model.eval()
    with torch.no_grad():
        expected["out_eval_batch"] = model(x)
    model.train()
    out = model(x)
    expected["out_train_batch"] = out.detach()
    loss = ((out - 0.5) ** 2).mean()
    loss.backward()
    parameters = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    for name in BUFFERS_AFTER:
        expected["after." + name] = buffers[name]
    for name in GRADIENTS:
        expected["grad." + name] = parameters[name].grad
    write_safetensors(expected, os.path.join(out_dir, "expected.safetensors"))
    print("wrote", sorted(os.listdir(out_dir)))


def check(ours, out_dir):
    state = read_safetensors(ours)
    model = UNet3D(n_class=1, act="relu")
    model.load_state_dict(state, strict=True)
    reference = torch.load(os.path.join(out_dir, "zip_flat.pt"), map_location="cpu")
    loaded = model.state_dict()
    bad = [k for k, v in reference.items() if loaded[k].dtype != v.dtype or not torch.equal(loaded[k], v)]
    if bad or state["down_tr64.ops.0.bn1.num_batches_tracked"].dtype != torch.int64:
        print("MISMATCH", bad[:5])
        sys.exit(1)
    print("OK", len(state), "entries loaded with strict=True")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "gen":
        gen(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    else:
        print(__doc__)
        sys.exit(2)
