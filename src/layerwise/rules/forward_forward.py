"""Forward-Forward (Hinton, 2022, "The Forward-Forward Algorithm: Some Preliminary Investigations").

Each block of an MLP learns on its own to give high goodness (sum of squared activities) to positive data and
low goodness to negative data. Here both come from the same image, with a label written over its first K pixels
(K classes): the true label for the positive pass, a random wrong one for the negative pass. Both halves run as
one batch of 2N rows. With p = sigmoid(g - theta) the probability that a row is positive, a block's loss is the
binary cross-entropy of p (`loss_reduction`):
- `mean` (reference, loeweX/Forward-Forward): averaged over the 2N rows,
  (sum softplus(theta - g_pos) + sum softplus(g_neg - theta)) / 2N;
- `sum_halves`: mean over the positives plus mean over the negatives, exactly twice `mean` (this project's
  form before the reference one was added: the same minimum, twice the SGD step).

Every block's input is normalised and detached: the length carries the previous block's goodness, and without
the division the next block could just pass it on. Only the direction reaches the next block (`normalize`):
- `rms` (reference): divided by its root-mean-square, so a D-long vector has length sqrt(D);
- `unit`: divided by its L2 length (length 1).
The image going into block 0 is normalised too (as in the reference), so `threshold` does not depend on the
data's scale. `threshold` is a number or `units`: theta = the block's width D (the reference: a block of D
units with unit-RMS input has goodness of order D).

`peer_normalization` w (reference: 0.03) adds w * mean_j (mean(a) - a_j)^2 to each block's loss, where a_j is
unit j's running mean activity over the positive rows (momentum `peer_momentum`, starting at 0.5): it keeps
every unit in use. The running means are buffers, saved in checkpoints.

Not followed from the reference: its ReLU passes the gradient also where the unit is off (a straight-through
ReLU); here the model's own activation and its derivative are used.

Train it with Adam: with the repo's default SGD (lr 0.05, momentum 0.9, cosine) FF stays near chance on digits
after 8 epochs. Digits, 3x256 MLP, 8 epochs, Adam without a schedule: the reference form reaches 0.88 at lr 0.005
(0.40 at lr 0.02: its inputs are sqrt(D) times longer), the former form 0.86 at lr 0.02.

Prediction overlays each of the K labels in turn and picks the one with the highest goodness summed over the
blocks from `score_from` on (Hinton skipped the first hidden layer); those scores are the logits, so `test/loss`
is their cross-entropy. The network head is not used: it is frozen, in no optimizer group, and its signal carries
no gradient; `train/loss` reports the mean block loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.errors import ConfigError
from layerwise.models import Network
from layerwise.rules.base import LearningRule, Signal, TrainGroup, output_shapes
from layerwise.rules.options.forward_forward import LOSS_REDUCTIONS, NORMALIZATIONS, ForwardForwardOptions  # noqa: F401  (re-exported; defined in rules/options)

EPS = 1e-8


def overlay(x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Flattened x with its first K entries replaced by the one-hot labels scaled by the batch's max value."""
    flat = x.flatten(1).clone()
    flat[:, :num_classes] = F.one_hot(labels, num_classes).to(flat.dtype) * x.max()
    return flat


def negative_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    # A shift of 1..K-1 is uniform over the wrong labels and can never land on the true one.
    return (y + torch.randint(1, num_classes, y.shape, device=y.device)) % num_classes


def normalize(h: torch.Tensor, mode: str = "unit") -> torch.Tensor:
    """Rows divided by their L2 length (`unit`) or their root-mean-square (`rms`: length sqrt(D))."""
    h = h.flatten(1)
    scale = h.pow(2).mean(dim=1, keepdim=True).sqrt() if mode == "rms" else h.norm(dim=1, keepdim=True)
    return h / (scale + EPS)


def goodness(h: torch.Tensor) -> torch.Tensor:
    return h.flatten(1).pow(2).sum(dim=1)


def ff_loss(g_pos: torch.Tensor, g_neg: torch.Tensor, threshold: float, reduction: str = "sum_halves") -> torch.Tensor:
    """BCE of sigmoid(g - threshold) against positive/negative; `mean` over all rows or `sum_halves` (2x that)."""
    pos, neg = F.softplus(threshold - g_pos), F.softplus(g_neg - threshold)
    if reduction == "mean":
        return torch.cat([pos, neg]).mean()
    return pos.mean() + neg.mean()


def peer_loss(running: torch.Tensor) -> torch.Tensor:
    """mean_j (mean(a) - a_j)^2 over the units' running mean activities a."""
    return (running.mean() - running).pow(2).mean()


class ForwardForward(LearningRule):
    name = "forward_forward"
    Options = ForwardForwardOptions
    local = True
    detach_head = True

    def __init__(self, cfg):
        super().__init__(cfg)
        cfg = self.cfg
        self.threshold = cfg.threshold if cfg.threshold == "units" else float(cfg.threshold)
        self.score_from = int(cfg.score_from)
        self.loss_reduction = str(cfg.loss_reduction)
        self.normalization = str(cfg.normalize)
        self.peer_weight = float(cfg.peer_normalization)
        self.peer_momentum = float(cfg.peer_momentum)
        self.thresholds: list[float] = []
        self.num_classes = 0
        self._batch: torch.Tensor | None = None
        self._losses: list[torch.Tensor] = []

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        super().setup(net, example, num_classes)
        self.num_classes = num_classes
        if any(len(shape) != 1 for shape in output_shapes(net, example)):
            raise ConfigError("forward_forward trains MLPs; use model=mlp")
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.blocks.modules()):
            # BN rescales every unit over the batch (which mixes positive and negative rows), erasing the
            # activity length that goodness measures.
            raise ConfigError("forward_forward needs blocks without batch norm; set model.batch_norm=false")
        if example[0].numel() < num_classes:
            raise ConfigError(f"forward_forward writes the label over the first {num_classes} input values, but an "
                              f"input has only {example[0].numel()}; use a larger data.image_size")
        if not 0 <= self.score_from < self.n_blocks:
            raise ConfigError(f"method.score_from={self.score_from} must name a block in [0, {self.n_blocks - 1}]")
        # The head is unused; frozen, its forward on the detached 2N batch builds no graph to free.
        net.head.requires_grad_(False)
        widths = [int(shape[0]) for shape in output_shapes(net, example)]
        self.thresholds = [float(w) if self.threshold == "units" else self.threshold for w in widths]
        if self.peer_weight > 0:
            for i, width in enumerate(widths):
                self.register_buffer(f"running_mean{i}", torch.full((width,), 0.5))

    def begin_batch(self, net: Network, x: torch.Tensor, y: torch.Tensor) -> None:
        k = self.num_classes
        self._batch = torch.cat([overlay(x, y, k), overlay(x, negative_labels(y, k), k)])
        self._losses = []

    def block_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        # Detach before normalizing: a graph that is never backpropagated stays alive under saved-tensor hooks.
        return normalize((self._batch if i == 0 else x).detach(), self.normalization)

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> Signal:
        g = goodness(h)
        g_pos, g_neg = g[:len(y)], g[len(y):]
        loss = ff_loss(g_pos, g_neg, self.thresholds[i], self.loss_reduction)
        metrics = {"pos_goodness": g_pos.mean().detach(), "neg_goodness": g_neg.mean().detach()}
        if self.peer_weight > 0:
            metrics["ff_loss"] = loss.detach()
            metrics["peer_loss"] = self._peer(i, h[:len(y)])
            loss = loss + self.peer_weight * metrics["peer_loss"]
        self._losses.append(loss.detach())
        return Signal(loss=loss, metrics=metrics)

    def _peer(self, i: int, h_pos: torch.Tensor) -> torch.Tensor:
        """Peer-normalisation loss of block i; updates its running means (the new batch's share keeps the graph)."""
        running = getattr(self, f"running_mean{i}")
        new = self.peer_momentum * running + (1 - self.peer_momentum) * h_pos.flatten(1).mean(dim=0)
        running.copy_(new.detach())
        return peer_loss(new)

    def head_signal(self, logits: torch.Tensor, y: torch.Tensor) -> Signal:
        self._batch = None
        return Signal(loss=torch.stack(self._losses).mean())

    def scores(self, net: Network, x: torch.Tensor) -> torch.Tensor:
        """(N, K) goodness of every candidate label, summed over the scored blocks."""
        columns = []
        for label in range(self.num_classes):
            h = overlay(x, torch.full((len(x),), label, dtype=torch.long, device=x.device), self.num_classes)
            total = torch.zeros(len(x), device=x.device)
            for i, block in enumerate(net.blocks):
                h = block(normalize(h, self.normalization))
                if i >= self.score_from:
                    total = total + goodness(h)
            columns.append(total)
        return torch.stack(columns, dim=1)

    def evaluate(self, net: Network, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        return self.scores(net, x), {}

    def train_groups(self, net: Network) -> list[TrainGroup]:
        return [TrainGroup(f"block{i}", [block], step_after=i) for i, block in enumerate(net.blocks)]

    def describe(self) -> str:
        theta = "units" if self.threshold == "units" else f"{self.threshold:g}"
        peer = f", peer normalization {self.peer_weight:g}" if self.peer_weight > 0 else ""
        return (f"forward_forward (threshold {theta}, loss {self.loss_reduction}, "
                f"normalize {self.normalization}{peer}, score from block {self.score_from})")
