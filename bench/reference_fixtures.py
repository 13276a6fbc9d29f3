#!/usr/bin/env python3
"""PyTorch reference models and the fixtures of vidtrain's equality tests.

For each model: random weights (BatchNorm running statistics and ST-GCN's edge importance made
random too, so that evaluation mode exercises them), saved as a PyTorch state dict (`NAME.pth`,
and `NAME.safetensors` for one of them), and one input with the logits PyTorch computes for it
in evaluation mode, f32 (`NAME.json`). `crates/trainer/tests/pytorch_equality.rs` loads each
state dict through `model.pretrained` and compares vidtrain's logits (relative 1e-4).

- `r3d_18`: torchvision's `r3d_18` as torchvision builds it (400 classes, 33.4 M parameters).
- `stgcn`: ST-GCN written here from mmaction2's `STGCN` / `STGCNBlock` / `unit_gcn` /
  `unit_tcn` (`data_bn_type='VC'`, `adaptive='importance'`, spatial partitions), with its
  parameter names, on COCO-17 with mmaction2's `inward` edge list and its graph normalisation.
- `transformer`: the seed transformer of `bench/pytorch_reference.py`.
- `videomamba`, `mamba_kpt`: VideoMamba and the keypoint Mamba of `bench/mamba_reference.py`
  (sequential selective scan), with the gradient of `sum(logits · upstream)` with respect to
  the input as well.
- `selective_scan`: random scan inputs, the sequential recurrence's output and the gradients of
  x, delta, A, B, C and D (computed in float64).

    python3 bench/reference_fixtures.py OUT_DIR
    python3 bench/reference_fixtures.py check-export NAME FILE INPUT_JSON OUT_JSON

`check-export` is the other half of vidtrain's export round trip: it builds the reference module
of fixture NAME, loads FILE (a `vidtrain export`, `.safetensors` or `.pth`) with
`load_state_dict(strict=True)`, runs INPUT_JSON's input (vidtrain's layout) in evaluation mode
and writes the logits to OUT_JSON.

Needs torch and torchvision (`cargo xtask ci` installs them in a cache venv).
"""

import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_reference import VideoTransformer, Vivit  # noqa: E402
import mamba_reference  # noqa: E402

CLASSES = 9

# mmaction2's COCO layout (`mmaction/models/utils/graph.py`): edges towards the centre (nose).
COCO_INWARD = [
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 5), (12, 6), (9, 7), (7, 5),
    (10, 8), (8, 6), (5, 0), (6, 0), (1, 0), (3, 1), (2, 0), (4, 2),
]


def edge2mat(links, num_node):
    a = np.zeros((num_node, num_node))
    for i, j in links:
        a[j, i] = 1
    return a


def normalize_digraph(a, dim=0):
    dl = a.sum(dim)
    h, w = a.shape
    dn = np.zeros((w, w))
    for i in range(w):
        if dl[i] > 0:
            dn[i, i] = dl[i] ** (-1)
    return a @ dn


def spatial_adjacency(inward, num_node):
    outward = [(j, i) for (i, j) in inward]
    identity = edge2mat([(i, i) for i in range(num_node)], num_node)
    return np.stack(
        (identity, normalize_digraph(edge2mat(inward, num_node)),
         normalize_digraph(edge2mat(outward, num_node)))
    ).astype(np.float32)


class unit_gcn(nn.Module):  # noqa: N801 (mmaction2's name)
    def __init__(self, in_channels, out_channels, A):
        super().__init__()
        self.num_subsets = A.size(0)
        self.register_buffer("A", A)
        self.PA = nn.Parameter(torch.ones_like(A))
        self.conv = nn.Conv2d(in_channels, out_channels * self.num_subsets, 1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()

    def forward(self, x):
        n, c, t, v = x.shape
        x = self.conv(x)
        x = x.view(n, self.num_subsets, -1, t, v)
        x = torch.einsum("nkctv,kvw->nctw", (x, self.A * self.PA)).contiguous()
        return self.act(self.bn(x))


class unit_tcn(nn.Module):  # noqa: N801
    def __init__(self, in_channels, out_channels, kernel_size=9, stride=1, dropout=0.0):
        super().__init__()
        pad = (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, (kernel_size, 1), (stride, 1), (pad, 0))
        self.bn = nn.BatchNorm2d(out_channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.bn(self.conv(x)))


class STGCNBlock(nn.Module):
    def __init__(self, in_channels, out_channels, A, stride=1, residual=True):
        super().__init__()
        self.gcn = unit_gcn(in_channels, out_channels, A)
        self.tcn = unit_tcn(out_channels, out_channels, 9, stride=stride)
        self.relu = nn.ReLU()
        if not residual:
            self.residual = lambda x: 0
        elif in_channels == out_channels and stride == 1:
            self.residual = lambda x: x
        else:
            self.residual = unit_tcn(in_channels, out_channels, kernel_size=1, stride=stride)

    def forward(self, x):
        res = self.residual(x)
        return self.relu(self.tcn(self.gcn(x)) + res)


class STGCN(nn.Module):
    def __init__(self, A, in_channels=3, base_channels=64, num_stages=10,
                 inflate_stages=(5, 8), down_stages=(5, 8)):
        super().__init__()
        self.data_bn = nn.BatchNorm1d(in_channels * A.size(1))
        modules = [STGCNBlock(in_channels, base_channels, A.clone(), 1, residual=False)]
        for i in range(2, num_stages + 1):
            channels_in = base_channels
            if i in inflate_stages:
                base_channels *= 2
            stride = 1 + (i in down_stages)
            modules.append(STGCNBlock(channels_in, base_channels, A.clone(), stride))
        self.gcn = nn.ModuleList(modules)

    def forward(self, x):  # [N, M, T, V, C]
        n, m, t, v, c = x.size()
        x = x.permute(0, 1, 3, 4, 2).contiguous()
        x = self.data_bn(x.view(n * m, v * c, t))
        x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).contiguous().view(n * m, c, t, v)
        for block in self.gcn:
            x = block(x)
        return x.reshape((n, m) + x.shape[1:])


class RecognizerGCN(nn.Module):
    """mmaction2's `RecognizerGCN` naming: `backbone.*`, `cls_head.fc_cls.*`."""

    def __init__(self, A, base_channels):
        super().__init__()
        self.backbone = STGCN(A, base_channels=base_channels)
        self.cls_head = nn.Module()
        self.cls_head.fc_cls = nn.Linear(4 * base_channels, CLASSES)

    def forward(self, x):  # [N, M, T, V, C]
        features = self.backbone(x)  # [N, M, C, T, V]
        pooled = features.mean(dim=(3, 4)).mean(dim=1)
        return self.cls_head.fc_cls(pooled)


def randomise_buffers(model, generator):
    """Running statistics and edge importance away from their initial values."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(".PA"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)


def write(out, name, model, model_input, vidtrain_input, config, safetensors=False):
    model.eval()
    with torch.no_grad():
        logits = model(model_input)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    torch.save(state, os.path.join(out, f"{name}.pth"))
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, os.path.join(out, f"{name}.safetensors"))
    parameters = sum(p.numel() for p in model.parameters())
    with open(os.path.join(out, f"{name}.json"), "w") as file:
        json.dump(
            {
                "config": config,
                "parameters": parameters,
                "input_shape": list(vidtrain_input.shape),
                "input": vidtrain_input.flatten().tolist(),
                "logits_shape": list(logits.shape),
                "logits": logits.flatten().tolist(),
            },
            file,
        )
    print(f"{name}: {parameters} parameters, logits {list(logits.shape)}")


def write_with_input_gradient(out, name, model, model_input, config, generator):
    """Like `write`, plus `upstream` and the gradient of `sum(logits · upstream)` with respect
    to the input (vidtrain's layout is the model's here)."""
    write(out, name, model, model_input, model_input, config)
    leaf = model_input.clone().requires_grad_()
    logits = model(leaf)
    upstream = torch.randn(logits.shape, generator=generator)
    (logits * upstream).sum().backward()
    path = os.path.join(out, f"{name}.json")
    with open(path) as file:
        fixture = json.load(file)
    fixture["upstream"] = upstream.flatten().tolist()
    fixture["input_gradient"] = leaf.grad.flatten().tolist()
    with open(path, "w") as file:
        json.dump(fixture, file)


def randomise_mamba(model, generator):
    """A, D, Δ's bias and the norms away from their initial values."""
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith("a_log"):
                tensor.add_(torch.rand(tensor.shape, generator=generator) * 0.5)
            elif name.endswith(".d") or name.endswith("norm.weight"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("dt_proj.bias"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 2 - 3)


def write_selective_scan(out, generator):
    batch, length, inner, state = 2, 45, 6, 5
    def rand(*shape, low=-1.0, high=1.0):
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low)
                + low).requires_grad_()
    x, b, c = rand(batch, length, inner), rand(batch, length, state), rand(batch, length, state)
    delta = rand(batch, length, inner, low=0.01, high=1.5)
    a = (-torch.exp(torch.rand(inner, state, generator=generator, dtype=torch.float64) * 2.8)
         ).requires_grad_()
    d = rand(inner, low=0.5, high=1.5)
    y = mamba_reference.selective_scan(x, delta, a, b, c, d)
    upstream = torch.randn(y.shape, generator=generator, dtype=torch.float64)
    (y * upstream).sum().backward()
    values = lambda tensor: tensor.detach().flatten().tolist()  # noqa: E731
    fixture = {"shape": [batch, length, inner, state], "upstream": values(upstream),
               "y": values(y)}
    for name, tensor in [("x", x), ("delta", delta), ("a", a), ("b", b), ("c", c), ("d", d)]:
        fixture[name] = values(tensor)
        fixture[f"grad_{name}"] = values(tensor.grad)
    with open(os.path.join(out, "selective_scan.json"), "w") as file:
        json.dump(fixture, file)
    print(f"selective_scan: {batch}x{length}x{inner}x{state}")


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)

    import torchvision

    # torchvision's own head: 400 Kinetics classes (a run on 9 classes starts its head fresh).
    r3d = torchvision.models.video.r3d_18(weights=None)
    randomise_buffers(r3d, generator)
    clip = torch.rand(2, 8, 48, 48, 3, generator=generator)  # [n, t, h, w, 3]
    write(
        out, "r3d_18", r3d, clip.permute(0, 4, 1, 2, 3).contiguous(), clip[:, None],
        {"model.backbone": "3dcnn", "model.resnet_depth": 18, "model.resnet_width": 64,
         "model.model_class_num": 400, "data.class_names": [f"class_{i}" for i in range(400)],
         "model.input_type": "rgb", "data.img_size": 48, "data.uniform_temporal_subsample_num": 8},
        safetensors=True,
    )

    adjacency = torch.from_numpy(spatial_adjacency(COCO_INWARD, 17))
    stgcn = RecognizerGCN(adjacency, base_channels=16)
    randomise_buffers(stgcn, generator)
    joints = torch.randn(2, 20, 17, 3, generator=generator)  # [n, t, v, c]
    write(
        out, "stgcn_coco17", stgcn, joints[:, None], joints[:, None],
        {"model.backbone": "stgcn", "model.input_type": "kpt", "model.skeleton": "coco17",
         "model.stgcn_width": 16, "data.keypoint_indices": list(range(17)),
         "data.load_kpt": True, "data.load_rgb": False,
         "data.uniform_temporal_subsample_num": 20},
    )

    transformer = VideoTransformer(32, 2, 4, 64, 0.1, recompute=False)
    randomise_buffers(transformer, generator)
    clip = torch.rand(2, 6, 32, 32, 3, generator=generator)
    write(
        out, "transformer", transformer, clip.permute(0, 4, 1, 2, 3).contiguous(), clip[:, None],
        {"model.backbone": "transformer", "model.transformer_dim": 32,
         "model.transformer_layers": 2, "model.transformer_heads": 4,
         "model.transformer_ff_dim": 64, "model.input_type": "rgb", "data.img_size": 32,
         "data.uniform_temporal_subsample_num": 6},
    )

    main_mamba(out, generator)


def main_mamba(out, generator):
    write_selective_scan(out, generator)

    videomamba = mamba_reference.VideoMambaClassifier(
        CLASSES, dim=32, layers=2, tubelet=(2, 8, 8), clip=(4, 16, 16))
    randomise_mamba(videomamba, generator)
    clip = torch.rand(2, 1, 4, 16, 16, 3, generator=generator)
    write_with_input_gradient(
        out, "videomamba", videomamba, clip,
        {"model.backbone": "mamba", "model.mamba_dim": 32, "model.mamba_layers": 2,
         "model.tubelet_size": [2, 8, 8], "model.input_type": "rgb", "data.img_size": 16,
         "data.uniform_temporal_subsample_num": 4},
        generator,
    )

    keypoint_mamba = mamba_reference.KeypointMambaClassifier(CLASSES, joints=17, dim=24, layers=2)
    randomise_mamba(keypoint_mamba, generator)
    joints = torch.randn(2, 1, 30, 17, 3, generator=generator)
    write_with_input_gradient(
        out, "mamba_kpt", keypoint_mamba, joints,
        {"model.backbone": "mamba", "model.mamba_dim": 24, "model.mamba_layers": 2,
         "model.input_type": "kpt", "data.keypoint_indices": list(range(17)),
         "data.load_kpt": True, "data.load_rgb": False,
         "data.uniform_temporal_subsample_num": 30},
        generator,
    )


def reference_module(name):
    """The reference module of fixture `name`, as `main` builds it (weights aside), and the
    function that turns vidtrain's input layout into its own."""
    import torchvision

    frames_first = lambda x: x[:, 0].permute(0, 4, 1, 2, 3).contiguous()  # noqa: E731
    as_is = lambda x: x  # noqa: E731
    if name == "r3d_18":
        return torchvision.models.video.r3d_18(weights=None), frames_first
    if name == "stgcn_coco17":
        adjacency = torch.from_numpy(spatial_adjacency(COCO_INWARD, 17))
        return RecognizerGCN(adjacency, base_channels=16), as_is
    if name == "transformer":
        return VideoTransformer(32, 2, 4, 64, 0.1, recompute=False), frames_first
    if name == "vivit":
        return Vivit(32, 2, 4, 64, 0.1, (2, 8, 8), (4, 16, 16), recompute=False), frames_first
    if name == "videomamba":
        return mamba_reference.VideoMambaClassifier(
            CLASSES, dim=32, layers=2, tubelet=(2, 8, 8), clip=(4, 16, 16)), as_is
    if name == "mamba_kpt":
        return mamba_reference.KeypointMambaClassifier(
            CLASSES, joints=17, dim=24, layers=2), as_is
    raise SystemExit(f"no reference module named {name}")


def check_export(name, path, input_json, out_json):
    model, to_input = reference_module(name)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    with open(input_json) as file:
        given = json.load(file)
    x = torch.tensor(given["input"], dtype=torch.float32).reshape(given["input_shape"])
    with torch.no_grad():
        logits = model(to_input(x))
    with open(out_json, "w") as file:
        json.dump({"logits": logits.flatten().tolist(), "keys": len(state)}, file)


if __name__ == "__main__":
    if sys.argv[1] == "check-export":
        check_export(*sys.argv[2:6])
    else:
        main()
