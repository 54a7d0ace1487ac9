"""Local error signals: the pred, sim and predsim losses.

Nøkland & Eidnes (2019), "Training Neural Networks with Local Error Signals", ICML. Every block, the last
one included, trains on a detached input with its own optimizer and a local supervised loss:

- pred: cross-entropy of a linear classifier on the block output, average-pooled so that at most
  `dim_in_decoder` features reach it;
- sim: MSE between the similarity matrix of the batch's features (after a 3x3 conv for conv blocks, a bias-free
  linear layer for flat ones) and the similarity matrix of its one-hot labels;
- predsim: (1 - beta) * pred + beta * sim.

The network head trains with cross-entropy on the detached last-block output, so no gradient crosses a block.
Each block logs its total local loss and, unweighted, the parts it used (pred_loss, sim_loss).

Details follow the paper's code (github.com/anokland/local-loss):
- The similarity matrix is the "adjusted cosine": each row is centred over its features, then L2-normalised.
  With that centring, the matrix of one-hot labels is 1 for equal labels and -1/(C-1) otherwise: the
  label-equality matrix rescaled affinely, not the 0/1 matrix the paper's equations suggest.
- Conv features enter the similarity matrix as the per-channel standard deviation over space, unless the map
  has 3 channels or fewer or is 1 pixel high, where they are flattened (std over one pixel is undefined).
- The pred classifier's weights start at zero.
- The pool kernel doubles in height, then in width, until the flattened size fits. We pool to the resulting
  output size with an adaptive average pool, not the code's padded AvgPool2d; the two agree when the kernel
  divides the map.
- Both losses read a conv layer's output *before* its max-pool: in the paper's VGGs the pool is a layer of its own
  after the local-loss block. Here a conv layer carries its pool (models.py), so a forward pre-hook on a block's
  trailing pool keeps the map that enters it; the block still passes the pooled map on. `loss_before_pool=false`
  reads the pooled output instead (this project's behaviour before that fix).
- The paper's network output layer starts at zero when the network trains with local losses
  (`zero_init_head=true`, set by the nokland_vgg8b preset).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.errors import ConfigError
from layerwise.models import Network
from layerwise.rules.base import LearningRule, Signal, TrainGroup, output_shapes
from layerwise.rules.options.predsim import LOSSES, PredSimOptions  # noqa: F401  (re-exported; defined in rules/options)
from layerwise.rules.pre_pool import PrePoolMaps


def similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """Adjusted cosine similarity (B, B) between the rows of x: (B, D), or (B, C, H, W) feature maps."""
    if x.dim() == 4:
        if x.size(1) > 3 and x.size(2) > 1:
            x = x.flatten(2).std(dim=2)
        else:
            x = x.flatten(1)
    xc = x - x.mean(dim=1, keepdim=True)
    xn = xc / (xc.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-8)
    return (xn @ xn.t()).clamp(-1, 1)


def pred_pool_size(channels: int, height: int, width: int, dim_in_decoder: int) -> tuple[int, int]:
    """Pooled (height, width) so that channels * height * width <= dim_in_decoder where pooling can get there."""
    ks_h = ks_w = 1
    out_h, out_w = height, width
    while channels * out_h * out_w > dim_in_decoder and ks_h < height:
        ks_h *= 2
        out_h = math.ceil(height / ks_h)
        if channels * out_h * out_w > dim_in_decoder:
            ks_w *= 2
            out_w = math.ceil(width / ks_w)
    return out_h, out_w


class LocalLoss(nn.Module):
    """The local-loss modules of one block: the pred classifier and/or the sim projection."""

    def __init__(self, shape: torch.Size, num_classes: int, loss: str, dim_in_decoder: int):
        super().__init__()
        self.num_classes = num_classes
        self.decoder: nn.Module | None = None
        self.projection: nn.Module | None = None
        conv = len(shape) == 3
        if not conv and len(shape) != 1:
            raise ConfigError(f"predsim needs block outputs of shape (C,H,W) or (D,), got {tuple(shape)}; "
                              "use a conv or mlp model")
        if loss in ("pred", "predsim"):
            layers: list[nn.Module] = []
            if conv:
                channels, height, width = (int(s) for s in shape)
                out_h, out_w = pred_pool_size(channels, height, width, dim_in_decoder)
                if (out_h, out_w) != (height, width):
                    layers.append(nn.AdaptiveAvgPool2d((out_h, out_w)))
                dim = channels * out_h * out_w
            else:
                dim = int(shape[0])
            linear = nn.Linear(dim, num_classes)
            nn.init.zeros_(linear.weight)  # as the paper's code: the local classifier starts from uniform logits
            self.decoder = nn.Sequential(*layers, nn.Flatten(), linear)
        if loss in ("sim", "predsim"):
            width = int(shape[0])
            self.projection = (nn.Conv2d(width, width, 3, padding=1, bias=False) if conv
                               else nn.Linear(width, width, bias=False))

    def pred_logits(self, h: torch.Tensor) -> torch.Tensor | None:
        return self.decoder(h) if self.decoder is not None else None

    def sim_loss(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = similarity_matrix(F.one_hot(y, self.num_classes).to(h.dtype)).detach()
        return F.mse_loss(similarity_matrix(self.projection(h)), target)


class LocalErrorSignals(LearningRule):
    name = "predsim"
    Options = PredSimOptions
    local = True
    detach_head = True

    def __init__(self, cfg):
        super().__init__(cfg)
        cfg = self.cfg
        self.loss = str(cfg.loss)
        self.beta = float(cfg.beta)
        self.dim_in_decoder = int(cfg.dim_in_decoder)
        self.loss_before_pool = bool(cfg.loss_before_pool)
        self.zero_init_head = bool(cfg.zero_init_head)
        self.local_losses = nn.ModuleList()
        self.pre_pool = PrePoolMaps()
        self.pooled_blocks: list[int] = []

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        super().setup(net, example, num_classes)
        if self.loss_before_pool:
            self.pooled_blocks = self.pre_pool.attach(net.blocks, range(len(net.blocks)))
        shapes = output_shapes(net, example)  # the hooks see this pass too: loss inputs are the pre-pool maps
        shapes = [self.pre_pool.pop(i, None).shape[1:] if i in self.pooled_blocks else s for i, s in enumerate(shapes)]
        self.local_losses = nn.ModuleList(
            LocalLoss(shape, num_classes, self.loss, self.dim_in_decoder) for shape in shapes)
        if self.zero_init_head:
            last = [m for m in net.head.modules() if isinstance(m, nn.Linear)]
            if not last:
                raise ConfigError("method.zero_init_head=true needs a Linear output layer in the network head")
            nn.init.zeros_(last[-1].weight)  # as the paper's code for locally trained networks (bias untouched)

    def loss_input(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """What block i's local losses read: the map before its trailing pool if it has one, else its output."""
        return self.pre_pool.pop(i, h)

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> Signal:
        local = self.local_losses[i]
        h = self.loss_input(i, h)
        logits = local.pred_logits(h)
        metrics = {}
        if self.loss == "pred":
            total = metrics["pred_loss"] = F.cross_entropy(logits, y)
        elif self.loss == "sim":
            total = metrics["sim_loss"] = local.sim_loss(h, y)
        else:
            metrics["pred_loss"] = F.cross_entropy(logits, y)
            metrics["sim_loss"] = local.sim_loss(h, y)
            total = (1 - self.beta) * metrics["pred_loss"] + self.beta * metrics["sim_loss"]
        return Signal(loss=total, logits=logits, metrics=metrics)

    def block_logits(self, i: int, h: torch.Tensor) -> torch.Tensor | None:
        return self.local_losses[i].pred_logits(self.loss_input(i, h))

    def train_groups(self, net: Network) -> list[TrainGroup]:
        n = len(net.blocks)
        groups = [TrainGroup(f"block{i}", [net.blocks[i], self.local_losses[i]], step_after=i) for i in range(n)]
        groups.append(TrainGroup("head", [net.head], step_after=n))
        return groups

    def describe(self) -> str:
        parts = [self.loss]
        if self.loss == "predsim":
            parts.append(f"beta {self.beta:g}")
        if self.loss != "sim":
            parts.append(f"decoder <= {self.dim_in_decoder}")
        if self.pooled_blocks:
            parts.append(f"losses before the pool of blocks {self.pooled_blocks}")
        if self.zero_init_head:
            parts.append("output layer from zero")
        return f"predsim ({', '.join(parts)})"
