"""Sub-cluster AdaCos (report 2.3, eq. (1)), the KL-divergence loss and mixup (report 2.4).

Eq. (1), in log space: with s the AdaCos scale and cos_ik the cosine between embedding i and
sub-cluster centre k (k = 0..C*S-1, sub-cluster k belongs to class k // S),

    log P_ij = logsumexp_{l in M_j}(s cos_il) - logsumexp_k(s cos_ik).

The scale s follows AdaCos (Zhang et al., 2019), adapted to sub-clusters and mixed labels:

- it starts at sqrt(2) * ln(C*S - 1), AdaCos's fixed scale for C*S logits; where C*S <= 2 that is
  0 or undefined, so we use sqrt(2) * ln 2 (the value for C*S = 3) instead;
- it is a buffer (saved in the state dict) and is re-estimated, without gradient, before the
  output is computed, on every forward where ``self.training`` is true and a target is given,
  never in eval mode. (Catalyst's AdaCos tests ``self.train``, a bound method, which is always
  true: a bug we do not copy.)
- log B_avg = log of the batch mean over samples of sum_{k non-target} exp(s_old cos_ik), by
  logsumexp; non-target sub-clusters are those of classes whose mixed label weight is 0;
- theta_med = median over the batch (lower median for an even batch, as ``torch.median``) of the
  angle between each embedding and the nearest sub-cluster centre of its dominant (largest
  weight) class;
- s_new = log B_avg / cos(min(max_angle, theta_med)). When it is not a finite positive number
  (no non-target logits at all, e.g. C = 1, or a tiny C*S whose non-target sum is below 1),
  s keeps its value.

Everything is computed in float32 or wider with autocast off, and normalisation rescales by the
largest entry first, so no embedding (zeros, 1e30, identical rows) gives inf or NaN.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def _unit(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of x scaled to unit L2 norm; zero rows stay zero; no overflow for huge entries."""
    # Dividing by the largest entry first keeps the squared norm from overflowing (1e30); the
    # clamps keep the gradient of zero or tiny rows finite (at most 1 / eps**2 times larger).
    # The scale is a constant for autograd: the result does not depend on it.
    scale = x.detach().abs().amax(dim=-1, keepdim=True).clamp_min(eps)
    x = x / scale
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)


def initial_scale(n_logits: int) -> float:
    """AdaCos's fixed scale sqrt(2) ln(n - 1), with sqrt(2) ln 2 for n <= 2 (see module doc)."""
    return math.sqrt(2.0) * math.log(max(n_logits - 1, 2))


class SubClusterAdaCos(nn.Module):
    """Sub-cluster AdaCos head: embeddings (B, D) -> class log-probabilities (B, C) by eq. (1).

    Parameter ``centres`` (C*S, D); buffer ``s`` (scalar). See the module docstring for how s
    is initialised and re-estimated.
    """

    def __init__(self, n_classes: int, n_subclusters: int, dim: int,
                 max_angle: float = math.pi / 4):
        super().__init__()
        if n_classes < 1 or n_subclusters < 1 or dim < 1:
            raise ValueError(f"SubClusterAdaCos needs n_classes, n_subclusters and dim >= 1, got "
                             f"{n_classes}, {n_subclusters}, {dim}")
        if not 0.0 < max_angle < math.pi / 2:
            raise ValueError(f"max_angle must lie in (0, pi/2), got {max_angle}")
        self.n_classes, self.n_subclusters, self.dim = n_classes, n_subclusters, dim
        self.max_angle = float(max_angle)
        self.centres = nn.Parameter(torch.empty(n_classes * n_subclusters, dim))
        nn.init.xavier_uniform_(self.centres)
        self.register_buffer("s", torch.tensor(initial_scale(n_classes * n_subclusters)))

    def extra_repr(self) -> str:
        return (f"n_classes={self.n_classes}, n_subclusters={self.n_subclusters}, "
                f"dim={self.dim}, max_angle={self.max_angle:.4f}")

    def _dtype(self, emb: torch.Tensor) -> torch.dtype:
        return torch.promote_types(torch.promote_types(emb.dtype, self.centres.dtype),
                                   torch.float32)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each embedding to each sub-cluster centre: (B, D) -> (B, C*S)."""
        dtype = self._dtype(emb)
        with torch.autocast(emb.device.type, enabled=False):
            return _unit(emb.to(dtype)) @ _unit(self.centres.to(dtype)).t()

    def subcluster_centres(self) -> torch.Tensor:
        """Unit-norm centres grouped by class, (C, S, D), detached (GMM initial means)."""
        return _unit(self.centres.detach().float()).view(self.n_classes, self.n_subclusters,
                                                         self.dim)

    @torch.no_grad()
    def _update_scale(self, cos: torch.Tensor, target: torch.Tensor) -> None:
        b, c, sub = cos.shape[0], self.n_classes, self.n_subclusters
        s = self.s.to(cos.dtype)
        non_target = (target == 0).repeat_interleave(sub, dim=1)  # (B, C*S)
        logits = (s * cos).masked_fill(~non_target, float("-inf"))
        per_sample = torch.logsumexp(logits, dim=1)  # (B,), -inf where no non-target logit
        log_b_avg = torch.logsumexp(per_sample, dim=0) - math.log(b)
        dominant = target.argmax(dim=1)  # (B,)
        own = cos.view(b, c, sub)[torch.arange(b, device=cos.device), dominant]  # (B, S)
        theta = torch.acos(own.amax(dim=1).clamp(-1.0, 1.0))  # (B,)
        theta_med = torch.median(theta).clamp(max=self.max_angle)
        new_s = log_b_avg / torch.cos(theta_med)
        ok = torch.isfinite(new_s) & (new_s > 0)
        # torch.where, not an if: no host synchronisation on the GPU
        self.s.copy_(torch.where(ok, new_s, s).to(self.s.dtype))

    def forward(self, emb: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, D) embeddings [, (B, C) mixed label probabilities] -> (B, C) log P by eq. (1)."""
        if emb.dim() != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"SubClusterAdaCos expects embeddings (B, {self.dim}), "
                             f"got {tuple(emb.shape)}")
        if target is not None and tuple(target.shape) != (emb.shape[0], self.n_classes):
            raise ValueError(f"SubClusterAdaCos expects targets (B, {self.n_classes}) = "
                             f"({emb.shape[0]}, {self.n_classes}), got {tuple(target.shape)}")
        cos = self.cosine(emb)  # (B, C*S)
        if self.training and target is not None:
            self._update_scale(cos.detach(), target)
        logits = self.s.to(cos.dtype) * cos  # (B, C*S)
        per_class = torch.logsumexp(logits.view(-1, self.n_classes, self.n_subclusters), dim=2)
        return per_class - torch.logsumexp(logits, dim=1, keepdim=True)  # (B, C)


def kl_loss(log_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch mean of KL(target || P) = sum_j t_j (log t_j - log P_j), with 0 log 0 = 0."""
    target = target.to(log_probs.dtype)
    # masked_fill before the product: a -inf log P where t_j = 0 must give 0, not NaN
    cross = target * log_probs.masked_fill(target == 0, 0.0)
    return (torch.xlogy(target, target) - cross).sum(dim=1).mean()


def mixup(x_a: torch.Tensor, x_b: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor,
          lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix inputs and labels alike: lam * a + (1 - lam) * b, with lam (B,) in [0, 1].

    Inputs may have any rank (B, ...); labels (B, C) are returned as floats. The input keeps its
    dtype (a float16 cache stays float16).
    """
    if x_a.shape != x_b.shape or y_a.shape != y_b.shape:
        raise ValueError(f"mixup: shapes differ: x {tuple(x_a.shape)} vs {tuple(x_b.shape)}, "
                         f"y {tuple(y_a.shape)} vs {tuple(y_b.shape)}")
    if lam.dim() != 1 or lam.shape[0] != x_a.shape[0] or y_a.shape[0] != x_a.shape[0]:
        raise ValueError(f"mixup: lam must be (B,) with B = {x_a.shape[0]} = len(y), "
                         f"got lam {tuple(lam.shape)} and y {tuple(y_a.shape)}")

    def mix(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        w = lam.to(dtype).view(-1, *([1] * (a.dim() - 1)))
        return w * a.to(dtype) + (1 - w) * b.to(dtype)

    x_dtype = x_a.dtype if x_a.is_floating_point() else torch.float32
    y_dtype = torch.promote_types(y_a.dtype, lam.dtype) if y_a.is_floating_point() else lam.dtype
    return mix(x_a, x_b, x_dtype), mix(y_a, y_b, y_dtype)


def sample_lambda(batch: int, generator: Optional[torch.Generator] = None,
                  device: Optional[torch.device | str] = None) -> torch.Tensor:
    """Mixing ratios lam ~ U(0, 1), one per sample: (B,) float32 on the generator's device."""
    if device is None:
        device = generator.device if generator is not None else "cpu"
    return torch.rand(batch, generator=generator, device=device)
