"""InfoPro: locally supervised learning that keeps the information in the input.

Wang, Ni, Song, Yang & Huang (2021), "Revisiting Locally Supervised Learning: an Alternative to End-to-End
Training", ICLR. A greedy local loss (e.g. DGL's aux cross-entropy) makes early modules discard what the label
does not need yet, which hurts the modules above. InfoPro's surrogate loss of local module i is

    lambda1_i * reconstruction(decoder_i(h_i), x) + lambda2_i * label_term(h_i, y)

where the reconstruction of the input image x (the raw pixels in [0, 1]: `recon_target=image` undoes the data
module's normalisation, as the paper's code does) lower-bounds I(h, x) and the label term (aux cross-entropy, or a
supervised contrastive loss) lower-bounds I(h, y). Modules 0..K-2 train on a detached input with their own
optimizer; the last module trains with the network head's cross-entropy, as in DGL. Following the paper's code,
the lambdas move linearly from [start] at the first local module to [end] at the last one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from layerwise.errors import ConfigError
from layerwise.models import Network, flat_layers, regroup
from layerwise.rules.base import LearningRule, Signal, TrainGroup, output_shapes
from layerwise.rules.dgl import build_aux_head
from layerwise.rules.options.infopro import (  # noqa: F401  (re-exported; defined in rules/options)
    LABEL_LOSSES,
    RECON_LOSSES,
    RECON_TARGETS,
    InfoProOptions,
    check_recon,
    check_weights,
)


def lambda_schedule(start_end, n_local: int) -> list[float]:
    """Weights of the n_local local modules, linear from start (module 0) to end (module n_local-1)."""
    start, end = (float(v) for v in start_end)
    ts = [i / (n_local - 1) if n_local > 1 else 0.0 for i in range(n_local)]
    return [start * (1 - t) + end * t for t in ts]


def supcon_loss(z: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., 2020, L_out) with one view per sample.

    z: L2-normalised features (B, D). Positives of an anchor are the other samples of its class; anchors
    without any positive are left out of the mean (their term is undefined).
    """
    sim = z @ z.t() / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))  # the anchor is in neither numerator nor denominator
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positives = (y[:, None] == y[None, :]) & ~self_mask
    n_pos = positives.sum(1)
    has_pos = n_pos > 0
    if not has_pos.any():
        return z.sum() * 0.0  # no pair shares a class: no signal, but keep the graph for backward
    mean_log_prob_pos = log_prob.masked_fill(~positives, 0.0).sum(1)[has_pos] / n_pos[has_pos]
    return -mean_log_prob_pos.mean()


def minmax_per_channel(x: torch.Tensor) -> torch.Tensor:
    """Rescale each image's channels to [0, 1] over space (recon_target=minmax, this project's earlier target).

    Min-max over space is invariant to any per-channel normalisation (x - mean) / std, so it needs no knowledge
    of the data module; but it stretches each image's contrast, so it is not the paper's target, the raw image
    (recon_target=image, which undoes the data module's normalisation).
    """
    flat = x.flatten(2)
    low, high = flat.amin(2, keepdim=True), flat.amax(2, keepdim=True)
    return ((flat - low) / (high - low).clamp_min(1e-8)).view_as(x)


def pixel_affine(normalize: str, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel with raw image = normalised * scale + shift, for data.normalize's modes."""
    channels = len(mean)
    if normalize == "gaussian":
        return torch.tensor(std, dtype=torch.float32), torch.tensor(mean, dtype=torch.float32)
    if normalize == "minus_one_one":
        return torch.full((channels,), 0.5), torch.full((channels,), 0.5)
    if normalize == "none":
        return torch.ones(channels), torch.zeros(channels)
    raise ConfigError(f"data.normalize={normalize!r} is not known; choose minus_one_one, gaussian or none")


class Decoder(nn.Module):
    """Reconstructs the input image (C, H, W) from a block output.

    Conv features: bilinear upsampling to H x W, then Conv3x3-BN-ReLU-Conv3x3 (the paper's decoder; its
    code uses 12 hidden channels; the sigmoid is in the loss). Flat features (MLP blocks): one Linear back to
    C*H*W.
    """

    def __init__(self, shape: torch.Size, image_shape: torch.Size, channels: int):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.conv = len(shape) == 3
        if self.conv:
            self.net = nn.Sequential(
                # no bias before the BN (the paper's has one, which the BN's mean cancels); the output conv's bias
                # is the paper's and matters
                nn.Conv2d(shape[0], channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
                nn.Conv2d(channels, image_shape[0], 3, padding=1))
        else:
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.Size(shape).numel()),
                                                             int(torch.Size(image_shape).numel())))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.conv:
            h = F.interpolate(h, size=self.image_shape[1:], mode="bilinear", align_corners=True)
        return self.net(h).view(len(h), *self.image_shape)


class InfoPro(LearningRule):
    name = "infopro"
    Options = InfoProOptions
    local = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.recon_target = str(self.cfg.recon_target)
        self.decoders = nn.ModuleList()
        self.label_heads = nn.ModuleList()
        self.recon_weights: list[float] = []
        self.pred_weights: list[float] = []
        self._x: torch.Tensor | None = None
        # raw = x * scale + shift: identity until the data module's normalisation is known
        self.register_buffer("pixel_scale", torch.ones(1), persistent=False)
        self.register_buffer("pixel_shift", torch.zeros(1), persistent=False)

    def set_input_normalization(self, normalize: str, mean, std) -> None:
        """The data module's normalisation, so that recon_target=image can undo it (train.py calls this)."""
        scale, shift = pixel_affine(normalize, mean, std)
        device = self.pixel_scale.device
        self.pixel_scale = scale.view(1, -1, 1, 1).to(device)
        self.pixel_shift = shift.view(1, -1, 1, 1).to(device)

    def recon_target_of(self, x: torch.Tensor) -> torch.Tensor:
        if self.recon_target == "minmax":
            return minmax_per_channel(x)
        if self.recon_target == "input":
            return x
        return x * self.pixel_scale.to(x.dtype) + self.pixel_shift.to(x.dtype)

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        cfg = self.cfg
        n_layers = len(flat_layers(net))
        if cfg.num_modules is not None:
            k = int(cfg.num_modules)
            if not 2 <= k <= n_layers:
                raise ConfigError(f"method.num_modules={k} must be between 2 and the number of layers ({n_layers})")
            regroup(net, k)
        elif cfg.split is not None:
            sizes = [int(s) for s in cfg.split]
            if len(sizes) < 2 or any(s < 1 for s in sizes) or sum(sizes) != n_layers:
                raise ConfigError(f"method.split={sizes} must be at least 2 positive sizes summing to the "
                                  f"{n_layers} layers of this model (e.g. method.split=[{n_layers - 1},1])")
            regroup(net, sizes)
        super().setup(net, example, num_classes)
        if len(net.blocks) < 2:
            raise ConfigError("InfoPro needs at least 2 modules; set method.num_modules=2 (or model.blocks=null)")

        shapes = output_shapes(net, example)[:-1]
        n_local = len(shapes)
        self.recon_weights = lambda_schedule(cfg.recon_weight, n_local)
        self.pred_weights = lambda_schedule(cfg.pred_weight, n_local)
        check_weights(self.recon_weights, self.pred_weights)
        self.decoders = nn.ModuleList(Decoder(s, example.shape[1:], int(cfg.decoder_channels)) for s in shapes)
        if cfg.label_loss == "ce" or cfg.aux.type == "infopro_paper":  # the paper's head pools globally itself
            out_dim = num_classes if cfg.label_loss == "ce" else int(cfg.feature_dim)
            self.label_heads = nn.ModuleList(build_aux_head(s, out_dim, cfg.aux) for s in shapes)
        else:
            # The aux head's layers with a global average pool, ending in a feature_dim projection.
            proj_cfg = OmegaConf.merge(cfg.aux, {"pool_size": 1})
            self.label_heads = nn.ModuleList(build_aux_head(s, int(cfg.feature_dim), proj_cfg) for s in shapes)

    def begin_batch(self, net: Network, x: torch.Tensor, y: torch.Tensor) -> None:
        self._x = x  # the reconstruction target of every local module on this batch

    def recon_loss(self, i: int, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = self.decoders[i](h)
        target = self.recon_target_of(x)
        if self.cfg.recon_loss == "bce":
            # BCE on the logits is the paper's sigmoid + BCE, without log(0) when the sigmoid saturates.
            return F.binary_cross_entropy_with_logits(out, target)
        return F.mse_loss(out, target)

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> Signal | None:
        if i >= len(self.decoders):
            return None  # the last module learns from the network head
        if self._x is None:
            raise RuntimeError("InfoPro.block_signal needs the batch's input: call begin_batch first")
        recon = self.recon_loss(i, h, self._x)
        logits = None
        if self.cfg.label_loss == "ce":
            logits = self.label_heads[i](h)
            pred = F.cross_entropy(logits, y)
        else:
            z = F.normalize(self.label_heads[i](h), dim=1)
            pred = supcon_loss(z, y, float(self.cfg.temperature))
        total = self.recon_weights[i] * recon + self.pred_weights[i] * pred
        return Signal(loss=total, logits=logits, metrics={"recon_loss": recon.detach(), "pred_loss": pred.detach()})

    def block_logits(self, i: int, h: torch.Tensor) -> torch.Tensor | None:
        if self.cfg.label_loss != "ce" or i >= len(self.label_heads):
            return None  # a contrastive projection is no classifier
        return self.label_heads[i](h)

    def train_groups(self, net: Network) -> list[TrainGroup]:
        n = len(net.blocks)
        groups = [TrainGroup(f"block{i}", [net.blocks[i], self.decoders[i], self.label_heads[i]], step_after=i)
                  for i in range(n - 1)]
        groups.append(TrainGroup(f"block{n - 1}+head", [net.blocks[n - 1], net.head], step_after=n))
        return groups

    def describe(self) -> str:
        c = self.cfg
        return (f"infopro ({self.n_blocks} modules, recon {c.recon_loss} of the {self.recon_target} "
                f"{list(c.recon_weight)}, label {c.label_loss} {list(c.pred_weight)}, head {c.aux.type})")
