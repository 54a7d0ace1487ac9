"""Local self-supervised reconstruction (the thesis's third iteration), alone or mixed with DGL.

Every local block gets a decoder (1x1 conv to the image channels, optionally upsampled to the input size by
transposed convs or bilinear interpolation) and an L1 loss against the network input resized to the
decoder's output. Mixed mode: loss = pred_weight·CE(aux) + ssl_weight·L1, the last block trained by the head
as in DGL. `ssl_only`: every trainable block learns from reconstruction alone, no label reaches a conv
block, and the head trains on detached features.

`shift`: block j's target is the input rolled (both spatial axes, at input resolution, before resizing) by
a shift that rises linearly from the first conv's kernel size to half the image size across the local
blocks, so deeper blocks, with wider receptive fields, must predict farther-away pixels. Rolling wraps
around, which only a circularly padded network can see: other padding gets a warning.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from loguru import logger
from torch import nn
from torchvision.utils import make_grid

from layerwise.errors import ConfigError
from layerwise.models import Network
from layerwise.rules.base import Signal, output_shapes
from layerwise.rules.dgl import DecoupledGreedy
from layerwise.rules.options.ssl import UPSAMPLING, SslOptions  # noqa: F401  (re-exported; defined in rules/options)
from layerwise.rules.pre_pool import PrePoolMaps


def shift_schedule(first_kernel: int, image_size: int, n: int) -> list[int]:
    """Shifts of the n local blocks: linear from the first conv's kernel size to half the image size."""
    start, end = first_kernel, image_size // 2
    if n == 1:
        return [start]
    return [round(start + (end - start) * j / (n - 1)) for j in range(n)]


class Decoder(nn.Module):
    """Block features (C, h, w) -> an image (image_channels, size, size); size = h without upsampling."""

    def __init__(self, channels: int, image_channels: int, in_size: int, image_size: int, upsample: str):
        super().__init__()
        self.size = in_size if upsample == "none" else image_size
        layers: list[nn.Module] = []
        if upsample == "transposed":
            for _ in range(max(0, round(math.log2(image_size / in_size)))):
                out = max(image_channels, channels // 2)
                layers += [nn.ConvTranspose2d(channels, out, 4, stride=2, padding=1), nn.ReLU()]
                channels = out
        layers.append(nn.Conv2d(channels, image_channels, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.layers(h)
        if out.shape[-1] != self.size:  # bilinear upsampling, or a size transposed convs cannot reach exactly
            out = F.interpolate(out, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return out


class SelfSupervised(DecoupledGreedy):
    name = "ssl"
    Options = SslOptions
    local = True

    def __init__(self, cfg):
        super().__init__(cfg)
        cfg = self.cfg
        self.ssl_only = bool(cfg.ssl_only)
        self.pred_weight, self.ssl_weight = float(cfg.pred_weight), float(cfg.ssl_weight)
        self.detach_head = self.ssl_only
        self.decoders = nn.ModuleDict()
        self.shifts: dict[int, int] = {}
        self._input: torch.Tensor | None = None
        self._pre_pool = PrePoolMaps()

    # ------------------------------------------------------------------ structure
    def local_blocks(self) -> range:
        return range(self.first_trainable, self.n_blocks if self.ssl_only else self.n_blocks - 1)

    def aux_blocks(self) -> range:
        return range(0) if self.ssl_only else self.local_blocks()

    def block_modules(self, i: int) -> list[nn.Module]:
        return [*([self.aux[str(i)]] if str(i) in self.aux else []), self.decoders[str(i)]]

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        super().setup(net, example, num_classes)
        if example.dim() != 4:
            raise ConfigError("method=ssl reconstructs images and needs image inputs")
        image_channels, image_size = example.shape[1], example.shape[-1]
        use_pre_pool = bool(self.cfg.decoder_before_pool)
        if use_pre_pool:
            self._pre_pool.attach(net.blocks, self.local_blocks())
        feature_shapes = self._decoder_inputs(net, example)
        for i in self.local_blocks():
            shape = feature_shapes[i]
            if len(shape) != 3:
                raise ConfigError(f"method=ssl needs conv blocks (image-shaped outputs), but block {i} outputs "
                                  f"{tuple(shape)}; use a conv model (basic_cnn, vgg*) or method=dgl")
            self.decoders[str(i)] = Decoder(shape[0], image_channels, shape[-1], image_size, self.cfg.upsample)
        if self.cfg.shift:
            convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
            local = list(self.local_blocks())
            self.shifts = dict(zip(local, shift_schedule(convs[0].kernel_size[0], image_size, len(local))))
            if convs[0].padding_mode != "circular":
                logger.warning("method.shift rolls targets around the image edge; model.padding_mode=circular "
                               "lets the network see the wrapped pixels (recommended)")

    def _decoder_inputs(self, net: Network, example: torch.Tensor) -> list[torch.Size]:
        shapes = output_shapes(net, example)
        return [m.shape[1:] if (m := self._pre_pool.pop(i, None)) is not None else s for i, s in enumerate(shapes)]

    # ------------------------------------------------------------------ signals
    def begin_batch(self, net: Network, x: torch.Tensor, y: torch.Tensor) -> None:
        self._input = x

    def target(self, i: int, x: torch.Tensor, size: int) -> torch.Tensor:
        """The input, rolled by block i's shift, at the decoder's output size."""
        shift = self.shifts.get(i, 0)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(-2, -1))
        return x if x.shape[-1] == size else F.adaptive_avg_pool2d(x, size)

    def reconstruct(self, i: int, h: torch.Tensor) -> torch.Tensor:
        features = self._pre_pool.pop(i, h)
        return self.decoders[str(i)](features)

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> Signal | None:
        if str(i) not in self.decoders:
            return None
        recon = self.reconstruct(i, h)
        ssl_loss = F.l1_loss(recon, self.target(i, self._input, recon.shape[-1]))
        if self.ssl_only:
            return Signal(loss=ssl_loss)
        pred = self.aux_signal(i, h, y)
        loss = self.pred_weight * pred.loss + self.ssl_weight * ssl_loss
        return Signal(loss=loss, logits=pred.logits, metrics={"pred_loss": pred.loss, "ssl_loss": ssl_loss})

    def images(self, net: Network, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per local block: targets (top row) above reconstructions (bottom row), each image min-max scaled."""
        grids, h = {}, x
        with torch.no_grad():
            for i, block in enumerate(net.blocks):
                h = block(h)
                if str(i) in self.decoders:
                    recon = self.reconstruct(i, h)
                    pair = torch.cat([self.target(i, x, recon.shape[-1]), recon]).float().cpu()
                    if pair.shape[-1] < 32:  # small maps are hard to see: enlarge pixels, do not smooth them
                        pair = F.interpolate(pair, scale_factor=math.ceil(32 / pair.shape[-1]), mode="nearest")
                    grid = make_grid(pair, nrow=len(x), normalize=True, scale_each=True, pad_value=1.0)
                    grids[f"ssl_block{i}"] = grid
        self._pre_pool.clear()
        return grids

    def describe(self) -> str:
        mode = "ssl only" if self.ssl_only else f"pred {self.pred_weight} + ssl {self.ssl_weight}"
        shift = f", shifts {list(self.shifts.values())}" if self.shifts else ""
        return f"ssl ({mode}, upsample {self.cfg.upsample}{shift})"
