"""Mamba and VideoMamba in plain PyTorch, written from the papers' equations: the reference that
vidtrain's chunked selective scan and Mamba backbones are tested against.

The selective scan is the recurrence of Gu & Dao (2023), Algorithm 2, one time step at a time:

    h_t = exp(delta_t * A) * h_{t-1} + (delta_t * x_t) B_t
    y_t = C_t . h_t + D * x_t

No chunking, no parallel scan, no fused kernel: the slowest and plainest form, so that any
difference is vidtrain's. Parameter names follow vidtrain's modules (`backbone.blocks.0.in_proj`,
`...directions.1.a_log`), so a state dict of these models loads through `model.pretrained` as it
is; Linear weights are PyTorch's `[out, in]` (Burn's loader transposes them).

Used by `bench/reference_fixtures.py` (fixtures for `cargo xtask ci`).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def selective_scan(x, delta, a, b, c, d):
    """x, delta: [batch, length, inner]; a: [inner, state]; b, c: [batch, length, state];
    d: [inner]. Returns y: [batch, length, inner]."""
    batch, length, inner = x.shape
    h = x.new_zeros(batch, inner, a.shape[1])
    outputs = []
    for t in range(length):
        decay = torch.exp(delta[:, t, :, None] * a)  # [batch, inner, state]
        h = decay * h + (delta[:, t] * x[:, t])[:, :, None] * b[:, t, None, :]
        outputs.append((h * c[:, t, None, :]).sum(-1) + d * x[:, t])
    return torch.stack(outputs, dim=1)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class MambaDirection(nn.Module):
    """One scan direction: causal depthwise Conv1d + SiLU, x/dt projections, A_log, D."""

    def __init__(self, inner, state, rank, kernel):
        super().__init__()
        self.conv_weight = nn.Parameter(torch.empty(inner, 1, kernel).uniform_(-0.5, 0.5))
        self.conv_bias = nn.Parameter(torch.empty(inner).uniform_(-0.5, 0.5))
        self.x_proj = nn.Linear(inner, rank + 2 * state, bias=False)
        self.dt_proj = nn.Linear(rank, inner)
        self.a_log = nn.Parameter(torch.log(torch.arange(1, state + 1).float()).repeat(inner, 1))
        self.d = nn.Parameter(torch.ones(inner))
        self.rank, self.state = rank, state

    def forward(self, x):  # [batch, length, inner]
        length = x.shape[1]
        kernel = self.conv_weight.shape[-1]
        u = F.conv1d(x.transpose(1, 2), self.conv_weight, self.conv_bias, padding=kernel - 1,
                     groups=x.shape[2])[..., :length].transpose(1, 2)
        u = F.silu(u)
        dt, b, c = self.x_proj(u).split([self.rank, self.state, self.state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        return selective_scan(u, delta, -torch.exp(self.a_log), b, c, self.d)


class MambaBlock(nn.Module):
    """Pre-norm residual bidirectional Mamba block (VideoMamba's "v2" without the divide)."""

    def __init__(self, dim, state=16, expand=2, kernel=4, bidirectional=True):
        super().__init__()
        inner = expand * dim
        rank = math.ceil(dim / 16)
        self.norm = RMSNorm(dim)
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.directions = nn.ModuleList(
            MambaDirection(inner, state, rank, kernel) for _ in range(2 if bidirectional else 1)
        )
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x):  # [batch, length, dim]
        x_in, z = self.in_proj(self.norm(x)).chunk(2, dim=-1)
        y = self.directions[0](x_in)
        if len(self.directions) > 1:
            y = y + self.directions[1](x_in.flip(1)).flip(1)
        return x + self.out_proj(y * F.silu(z))


class VideoMambaBackbone(nn.Module):
    """Tubelets (vidtrain's order: frame, channel, row, column) -> linear -> spatial + temporal
    positions -> Mamba blocks -> RMSNorm -> mean over tokens."""

    def __init__(self, dim, layers, tubelet, clip, **block):
        super().__init__()
        grid = [c // t for c, t in zip(clip, tubelet)]
        self.tubelet = tubelet
        self.embedding = nn.Linear(3 * tubelet[0] * tubelet[1] * tubelet[2], dim)
        self.spatial_positions = nn.Parameter(torch.randn(grid[1] * grid[2], dim) * 0.02)
        self.temporal_positions = nn.Parameter(torch.randn(grid[0], dim) * 0.02)
        self.blocks = nn.ModuleList(MambaBlock(dim, **block) for _ in range(layers))
        self.norm = RMSNorm(dim)

    def forward(self, video):  # [n, t, 3, h, w]
        n, t, c, h, w = video.shape
        tt, th, tw = self.tubelet
        gt, gh, gw = t // tt, h // th, w // tw
        x = (video.reshape(n * gt, tt * c, gh, th, gw, tw).permute(0, 2, 4, 1, 3, 5)
             .reshape(n, gt * gh * gw, tt * c * th * tw))
        x = self.embedding(x).reshape(n, gt, gh * gw, -1)
        x = x + self.spatial_positions[None, None] + self.temporal_positions[None, :, None]
        x = x.reshape(n, gt * gh * gw, -1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x).mean(dim=1)


def sinusoidal_positions(tokens, dim):
    position = torch.arange(tokens, dtype=torch.float32)[:, None]
    pair = torch.arange(dim // 2, dtype=torch.float32)
    angles = position / (10000.0 ** (2.0 * pair / dim))
    table = torch.zeros(tokens, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table


class KeypointMambaBackbone(nn.Module):
    """One token per frame: joints flattened -> linear -> sinusoidal positions -> Mamba blocks ->
    RMSNorm -> mean over time."""

    def __init__(self, joints, dim, layers, **block):
        super().__init__()
        self.embedding = nn.Linear(joints * 3, dim)
        self.blocks = nn.ModuleList(MambaBlock(dim, **block) for _ in range(layers))
        self.norm = RMSNorm(dim)

    def forward(self, keypoints):  # [n, t, joints, 3]
        n, t = keypoints.shape[:2]
        x = self.embedding(keypoints.reshape(n, t, -1))
        x = x + sinusoidal_positions(t, x.shape[-1])
        for block in self.blocks:
            x = block(x)
        return self.norm(x).mean(dim=1)


class VideoMambaClassifier(nn.Module):
    """vidtrain's single-view ActionModel around a VideoMamba backbone; input `[n, 1, t, h, w, 3]`
    as vidtrain decodes it."""

    def __init__(self, classes, **backbone):
        super().__init__()
        self.backbone = VideoMambaBackbone(**backbone)
        self.head = nn.Linear(backbone["dim"], classes)

    def forward(self, video):
        return self.head(self.backbone(video[:, 0].permute(0, 1, 4, 2, 3)))


class KeypointMambaClassifier(nn.Module):
    """vidtrain's single-view ActionModel around the keypoint Mamba; input `[n, 1, t, joints, 3]`."""

    def __init__(self, classes, **backbone):
        super().__init__()
        self.keypoint_mamba = KeypointMambaBackbone(**backbone)
        self.head = nn.Linear(backbone["dim"], classes)

    def forward(self, keypoints):
        return self.head(self.keypoint_mamba(keypoints[:, 0]))
