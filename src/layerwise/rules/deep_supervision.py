"""Deep supervision: companion losses on every block, trained end to end with the network's own loss.

Standard (Lee, Xie, Gallagher, Zhang & Tu 2015, "Deeply-Supervised Nets", AISTATS): a classifier after every
block but the last (built as DGL's aux heads, method.aux); nothing is detached, and the whole network with its
companion heads minimises, in one backward per batch,

    CE(head) + alpha_t * sum_i [CE(aux_i) - gamma]_+

with the paper's companion weight decay alpha_t = alpha * (1 - t/N) (method.decay=linear, t the epoch, N
method.decay_epochs or trainer.max_epochs) and, as their hinge's threshold, gamma (0: the plain loss);
method.stop_epoch turns the companions off from an epoch on.

Contrastive (Zhang, Chen, Zhang, Dong & Ma 2022, "Contrastive Deep Supervision", ECCV): a projection head after
every block (method.aux with proj_dim outputs, L2-normalised) and a SupCon loss (Khosla et al. 2020; SimCLR's
with method.supervised=false) between two views of each image, plus the head's cross-entropy on the first view.
The views: the loader's batch itself (with the dataset's own training augmentation) and a copy randomly shifted by
up to method.crop_pad pixels (zero padding, as RandomCrop(padding=p)) and flipped; both run through the network
as one batch of 2B, as in the paper's code. Their code's second view also jitters colours and goes grey at
random; that is left out (cheap tensor operations only).

The loop runs each block's signal right after the block, but a companion loss backpropagated there would free
the graph the later blocks still need. So block i's signal only reports its companion loss (and accuracy), and
keeps it; the head's signal backpropagates the sum once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.errors import ConfigError
from layerwise.models import Network
from layerwise.rules.base import LearningRule, Signal, output_shapes
from layerwise.rules.dgl import build_aux_head
from layerwise.rules.options.deep_supervision import DEFAULT_ALPHA, DeepSupervisionOptions


def companion_weight(alpha: float, epoch: int, max_epochs: int, decay: str, decay_epochs: int | None,
                     stop_epoch: int | None) -> float:
    """alpha_t of epoch t (0-based): alpha, times (1 - t/N) with the linear decay; 0 from stop_epoch on."""
    if stop_epoch is not None and epoch >= stop_epoch:
        return 0.0
    if decay == "linear":
        return alpha * max(0.0, 1.0 - epoch / (decay_epochs or max_epochs))
    return alpha


def shifted_and_flipped(x: torch.Tensor, pad: int, flip: bool) -> torch.Tensor:
    """Each image of x (B, C, H, W) shifted by up to `pad` pixels each way (zeros fill in) and, if `flip`,
    mirrored left-right with probability 1/2: RandomCrop(size, padding=pad) and RandomHorizontalFlip on a batch."""
    b, _, height, width = x.shape
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
        dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
        rows = (dy[:, None] + torch.arange(height, device=x.device))[:, :, None]   # (B, H, 1)
        cols = (dx[:, None] + torch.arange(width, device=x.device))[:, None, :]    # (B, 1, W)
        x = padded.permute(0, 2, 3, 1)[torch.arange(b, device=x.device)[:, None, None], rows, cols]
        x = x.permute(0, 3, 1, 2)
    if flip:
        mirror = torch.rand(b, device=x.device) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    return x.contiguous()


def supcon_loss(z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Khosla et al.'s SupCon (L_out) over the 2B L2-normalised embeddings of two views; y=None: SimCLR's NT-Xent
    (the only positive is the other view of the same image). Every one of the 2B samples is an anchor."""
    z = torch.cat([z1, z2])
    n = len(z)
    self_pair = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = (z @ z.t() / temperature).masked_fill(self_pair, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    ids = torch.cat([y, y]) if y is not None else torch.arange(len(z1), device=z.device).repeat(2)
    positive = (ids[:, None] == ids[None, :]) & ~self_pair
    return -(log_prob.masked_fill(~positive, 0).sum(1) / positive.sum(1)).mean()


class DeepSupervision(LearningRule):
    name = "deep_supervision"
    Options = DeepSupervisionOptions
    local = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.variant = str(self.cfg.variant)
        self.alpha = float(self.cfg.alpha) if self.cfg.alpha is not None else DEFAULT_ALPHA[self.variant]
        self.contrastive = self.variant == "contrastive"
        self.aux = nn.ModuleDict()
        self.epoch, self.max_epochs = 0, 1
        self._companions: list[torch.Tensor] = []
        self._batch = 0

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        super().setup(net, example, num_classes)
        n = len(net.blocks)
        if not self.contrastive and n < 2:
            raise ConfigError("deep_supervision needs at least 2 blocks (a companion head after every block but "
                              "the last); set model.blocks to a larger number or null")
        if self.contrastive and example.dim() != 4:
            raise ConfigError("method.variant=contrastive makes its views by shifting and flipping images "
                              f"(B, C, H, W); this data gives {tuple(example.shape)}")
        shapes = output_shapes(net, example)
        blocks = range(n) if self.contrastive else range(n - 1)
        out = int(self.cfg.proj_dim) if self.contrastive else num_classes
        self.aux = nn.ModuleDict({str(i): build_aux_head(shapes[i], out, self.cfg.aux) for i in blocks})

    def begin_epoch(self, epoch: int, max_epochs: int) -> None:
        self.epoch, self.max_epochs = epoch, max_epochs

    def companion_weight(self) -> float:
        return companion_weight(self.alpha, self.epoch, self.max_epochs, str(self.cfg.decay), self.cfg.decay_epochs,
                                self.cfg.stop_epoch)

    def begin_batch(self, net: Network, x: torch.Tensor, y: torch.Tensor) -> None:
        self._companions, self._batch = [], len(y)

    def block_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if i == 0 and self.contrastive:
            return torch.cat([x, shifted_and_flipped(x, int(self.cfg.crop_pad), bool(self.cfg.flip))])
        return x

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> Signal | None:
        if str(i) not in self.aux:
            return None
        out = self.aux[str(i)](h)
        if self.contrastive:
            z1, z2 = F.normalize(out.flatten(1), dim=1).split(self._batch)
            loss = supcon_loss(z1, z2, y if self.cfg.supervised else None, float(self.cfg.temperature))
            logits = None
        else:
            loss, logits = F.cross_entropy(out, y), out.detach()
        gamma = float(self.cfg.gamma)
        self._companions.append((loss - gamma).clamp(min=0) if gamma else loss)
        # Reported only: backpropagated with the head's loss, once the later blocks are done with the graph.
        return Signal(loss=loss.detach(), logits=logits)

    def head_signal(self, logits: torch.Tensor, y: torch.Tensor) -> Signal:
        logits = logits[:len(y)]  # contrastive: the cross-entropy reads the first view only, as the paper's code
        loss = F.cross_entropy(logits, y)
        weight = self.companion_weight()
        companions = torch.stack(self._companions).sum() if self._companions else loss.new_zeros(())
        self._companions = []
        metrics = {"companion_loss": companions.detach(), "companion_weight": loss.new_tensor(weight)}
        objective = loss + weight * companions if weight > 0 else None
        return Signal(loss=loss, logits=logits, objective=objective, metrics=metrics)

    def block_logits(self, i: int, h: torch.Tensor) -> torch.Tensor | None:
        return None if self.contrastive or str(i) not in self.aux else self.aux[str(i)](h)

    def describe(self) -> str:
        parts = [f"alpha {self.alpha:g}"]
        if self.cfg.decay == "linear":
            parts.append(f"linear decay over {self.cfg.decay_epochs or 'all'} epochs")
        if self.cfg.stop_epoch is not None:
            parts.append(f"companions off from epoch {self.cfg.stop_epoch}")
        if self.cfg.gamma:
            parts.append(f"gamma {self.cfg.gamma:g}")
        if self.contrastive:
            kind = "SupCon" if self.cfg.supervised else "SimCLR"
            parts.append(f"{kind} tau {self.cfg.temperature:g}, {self.cfg.proj_dim}-d projections")
        return f"deep_supervision ({self.variant}, aux {self.cfg.aux.type}, {', '.join(parts)})"
