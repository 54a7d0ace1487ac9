"""Forward-Forward (Hinton, 2022, "The Forward-Forward Algorithm: Some Preliminary Investigations"), for MLPs and
convolutional (also residual) blocks.

Each block learns on its own to give high goodness (sum of squared activities) to positive data and low goodness
to negative data. Both come from the same image with a label embedded in it (`label`): the true label for the
positive pass, a random wrong one for the negative pass. Both halves run as one batch of 2N rows.
- `pixels` (Hinton): the one-hot label written over the first K input values, scaled to the batch's max;
- `pattern` (spatially-extended labels, Scodellaro et al. 2025, Sci. Rep.): a cosine grating of the class's own
  orientation (angle pi*k/K, period 4 pixels) added over the whole image, amplitude the batch's standard
  deviation, so a convolution sees the label at every location (a one-hot corner is seen by a few only);
- `auto`: pixels for MLPs, pattern when the first block is convolutional.

Goodness is summed over a group of units (`goodness`), and every group is one binary decision:
- `sum` (Hinton; how Scodellaro et al. train CNNs): one group, all of the block's units;
- `location` (per spatial location, as SCFF, Chen et al. 2025, Nat. Commun., Fig. 2): g_{n,h,w} = sum_c a_{n,c,h,w}^2;
- `channel` (per channel, the goodness of Papachristodoulou et al. 2024's channel-wise FF, without their class
  groups): g_{n,c} = sum_{h,w} a_{n,c,h,w}^2.
With p = sigmoid(g - theta) the probability that a group is positive, a block's loss is the binary cross-entropy
of p (`loss_reduction`):
- `mean` (reference, loeweX/Forward-Forward): averaged over the 2N rows (and their groups),
  (sum softplus(theta - g_pos) + sum softplus(g_neg - theta)) / 2N;
- `sum_halves`: mean over the positives plus mean over the negatives, exactly twice `mean`.

Layer collaboration (`collaborative`; Lorberbom, Gat, Adi, Schwing, Hazan, AAAI 2024, "Layer Collaboration in the
Forward-Forward Algorithm", their gamma): p_i = sigmoid(g_i + gamma_i - theta), gamma_i = sum_{t != i} g^_t, the
goodness of every other block on the same rows, detached (their f^: a copy whose parameters take no gradient).
Here g^_t is block t's goodness per row (mean over its groups) from a no-grad pass at the start of the batch, and
theta is the sum of the blocks' thresholds (each block's goodness is of order its own threshold).

Every block's input is normalised and detached: its length carries the previous block's goodness, and without
the division the next block could just pass it on. The division is per group of the previous block (each
location's channel vector for `location`, each channel's map for `channel`); the image going into block 0 is
normalised as a whole (as in the reference), so `threshold` does not depend on the data's scale (`normalize`):
- `rms` (reference): divided by its root-mean-square, so a D-long vector has length sqrt(D);
- `unit`: divided by its L2 length (length 1).
`threshold` is a number or `units`: theta = the number of units in a group (the reference: D units with unit-RMS
input give a goodness of order D).

`peer_normalization` w (reference: 0.03) adds w * mean_j (mean(a) - a_j)^2 to each block's loss, where a_j is
unit j's running mean activity over the positive rows (a conv channel's over its locations too; momentum
`peer_momentum`, starting at 0.5): it keeps every unit in use. The running means are buffers, saved in checkpoints.

Not followed from the reference: its ReLU passes the gradient also where the unit is off (a straight-through
ReLU); here the model's own activation and its derivative are used.

Train it with Adam: with the repo's default SGD (lr 0.05, momentum 0.9, cosine) FF stays near chance on digits
after 8 epochs. Digits, 3x256 MLP, 8 epochs, Adam without a schedule: the reference form reaches 0.88 at lr 0.005
(0.40 at lr 0.02: its inputs are sqrt(D) times longer), the former form 0.86 at lr 0.02.

Prediction (`predict`): `goodness` embeds each of the K labels in turn and picks the one with the highest
goodness summed over the blocks from `score_from` on (Hinton skipped the first hidden layer); those scores are
the logits, so `test/loss` is their cross-entropy. `head` (the reference's linear classifier): a linear layer,
owned by the rule, maps the normalised, detached outputs of the blocks from `score_from` on, for the image with
a neutral label (every class at weight 1/K), to logits; it trains with cross-entropy on N more rows of the
batch, and predicts in one pass. The network head is not used either way: it is frozen, in no optimizer group,
and its signal carries no gradient; `train/loss` reports the mean block loss (with `head`, the classifier's
cross-entropy, and the mean block loss as `train/ff_loss`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.errors import ConfigError
from layerwise.models import Network
from layerwise.rules.base import LearningRule, Signal, TrainGroup, output_shapes
from layerwise.rules.options.forward_forward import LOSS_REDUCTIONS, NORMALIZATIONS, ForwardForwardOptions  # noqa: F401  (re-exported; defined in rules/options)

EPS = 1e-8
PERIOD = 4  # pixels per cycle of the label gratings


def overlay(x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """x with its first K values (flattened) replaced by the labels scaled by the batch's max value.

    `labels`: class indices (N,), or (N, K) weights (a neutral label: every class at 1/K)."""
    flat = x.flatten(1).clone()
    weights = F.one_hot(labels, num_classes).to(flat.dtype) if labels.dim() == 1 else labels.to(flat.dtype)
    flat[:, :num_classes] = weights * x.max()
    return flat.view_as(x)


def label_patterns(num_classes: int, height: int, width: int) -> torch.Tensor:
    """(K, H, W) unit-amplitude cosine gratings, class k's at orientation pi * k / K with a 4-pixel period."""
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1)
    cols = torch.arange(width, dtype=torch.float32).view(1, -1)
    angles = [math.pi * k / num_classes for k in range(num_classes)]
    return torch.stack([torch.cos(2 * math.pi / PERIOD * (rows * math.cos(a) + cols * math.sin(a)))
                        for a in angles])


def add_pattern(x: torch.Tensor, labels: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) plus its label's grating (on every channel), scaled by the batch's standard deviation."""
    k = len(patterns)
    weights = F.one_hot(labels, k).to(x.dtype) if labels.dim() == 1 else labels.to(x.dtype)
    return x + x.std() * torch.einsum("nk,khw->nhw", weights, patterns.to(x.dtype)).unsqueeze(1)


def negative_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    # A shift of 1..K-1 is uniform over the wrong labels and can never land on the true one.
    return (y + torch.randint(1, num_classes, y.shape, device=y.device)) % num_classes


def group_dims(ndim: int, mode: str = "sum") -> tuple[int, ...]:
    """The dims of an ndim-dim batch one goodness sums over: all units (`sum`), the channels (`location`) or the
    locations (`channel`). A flat (N, D) output is one location of D channels."""
    if mode == "sum" or ndim == 2:
        return tuple(range(1, ndim))
    return (1,) if mode == "location" else tuple(range(2, ndim))


def normalize(h: torch.Tensor, mode: str = "unit", goodness: str = "sum") -> torch.Tensor:
    """h divided by its L2 length (`unit`) or root-mean-square (`rms`: length sqrt(D)) over each goodness group."""
    dims = group_dims(h.dim(), goodness)
    squares = h.pow(2).mean(dim=dims, keepdim=True) if mode == "rms" else h.pow(2).sum(dim=dims, keepdim=True)
    return h / (squares.sqrt() + EPS)


def goodness(h: torch.Tensor, mode: str = "sum") -> torch.Tensor:
    """Sum of squares over each group: (N,) for `sum`, (N, H, W) for `location`, (N, C) for `channel`."""
    return h.pow(2).sum(dim=group_dims(h.dim(), mode))


def ff_loss(g_pos: torch.Tensor, g_neg: torch.Tensor, threshold: float, reduction: str = "sum_halves") -> torch.Tensor:
    """BCE of sigmoid(g - threshold) against positive/negative; `mean` over all rows or `sum_halves` (2x that)."""
    pos, neg = F.softplus(threshold - g_pos), F.softplus(g_neg - threshold)
    if reduction == "mean":
        return torch.cat([pos, neg]).mean()
    return pos.mean() + neg.mean()


def collaboration(row_goodness: torch.Tensor, i: int) -> torch.Tensor:
    """gamma_i (rows,): the sum over blocks t != i of (T, rows) detached per-row goodness."""
    return row_goodness.sum(dim=0) - row_goodness[i]


def peer_loss(running: torch.Tensor) -> torch.Tensor:
    """mean_j (mean(a) - a_j)^2 over the units' running mean activities a."""
    return (running.mean() - running).pow(2).mean()


class ForwardForward(LearningRule):
    name = "forward_forward"
    Options = ForwardForwardOptions
    local = True
    detach_head = True
    # local, but a pipeline stage's evaluation runs its blocks and the head as they are
    pipeline_refusal = ("trainer=pipeline cannot run method=forward_forward: its prediction embeds every label in "
                        "the image and sums goodness over the whole network, which per-stage evaluation cannot; {fix}")

    def __init__(self, cfg):
        super().__init__(cfg)
        cfg = self.cfg
        self.threshold = cfg.threshold if cfg.threshold == "units" else float(cfg.threshold)
        self.score_from = int(cfg.score_from)
        self.loss_reduction = str(cfg.loss_reduction)
        self.normalization = str(cfg.normalize)
        self.peer_weight = float(cfg.peer_normalization)
        self.peer_momentum = float(cfg.peer_momentum)
        self.grouping = str(cfg.goodness)
        self.label = str(cfg.label)
        self.predict = str(cfg.predict)
        self.collaborative = bool(cfg.collaborative)
        self.thresholds: list[float] = []
        self.num_classes = 0
        self.classifier: nn.Linear | None = None
        self._batch: torch.Tensor | None = None
        self._others: torch.Tensor | None = None
        self._features: list[torch.Tensor] = []
        self._losses: list[torch.Tensor] = []

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        super().setup(net, example, num_classes)
        self.num_classes = num_classes
        shapes = output_shapes(net, example)
        if any(len(shape) not in (1, 3) for shape in shapes):
            raise ConfigError("forward_forward needs blocks whose outputs are vectors or (C, H, W) maps; "
                              "use model=mlp, basic_cnn, vgg* or a resnet")
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.blocks.modules()):
            # BN rescales every unit over the batch (which mixes positive and negative rows), erasing the
            # activity length that goodness measures.
            raise ConfigError("forward_forward needs blocks without batch norm; set model.batch_norm=false")
        if self.grouping == "channel" and any(len(shape) == 1 for shape in shapes):
            raise ConfigError("method.goodness=channel needs convolutional blocks (a vector's channel is one "
                              "unit); use method.goodness=sum or location")
        if self.label == "auto":
            self.label = "pattern" if len(shapes[0]) == 3 else "pixels"
        if self.label == "pattern":
            if example.dim() != 4:
                raise ConfigError("method.label=pattern needs image inputs (N, C, H, W); use method.label=pixels")
            # Not persistent: a function of the input's shape, rebuilt by setup.
            self.register_buffer("patterns", label_patterns(num_classes, *example.shape[2:]), persistent=False)
        elif example[0].numel() < num_classes:
            raise ConfigError(f"forward_forward writes the label over the first {num_classes} input values, but an "
                              f"input has only {example[0].numel()}; use a larger data.image_size")
        if not 0 <= self.score_from < self.n_blocks:
            raise ConfigError(f"method.score_from={self.score_from} must name a block in [0, {self.n_blocks - 1}]")
        # The head is unused; frozen, its forward on the detached batch builds no graph to free.
        net.head.requires_grad_(False)
        units = [math.prod(shape[d - 1] for d in group_dims(len(shape) + 1, self.grouping))
                 for shape in shapes]
        self.thresholds = [float(u) if self.threshold == "units" else self.threshold for u in units]
        if self.peer_weight > 0:
            for i, shape in enumerate(shapes):
                self.register_buffer(f"running_mean{i}", torch.full((int(shape[0]),), 0.5))
        if self.predict == "head":
            features = sum(math.prod(shape) for shape in shapes[self.score_from:])
            self.classifier = nn.Linear(features, num_classes)

    def embed(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x with `labels` (indices, or (N, K) weights) embedded as `method.label` says."""
        if self.label == "pattern":
            return add_pattern(x, labels, self.patterns)
        return overlay(x, labels, self.num_classes)

    def neutral(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x, torch.full((len(x), self.num_classes), 1 / self.num_classes, device=x.device))

    def begin_batch(self, net: Network, x: torch.Tensor, y: torch.Tensor) -> None:
        k = self.num_classes
        rows = [self.embed(x, y), self.embed(x, negative_labels(y, k))]
        if self.predict == "head":
            rows.append(self.neutral(x))
        self._batch = torch.cat(rows)
        self._losses, self._features, self._others = [], [], None
        if self.collaborative:
            with torch.no_grad():
                self._others = torch.stack([self.block_goodness(h).mean(dim=1)
                                            for h in self.block_outputs(net, self._batch[:2 * len(y)])])

    def block_outputs(self, net: Network, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's output for input x, each block's input normalised as in training."""
        outs = []
        for i, block in enumerate(net.blocks):
            x = block(self.normalized(i, x))
            outs.append(x)
        return outs

    def normalized(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Block i's input: the image normalised as a whole, a block's output per goodness group; detached."""
        # Detach before normalizing: a graph that is never backpropagated stays alive under saved-tensor hooks.
        return normalize(x.detach(), self.normalization, "sum" if i == 0 else self.grouping)

    def block_goodness(self, h: torch.Tensor) -> torch.Tensor:
        """(rows, groups) goodness."""
        return goodness(h, self.grouping).reshape(len(h), -1)

    def block_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.normalized(i, self._batch if i == 0 else x)

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> Signal:
        n = len(y)
        g = self.block_goodness(h)
        g_pos, g_neg = g[:n], g[n:2 * n]
        theta = self.thresholds[i]
        metrics = {"pos_goodness": g_pos.sum(1).mean().detach(), "neg_goodness": g_neg.sum(1).mean().detach()}
        if self._others is not None:
            gamma = collaboration(self._others, i).unsqueeze(1)
            g_pos, g_neg = g_pos + gamma[:n], g_neg + gamma[n:]
            theta = sum(self.thresholds)
        loss = ff_loss(g_pos, g_neg, theta, self.loss_reduction)
        if self.peer_weight > 0:
            metrics["ff_loss"] = loss.detach()
            metrics["peer_loss"] = self._peer(i, h[:n])
            loss = loss + self.peer_weight * metrics["peer_loss"]
        self._losses.append(loss.detach())
        if self.classifier is not None and i >= self.score_from:
            self._features.append(normalize(h[2 * n:].detach(), self.normalization, self.grouping).flatten(1))
        return Signal(loss=loss, metrics=metrics)

    def _peer(self, i: int, h_pos: torch.Tensor) -> torch.Tensor:
        """Peer-normalisation loss of block i; updates its running means (the new batch's share keeps the graph)."""
        running = getattr(self, f"running_mean{i}")
        dims = [0, *range(2, h_pos.dim())]  # a conv channel is one unit: mean over rows and locations
        new = self.peer_momentum * running + (1 - self.peer_momentum) * h_pos.mean(dim=dims)
        running.copy_(new.detach())
        return peer_loss(new)

    def head_signal(self, logits: torch.Tensor, y: torch.Tensor) -> Signal:
        self._batch, self._others = None, None
        ff = torch.stack(self._losses).mean()
        if self.classifier is None:
            return Signal(loss=ff)
        logits = self.classifier(torch.cat(self._features, dim=1))
        self._features = []
        return Signal(loss=F.cross_entropy(logits, y), logits=logits, metrics={"ff_loss": ff})

    def scores(self, net: Network, x: torch.Tensor) -> torch.Tensor:
        """(N, K) goodness of every candidate label, summed over the scored blocks."""
        columns = []
        for label in range(self.num_classes):
            outs = self.block_outputs(net, self.embed(x, torch.full((len(x),), label, device=x.device)))
            columns.append(sum(goodness(h).view(len(x)) for h in outs[self.score_from:]))
        return torch.stack(columns, dim=1)

    def evaluate(self, net: Network, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        if self.classifier is None:
            return self.scores(net, x), {}
        outs = self.block_outputs(net, self.neutral(x))[self.score_from:]
        features = [normalize(h, self.normalization, self.grouping).flatten(1) for h in outs]
        return self.classifier(torch.cat(features, dim=1)), {}

    def train_groups(self, net: Network) -> list[TrainGroup]:
        groups = [TrainGroup(f"block{i}", [block], step_after=i) for i, block in enumerate(net.blocks)]
        if self.classifier is not None:
            groups.append(TrainGroup("classifier", [self.classifier], step_after=self.n_blocks))
        return groups

    def describe(self) -> str:
        theta = "units" if self.threshold == "units" else f"{self.threshold:g}"
        peer = f", peer normalization {self.peer_weight:g}" if self.peer_weight > 0 else ""
        conv = (f", goodness {self.grouping}, label {self.label}"
                if self.grouping != "sum" or self.label != "pixels" else "")
        collab = ", collaborative" if self.collaborative else ""
        scoring = f"score from block {self.score_from}" if self.predict == "goodness" else \
            f"linear head on blocks >= {self.score_from}"
        return (f"forward_forward (threshold {theta}, loss {self.loss_reduction}, "
                f"normalize {self.normalization}{peer}{conv}{collab}, {scoring})")
