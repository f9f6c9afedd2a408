"""The listwise fusion of candidate features (no LLM): a softmax over the user's candidates of

    s_j = sum_k (w_k + v_k . g_j) z_jk + b . g_j  [+ MLP([z_j, g_j])]

``z_jk``: expert/similarity feature ``k`` of candidate ``j``, z-scored over the user's candidates
(each model's scale is arbitrary); ``g_j``: gate inputs (popularity, history length, CF
confidence; then the raw similarities for the MLP), standardised with statistics of the users
it was fitted on and clipped to +-5. The first ``n_gate`` gate inputs modulate the weights per candidate (how much
to trust each expert for an unpopular item, a short history, an unsure CF model). The MLP's last
layer starts at zero and ``w`` at the first feature (the CF score), so training starts at the CF
model's ranking.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from allmrec.fusion.features import zscore

GATE_CLIP = 5.0  # standardised gate inputs are clipped to +-GATE_CLIP


@dataclass
class Design:
    """Which features enter the fusion, and the standardisation of the gate inputs."""

    experts: list[str]  # z-scored per user; the first is the CF score
    gates: list[str] = field(default_factory=list)  # gate the expert weights per candidate
    extras: list[str] = field(default_factory=list)  # MLP-only inputs (raw similarities)
    stats: dict[str, list[float]] = field(default_factory=dict)

    def _column(self, feats: dict[str, np.ndarray], name: str) -> np.ndarray:
        x = feats[name]
        return np.repeat(x[:, None], feats[self.experts[0]].shape[1], 1) if x.ndim == 1 else x

    def fit_stats(self, feats: dict[str, np.ndarray]) -> "Design":
        for name in self.gates + self.extras:
            x = self._column(feats, name)
            std = float(x.std())
            self.stats[name] = [float(x.mean()), std if std > 1e-3 else 1.0]  # a constant input stays (near) constant
        return self

    def inputs(self, feats: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Z, G)``: ``(U, C, K)`` z-scored experts and ``(U, C, M)`` standardised gate inputs."""
        Z = np.stack([zscore(feats[n]) for n in self.experts], -1)
        # clipped: an input outside the fitted range (a longer test history) must not scale a weight without bound
        cols = [np.clip((self._column(feats, n) - self.stats[n][0]) / self.stats[n][1], -GATE_CLIP, GATE_CLIP) for n in self.gates + self.extras]
        G = np.stack(cols, -1) if cols else np.zeros(Z.shape[:2] + (0,), np.float32)
        return torch.as_tensor(Z, dtype=torch.float32), torch.as_tensor(G, dtype=torch.float32)


class Fusion(nn.Module):
    """``kind``: ``"linear"`` (the weights alone), ``"gated"`` (+ per-candidate gates) or
    ``"mlp"`` (+ a 2-layer MLP over everything)."""

    def __init__(self, k: int, m: int, n_gate: int, kind: str = "mlp", width: int = 64, seed: int = 0) -> None:
        super().__init__()
        if kind not in ("linear", "gated", "mlp"):
            raise ValueError(f"fusion kind must be linear, gated or mlp, got {kind!r}")
        gen = torch.Generator().manual_seed(int(seed))
        self.kind, self.n_gate = kind, n_gate
        self.w = nn.Parameter(torch.zeros(k))
        with torch.no_grad():
            self.w[0] = 1.0
        self.v = nn.Parameter(torch.zeros(n_gate, k)) if kind != "linear" else None
        self.b = nn.Parameter(torch.zeros(m)) if kind != "linear" else None
        self.net = None
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(k + m, width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))
            for layer in (self.net[0], self.net[2]):
                nn.init.kaiming_uniform_(layer.weight, a=5**0.5, generator=gen)
                nn.init.uniform_(layer.bias, -layer.in_features**-0.5, layer.in_features**-0.5, generator=gen)
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, Z: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        s = (Z * self.w).sum(-1)
        if self.v is not None:
            s = s + ((G[..., : self.n_gate] @ self.v) * Z).sum(-1) + (G * self.b).sum(-1)
        if self.net is not None:
            s = s + self.net(torch.cat([Z, G], -1)).squeeze(-1)
        return s
