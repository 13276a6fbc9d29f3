#!/usr/bin/env python3
"""The rows of `vidtrain bench-model` in plain PyTorch, for a side-by-side comparison.

Same models (the seed's conv-stem video transformer, ViViT-S with joint space-time attention,
torchvision's r3d_18 and mmaction2's ST-GCN), same shapes, PyTorch's default initialisation (which vidtrain's layers follow), Adam
at lr 1e-4, random inputs made on the device, `warmup` optimizer steps (the first one timed alone)
then `steps` timed ones with the device synchronised around them. Mixed precision is PyTorch's
autocast (bf16, or fp16 with a GradScaler); recompute is torch.utils.checkpoint on each stem stage
and each encoder block, where vidtrain recomputes too. Optionally one row through Lightning.

    python3 bench/pytorch_reference.py --out pytorch.json            # on a GPU
    python3 bench/pytorch_reference.py --tiny --device cpu           # checks the script itself

Prints a table and writes JSON rows with the same keys as vidtrain's.

    python3 bench/pytorch_reference.py --backbone transformer --flops --gemm-peak --out x.json

writes instead the model's training FLOPs per sample (one fp32 forward + backward at micro-batch
1, counted by torch.utils.flop_counter: matrix products and convolutions, no recompute) and this
CPU's measured matrix-product peak (f32 and bf16), for `cargo xtask bench cpu`'s GFLOP/s columns.
"""

import argparse
import json
import math
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

CLASSES = 9


def sinusoidal_positions(tokens, dim, device):
    position = torch.arange(tokens, device=device, dtype=torch.float32)[:, None]
    pair = torch.arange(dim // 2, device=device, dtype=torch.float32)
    frequency = 1.0 / (10000.0 ** (2.0 * pair / dim))
    angles = position * frequency
    table = torch.zeros(tokens, dim, device=device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table


class EncoderBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + ff(norm(x)) (GELU), dropout as vidtrain's."""

    def __init__(self, dim, heads, ff_dim, dropout):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            dim, heads, ff_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )

    def forward(self, x):
        return self.layer(x)


class VideoTransformer(nn.Module):
    """The seed's model: Conv3d stem, spatial mean, sinusoidal positions, encoder, mean pool."""

    def __init__(self, dim, layers, heads, ff_dim, dropout, recompute):
        super().__init__()
        half = dim // 2
        self.stage1 = nn.Sequential(
            nn.Conv3d(3, half, (3, 7, 7), (1, 2, 2), (1, 3, 3)), nn.BatchNorm3d(half), nn.ReLU()
        )
        self.stage2 = nn.Sequential(
            nn.Conv3d(half, dim, (1, 3, 3), (1, 2, 2), (0, 1, 1)), nn.BatchNorm3d(dim), nn.ReLU()
        )
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, ff_dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, CLASSES)
        self.recompute = recompute

    def run(self, module, x):
        if self.recompute and self.training:
            return checkpoint(module, x, use_reentrant=False)
        return module(x)

    def forward(self, video):  # [n, 3, t, h, w]
        x = self.run(self.stage1, video)
        x = self.run(self.stage2, x)
        x = x.mean(dim=(3, 4)).transpose(1, 2)  # [n, t, dim]
        x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device).to(x.dtype)
        for block in self.blocks:
            x = self.run(block, x)
        x = self.norm(x).mean(dim=1)
        return self.head(self.dropout(x))


class Vivit(nn.Module):
    """ViViT model 1: tubelet embedding, learned positions, joint space-time blocks, mean pool."""

    def __init__(self, dim, layers, heads, ff_dim, dropout, tubelet, clip, recompute):
        super().__init__()
        self.embedding = nn.Conv3d(3, dim, tubelet, tubelet)
        tokens = math.prod(c // t for c, t in zip(clip, tubelet))
        self.positions = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, ff_dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, CLASSES)
        self.recompute = recompute

    def forward(self, video):  # [n, 3, t, h, w]
        x = self.embedding(video).flatten(2).transpose(1, 2) + self.positions
        for block in self.blocks:
            if self.recompute and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.norm(x).mean(dim=1)
        return self.head(self.dropout(x))


class R3d(nn.Module):
    """torchvision's r3d_18 (the 3-D ResNet vidtrain loads weights from), CLASSES outputs;
    recompute is torch.utils.checkpoint on the stem and each of the four stages."""

    def __init__(self, recompute):
        super().__init__()
        import torchvision

        self.net = torchvision.models.video.r3d_18(weights=None, num_classes=CLASSES)
        self.recompute = recompute

    def forward(self, video):  # [n, 3, t, h, w]
        net, x = self.net, video
        for stage in [net.stem, net.layer1, net.layer2, net.layer3, net.layer4]:
            if self.recompute and self.training:
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return net.fc(net.avgpool(x).flatten(1))


class Stgcn(nn.Module):
    """mmaction2's ST-GCN (`bench/reference_fixtures.py`, its modules written from mmaction2's)
    over `joints` joints joined in a chain (the partitions' sizes, not the seed's edges, set the
    cost), width `width`, dropout 0.1 in the temporal units as vidtrain's; mean over time and
    joints, then the classifier. Recompute is torch.utils.checkpoint on each block."""

    def __init__(self, joints, width, recompute):
        super().__init__()
        import reference_fixtures as ref

        chain = [(i, i - 1) for i in range(1, joints)]
        adjacency = torch.from_numpy(ref.spatial_adjacency(chain, joints))
        self.backbone = ref.STGCN(adjacency, base_channels=width)
        for block in self.backbone.gcn:
            block.tcn.drop = nn.Dropout(0.1)
        self.head = nn.Linear(4 * width, CLASSES)
        self.recompute = recompute

    def forward(self, keypoints):  # [n, t, joints, 3]
        net = self.backbone
        x = keypoints.unsqueeze(1)  # [N, M = 1, T, V, C]
        n, m, t, v, c = x.shape
        x = x.permute(0, 1, 3, 4, 2).contiguous()
        x = net.data_bn(x.view(n * m, v * c, t))
        x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).contiguous().view(n * m, c, t, v)
        for block in net.gcn:
            if self.recompute and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.head(x.mean(dim=(2, 3)))


def inputs(row, micro_batch, device):
    """A micro-batch of random input: clips `[n, 3, t, h, w]`, or ST-GCN's keypoints
    `[n, t, joints, 3]`."""
    if row["backbone"] == "stgcn":
        return torch.rand((micro_batch, row["frames"], STGCN_JOINTS, 3), device=device)
    return torch.rand((micro_batch, 3, row["frames"], row["image"], row["image"]), device=device)


# vidtrain's default keypoints: the seed's 52 SAM-3D-body joints.
STGCN_JOINTS = 52


def standard_rows(backbone, tiny):
    """The rows of `vidtrain bench-model` (crates/trainer/src/model_bench.rs), same names."""
    if tiny:
        frames, image, small = 4, 32, 16
    elif backbone == "transformer":
        frames, image, small = 8, 224, 112
    elif backbone == "r3d":  # torchvision's R3D clips
        frames, image, small = 16, 112, 112
    elif backbone == "stgcn":  # 64 frames of keypoints (the image size is not read)
        frames, image, small = 64, 32, 112
    else:
        frames, image, small = 16, 224, 112
    row = lambda name, precision, mb, acc, recompute, t, s: dict(  # noqa: E731
        name=name, backbone=backbone, precision=precision, micro_batch=mb, accumulate=acc,
        recompute=recompute, frames=t, image=s)
    return [
        row("fp32 b4", "32", 4, 1, False, frames, image),
        row("bf16 b4", "bf16", 4, 1, False, frames, image),
        row("fp16 b4", "16", 4, 1, False, frames, image),
        row("fp32 b1x4", "32", 1, 4, False, frames, image),
        row("bf16 b1x4", "bf16", 1, 4, False, frames, image),
        row("bf16 b1x4 recompute", "bf16", 1, 4, True, frames, image),
        row("bf16 b1x4 recompute 112px", "bf16", 1, 4, True, 8, small),
        # Each side's leanest at micro-batch 4: here bf16 autocast + checkpointing; vidtrain's
        # row keeps f32 with 4-bit kept activations besides (PyTorch has no such switch).
        row("lowest b4", "bf16", 4, 1, True, frames, image),
    ]


def build(row, tiny):
    if row["backbone"] == "r3d":
        return R3d(row["recompute"])
    if row["backbone"] == "stgcn":
        return Stgcn(STGCN_JOINTS, 8 if tiny else 64, row["recompute"])
    if tiny:
        dim, layers, heads, ff = 32, 2, 2, 64
        tubelet = (2, 8, 8)
    elif row["backbone"] == "transformer":
        dim, layers, heads, ff = 256, 4, 4, 1024
        tubelet = (2, 16, 16)
    else:
        dim, layers, heads, ff = 384, 12, 6, 1536
        tubelet = (2, 16, 16)
    if row["backbone"] == "transformer":
        return VideoTransformer(dim, layers, heads, ff, 0.1, row["recompute"])
    clip = (row["frames"], row["image"], row["image"])
    return Vivit(dim, layers, heads, ff, 0.1, tubelet, clip, row["recompute"])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_row(row, device, warmup, steps, tiny):
    torch.manual_seed(42)
    model = build(row, tiny).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    precision = row["precision"]
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision)
    # fp16 and bf16 autocast both run on the CPU too (PyTorch >= 2.4), as on CUDA.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    first_step_s, final_loss, timed_from = None, None, None
    for step in range(max(warmup, 1) + steps):
        if step == max(warmup, 1):
            sync(device)
            timed_from = time.perf_counter()
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(row["accumulate"]):
            video = inputs(row, row["micro_batch"], device)
            labels = torch.randint(0, CLASSES, (row["micro_batch"],), device=device)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = F.cross_entropy(model(video).float(), labels) / row["accumulate"]
            scaler.scale(loss).backward()
            step_loss += loss.item()
        scaler.step(optimizer)
        scaler.update()
        sync(device)
        if step == 0:
            first_step_s = time.perf_counter() - started
        final_loss = step_loss
    elapsed = time.perf_counter() - timed_from
    samples = steps * row["micro_batch"] * row["accumulate"]
    result = dict(
        row=row,
        samples_per_s=samples / elapsed if steps else None,
        first_step_s=first_step_s,
        peak_device_in_use_bytes=None,
        peak_device_reserved_bytes=None,
        peak_host_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        final_loss=final_loss,
        error=None,
    )
    if device.type == "cuda":
        result["peak_device_in_use_bytes"] = torch.cuda.max_memory_allocated(device)
        result["peak_device_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    return result


def training_flops_per_sample(row, device, tiny):
    """FLOPs of one training step's forward and backward per sample, fp32, without recompute."""
    torch.manual_seed(42)
    row = dict(row, recompute=False)
    model = build(row, tiny).to(device).train()
    video = inputs(row, 1, device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(video), torch.zeros(1, dtype=torch.long, device=device)).backward()
    return counter.get_total_flops()


def gemm_peak_gflops(device, size=2048, repeats=5):
    """The best of `repeats` products of two `size`² matrices, GFLOP/s, in f32 and bf16."""
    peaks = {}
    for name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
        a = torch.rand(size, size, device=device, dtype=dtype)
        b = torch.rand(size, size, device=device, dtype=dtype)
        torch.mm(a, b)
        best = math.inf
        for _ in range(repeats):
            sync(device)
            started = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            best = min(best, time.perf_counter() - started)
        peaks[name] = 2 * size**3 / best / 1e9
    return peaks


def lightning_row(device, warmup, steps, tiny):
    """One row (the seed model, bf16-mixed, batch 1 × 4 accumulation) through Lightning."""
    try:
        import lightning as L
    except ImportError:
        try:
            import pytorch_lightning as L
        except ImportError:
            return None
    row = standard_rows("transformer", tiny)[4] | {"name": "bf16 b1x4 (Lightning)"}
    if device.type != "cuda":
        return dict(row=row, error="bf16-mixed needs a CUDA device")

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = build(row, tiny)

        def training_step(self, batch, _):
            video, labels = batch
            return F.cross_entropy(self.model(video).float(), labels)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-4)

    shape = (3, row["frames"], row["image"], row["image"])
    batches = (max(warmup, 1) + steps) * row["accumulate"]
    data = [(torch.rand(shape), torch.randint(0, CLASSES, ()).item()) for _ in range(batches)]
    loader = torch.utils.data.DataLoader(data, batch_size=1)
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_epochs=1,
                        accumulate_grad_batches=row["accumulate"], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)
    torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    trainer.fit(Module(), loader)
    elapsed = time.perf_counter() - started
    return dict(row=row, samples_per_s=batches / elapsed, first_step_s=None,
                peak_device_in_use_bytes=torch.cuda.max_memory_allocated(device),
                peak_device_reserved_bytes=torch.cuda.max_memory_reserved(device),
                peak_host_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                final_loss=None, error=None,
                note="includes warm-up and data loading; samples/s over the whole fit")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", choices=["transformer", "vivit", "r3d", "stgcn", "both"],
                        default="both")
    parser.add_argument("--rows", default="", help="comma-separated name filters")
    parser.add_argument("--exact", action="store_true", help="--rows names whole rows")
    parser.add_argument("--frames", type=int, help="frames per clip of every row")
    parser.add_argument("--image", type=int, help="frame side of every row")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lightning", action="store_true", help="add the Lightning row")
    parser.add_argument("--out")
    parser.add_argument("--flops", action="store_true",
                        help="write each model's training FLOPs per sample instead of timing rows")
    parser.add_argument("--gemm-peak", action="store_true",
                        help="with --flops: also measure the f32 and bf16 matrix-product peak")
    args = parser.parse_args()
    device = torch.device(args.device)
    backbones = ["transformer", "vivit"] if args.backbone == "both" else [args.backbone]
    filters = [name for name in args.rows.split(",") if name]
    if args.threads:
        torch.set_num_threads(args.threads)
    matches = (lambda name, row: name == row["name"]) if args.exact else \
        (lambda name, row: name in row["name"])
    rows = [row for backbone in backbones for row in standard_rows(backbone, args.tiny)
            if not filters or any(matches(name, row) for name in filters)]
    for row in rows:
        row["frames"] = args.frames or row["frames"]
        row["image"] = args.image or row["image"]
    if args.flops:
        counted = {"flops_per_sample": {}}
        for row in rows:
            if row["backbone"] not in counted["flops_per_sample"]:
                counted["flops_per_sample"][row["backbone"]] = training_flops_per_sample(
                    row, device, args.tiny)
        if args.gemm_peak:
            counted["gemm_peak_gflops"] = gemm_peak_gflops(device)
        print(json.dumps(counted))
        if args.out:
            with open(args.out, "w") as out:
                json.dump(counted, out, indent=2)
        return 0
    results = []
    print(f"  {'model':<11} {'row':<27} {'samples/s':>10} {'first s':>8} {'allocated':>10} "
          f"{'reserved':>10} {'loss':>8}")
    mib = lambda b: "n/a" if b is None else f"{b / 2**20:.0f} MiB"  # noqa: E731
    for row in rows:
        try:
            result = bench_row(row, device, args.warmup, args.steps, args.tiny)
        except torch.cuda.OutOfMemoryError as error:  # reported, the next row still runs
            result = dict(row=row, error=f"out of memory: {error}")
        results.append(result)
        print(f"  {row['backbone']:<11} {row['name']:<27} "
              f"{result.get('samples_per_s') or float('nan'):>10.2f} "
              f"{result.get('first_step_s') or float('nan'):>8.2f} "
              f"{mib(result.get('peak_device_in_use_bytes')):>10} "
              f"{mib(result.get('peak_device_reserved_bytes')):>10} "
              f"{result.get('final_loss') or float('nan'):>8.4f}"
              + (f"  ({result['error']})" if result.get("error") else ""), flush=True)
        if args.out:
            with open(args.out, "w") as out:
                json.dump(results, out, indent=2)
    if args.lightning:
        result = lightning_row(device, args.warmup, args.steps, args.tiny)
        if result is not None:
            results.append(result)
            print(f"  lightning: {result}")
    if args.out:
        with open(args.out, "w") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
