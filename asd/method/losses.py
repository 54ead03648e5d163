"""Sub-cluster AdaCos (report 2.3, eq. (1)), the KL-divergence loss and mixup (report 2.4).

Eq. (1) in log space, with s the AdaCos scale and cos_ik the cosine between embedding i and
sub-cluster centre k (k = 0..C*S-1; sub-cluster k belongs to class k // S):

    log P_ij = logsumexp_{l in M_j}(s cos_il) - logsumexp_k(s cos_ik).

The scale s (AdaCos, Zhang et al., 2019, adapted to sub-clusters and mixed labels) starts at
sqrt(2) ln(C*S - 1), or sqrt(2) ln 2 where C*S <= 2. It is a buffer, re-estimated without
gradient before the output on every forward in training mode with a target, never in eval mode:
s_new = log B_avg / cos(min(max_angle, theta_med)), where B_avg is the batch mean of
sum_{k non-target} exp(s_old cos_ik) (non-target: classes of mixed label weight 0) and theta_med
the median (the lower one for an even batch) angle between each embedding and the nearest centre
of its dominant (largest weight) class; s keeps its value where s_new is not finite and positive.
Under DDP the batch is the global one: all processes gather all per-sample terms, and share s.

Computed in float32 or wider with autocast off; normalisation rescales by the largest entry
first, so no embedding (zeros, 1e30, identical rows) gives inf or NaN.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn


def _unit(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of x scaled to unit L2 norm (zero rows stay zero), without overflow."""
    # Divided by the largest entry first, so that the squared norm of a huge row stays finite.
    x = x / x.detach().abs().amax(dim=-1, keepdim=True).clamp_min(eps)
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)


def _global_batch(x: torch.Tensor) -> torch.Tensor:
    """Per-sample statistics (K, B) of every DDP process's batch, (K, world * B) in rank order;
    ``x`` itself outside DDP. Each process then estimates the same scale from the whole batch."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=1)


def initial_scale(n_logits: int) -> float:
    """AdaCos's fixed scale sqrt(2) ln(n - 1), or sqrt(2) ln 2 for n <= 2 logits."""
    return math.sqrt(2.0) * math.log(max(n_logits - 1, 2))


class SubClusterAdaCos(nn.Module):
    """Embeddings (B, D) -> class log-probabilities (B, C) by eq. (1); parameter ``centres``
    (C*S, D), buffer ``s`` (scalar)."""

    def __init__(
        self, n_classes: int, n_subclusters: int, dim: int, max_angle: float = math.pi / 4
    ):
        super().__init__()
        if not 0.0 < max_angle < math.pi / 2:
            raise ValueError(f"max_angle must lie in (0, pi/2), got {max_angle}")
        self.n_classes = n_classes
        self.n_subclusters = n_subclusters
        self.dim = dim
        self.max_angle = float(max_angle)
        self.centres = nn.Parameter(torch.empty(n_classes * n_subclusters, dim))
        nn.init.xavier_uniform_(self.centres)
        self.register_buffer("s", torch.tensor(initial_scale(n_classes * n_subclusters)))

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """The cosine of each embedding to each sub-cluster centre: (B, D) -> (B, C*S)."""
        dtype = torch.promote_types(
            torch.promote_types(emb.dtype, self.centres.dtype), torch.float32
        )
        # In float32 or wider with autocast off: half precision would round the cosines, and s
        # multiplies their rounding error before the exponential.
        with torch.autocast(emb.device.type, enabled=False):
            return _unit(emb.to(dtype)) @ _unit(self.centres.to(dtype)).t()

    @torch.no_grad()
    def _update_scale(self, cos: torch.Tensor, target: torch.Tensor) -> None:
        """Re-estimate the scale ``s`` from a batch's cosines (B, C*S) and mixed labels (B, C),
        as the module docstring states; no gradient flows through the estimate."""
        batch = cos.shape[0]
        s = self.s.to(cos.dtype)
        # AdaCos's B_avg sums exp(s cos) over the logits the label wants small: with mixed labels,
        # every sub-cluster of a class whose label weight is 0.
        non_target = (target == 0).repeat_interleave(self.n_subclusters, dim=1)  # (B, C*S)
        logits = (s * cos).masked_fill(~non_target, float("-inf"))
        # Summed in log space, so a large s cannot overflow; -inf where no logit is non-target.
        per_sample = torch.logsumexp(logits, dim=1)  # (B,)
        # The angle AdaCos watches is the one training shrinks: between each embedding and the
        # nearest sub-cluster centre of its dominant (largest weight) class.
        dominant = target.argmax(dim=1)  # (B,)
        by_class = cos.view(batch, self.n_classes, self.n_subclusters)  # (B, C, S)
        own = by_class[torch.arange(batch, device=cos.device), dominant]  # (B, S)
        theta = torch.acos(own.amax(dim=1).clamp(-1.0, 1.0))  # (B,)
        # Under DDP every process estimates s from the global batch, so all of them share one s.
        stats = torch.stack([per_sample, theta])  # (2, B)
        per_sample, theta = _global_batch(stats)  # (world * B,) each
        # log B_avg: the log of the batch mean of the per-sample sums, still in log space.
        log_b_avg = torch.logsumexp(per_sample, dim=0) - math.log(len(per_sample))
        # The median angle is capped (pi/4 by default), as in AdaCos, so that the wide angles of
        # an untrained model do not drive s towards infinity.
        theta_med = torch.median(theta).clamp(max=self.max_angle)
        new_s = log_b_avg / torch.cos(theta_med)
        # Where no class has label weight 0 (C <= 2), B_avg is 0 and there is no estimate: s keeps
        # its value then.
        ok = torch.isfinite(new_s) & (new_s > 0)
        # torch.where, not an if: no host synchronisation on the GPU.
        self.s.copy_(torch.where(ok, new_s, s).to(self.s.dtype))

    def forward(self, emb: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) embeddings [and (B, C) mixed labels] -> (B, C) log P by eq. (1)."""
        if emb.dim() != 2 or emb.shape[1] != self.dim:
            raise ValueError(
                f"SubClusterAdaCos expects embeddings (B, {self.dim}), got {tuple(emb.shape)}"
            )
        if target is not None and tuple(target.shape) != (emb.shape[0], self.n_classes):
            raise ValueError(
                f"SubClusterAdaCos expects targets (B, {self.n_classes}) for "
                f"{emb.shape[0]} embeddings, got {tuple(target.shape)}"
            )
        cos = self.cosine(emb)  # (B, C*S)
        # The scale learns from the batch before it is used, and only while training: in eval
        # mode s stays what training left (a test batch must not move it).
        if self.training and target is not None:
            self._update_scale(cos.detach(), target)
        logits = self.s.to(cos.dtype) * cos  # (B, C*S)
        # Eq. (1): a class's probability is the sum over its S sub-clusters, i.e. a logsumexp
        # of its logits, less the logsumexp over all C*S logits (the softmax's denominator).
        by_class = logits.view(-1, self.n_classes, self.n_subclusters)  # (B, C, S)
        per_class = torch.logsumexp(by_class, dim=2)  # (B, C)
        return per_class - torch.logsumexp(logits, dim=1, keepdim=True)  # (B, C)


def kl_loss(log_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch mean of KL(target || P) = sum_j t_j (log t_j - log P_j), with 0 log 0 = 0."""
    target = target.to(log_probs.dtype)
    # Where t_j = 0 the term is 0; without the mask a log P_j of -inf would give 0 * -inf = NaN.
    cross = target * log_probs.masked_fill(target == 0, 0.0)
    return (torch.xlogy(target, target) - cross).sum(dim=1).mean()


def mixup(
    x_a: torch.Tensor, x_b: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """lam * a + (1 - lam) * b for inputs (B, ...) and labels (B, C) alike, with lam (B,) in
    [0, 1]; the results take lam's floating dtype where the inputs are of a smaller type."""
    if (
        x_a.shape != x_b.shape
        or y_a.shape != y_b.shape
        or lam.shape != (len(x_a),)
        or len(y_a) != len(x_a)
    ):
        raise ValueError(
            f"mixup: x {tuple(x_a.shape)}, {tuple(x_b.shape)}, y {tuple(y_a.shape)}, "
            f"{tuple(y_b.shape)} and lam {tuple(lam.shape)} do not fit"
        )
    # The same ratio mixes a sample's input and its label, so the label says how much of each
    # class the input holds.
    w = lam.view(-1, *([1] * (x_a.dim() - 1)))  # (B, 1, ...)
    v = lam.view(-1, 1)  # (B, 1)
    x = w * x_a + (1 - w) * x_b
    y = v * y_a + (1 - v) * y_b
    return x, y
