"""Building blocks shared by the backbones: timestep/label embedders, sin-cos position embeddings,
adaLN modulation and the MLP."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift; shift/scale are (B, D) or per-token (B, N, D)."""
    if shift.dim() == 2:
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """Scalar timesteps -> vectors: sinusoid(256) then a 2-layer SiLU MLP (as DiT).

    Accepts t of any shape (e.g. (B,) or per-frame (B, F)); returns t.shape + (hidden,)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256, max_period: float = 10000):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size
        self.max_period = max_period

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[..., None].float() * freqs  # (..., half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size, self.max_period))


class LabelEmbedder(nn.Module):
    """Class labels -> vectors, with an extra "null" row used for classifier-free guidance.

    During training labels are replaced by the null class with probability `dropout_prob`;
    `force_drop_ids` (1 = drop) makes the choice explicit (used by CFG sampling)."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes, self.dropout_prob = num_classes, dropout_prob

    def token_drop(self, labels, force_drop_ids=None):
        if force_drop_ids is None:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop = force_drop_ids == 1
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels, train: bool, force_drop_ids=None):
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


class Mlp(nn.Module):
    """fc1 -> tanh-GELU -> fc2 (DiT's MLP). Hidden channels are sliceable: `hidden_features`."""

    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, dim)


def sincos_2d(dim: int, grid_h: int, grid_w: int | None = None) -> np.ndarray:
    """(H*W, dim) fixed 2-D sin-cos embedding, half the channels for each axis (as MAE/DiT)."""
    grid_w = grid_w or grid_h
    gw, gh = np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64))
    return np.concatenate([_sincos_1d(dim // 2, gh), _sincos_1d(dim // 2, gw)], axis=1)


def sincos_3d(dim: int, frames: int, grid_h: int, grid_w: int | None = None) -> np.ndarray:
    """(F*H*W, dim) space-time embedding: the 2-D spatial code plus a 1-D code of the frame index."""
    spatial = sincos_2d(dim, grid_h, grid_w)  # (HW, dim)
    temporal = _sincos_1d(dim, np.arange(frames, dtype=np.float64))  # (F, dim)
    return (temporal[:, None, :] + spatial[None]).reshape(-1, dim)
