"""Weight mirrors (Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019, "Deep learning without weight transport",
NeurIPS, section 4).

Feedback alignment whose B learns in a separate mirror phase that alternates with learning: before every
training batch, `mirror.steps` times, each feedback layer's input neurons fire zero-mean noise ξ ~ N(0, σ²) (one
draw of `mirror.batch_size` samples), the layer's output is y = W ξ, and the feedback synapses take the Hebbian
step of the correlation of their two ends, with decay:

    ΔB = η_B ⟨ξ yᵀ⟩ - λ B        E[ξ yᵀ] = σ² Wᵀ        fixed point B = (η_B σ² / λ) Wᵀ

(B in Wᵀ's layout as in the paper; here it is stored in W's layout, so the code adds η_B ⟨y ξᵀ⟩.) Options:
`mirror.lr` = η_B, `mirror.decay` = λ, `mirror.noise_std` = σ; the defaults' fixed point is B = W.
For a conv, ξ is a noise image of the layer's input size and ⟨y ξᵀ⟩ is the kernel-shaped correlation averaged
over the (sample, position) pairs each kernel tap saw, so that E⟨y ξᵀ⟩ = σ² W at every tap despite padding.

What differs from the paper: y is the layer's linear map without its bias (the bias adds a constant that the
zero-mean ξ averages out; dropping it removes that noise), and a mirror phase runs before every batch rather than
in separate mirror epochs. The paper's equation numbers were not checked (its text was not reachable here).
B is a buffer, updated without autograd, so checkpoints carry it; the noise comes from a generator seeded by
`mirror_seed` (drawn once from the run's seed) and the count of mirror steps done, both buffers, so a resumed run
draws the same noise, and every DDP process (same seed, same W) computes the same B.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_weight

from layerwise.rules.base import evaluating
from layerwise.rules.fa import FeedbackAlignment
from layerwise.rules.feedback import FeedbackConv2d, FeedbackLayer, FixedFeedback, check_scale, random_feedback
from layerwise.rules.options.weight_mirror import WeightMirrorOptions  # noqa: F401  (re-exported; defined in rules/options)


class MirrorFeedback(FixedFeedback):
    """B as a buffer (like fa's) that the mirror phase rewrites; `in_shape` is one input sample's shape."""

    in_shape: tuple = ()


def _conv_geometry(layer: FeedbackConv2d, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """The input padded as the layer's forward pads it, and the conv arguments that go with it."""
    padding = layer.padding
    if layer.padding_mode != "zeros":
        x, padding = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode), (0, 0)
    return x, (layer.stride, padding, layer.dilation, layer.groups)


@torch.no_grad()
def mirror_correlation(layer: nn.Module, xi: torch.Tensor) -> torch.Tensor:
    """⟨y ξᵀ⟩ in W's layout for noise ξ at the layer's input, y = W ξ (no bias): averaged over samples (and, for a
    conv, over the positions each kernel tap saw inside the input)."""
    w = layer.weight.detach()
    if isinstance(layer, FeedbackConv2d):
        xi, conv = _conv_geometry(layer, xi)
        y = F.conv2d(xi, w, None, *conv)
        counts = conv2d_weight(torch.ones_like(xi[:1]), w.shape, torch.ones_like(y[:1]), *conv)
        return conv2d_weight(xi, w.shape, y, *conv) / (counts * xi.shape[0])
    xi2 = xi.reshape(-1, xi.shape[-1])
    return (xi2 @ w.t()).t() @ xi2 / xi2.shape[0]


class WeightMirror(FeedbackAlignment):
    name = "weight_mirror"
    Options = WeightMirrorOptions

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.mirror_cfg = self.cfg.mirror
        self.register_buffer("mirror_seed", torch.zeros((), dtype=torch.long))
        self.register_buffer("mirror_steps_done", torch.zeros((), dtype=torch.long))

    def checked_scale(self, value):
        return check_scale(value, "weight_mirror")

    def make_feedback(self, layer: nn.Module) -> nn.Module:
        scale = 1.0 if self.scale is None else float(self.scale)
        return MirrorFeedback(random_feedback(layer.weight.shape, self.init, scale, device=layer.weight.device))

    def setup(self, net, example, num_classes: int) -> None:
        super().setup(net, example, num_classes)
        self.mirror_seed.fill_(int(torch.randint(0, 2**31 - 1, ())))
        # Each layer's input size, for noise images of that size: read from one probe pass.
        hooks = [m.register_forward_pre_hook(lambda m, args: setattr(m.feedback, "in_shape", tuple(args[0].shape[1:])))
                 for m in self.mirror_layers(net)]
        try:
            with evaluating(net):
                net(example[:1])
        finally:
            for hook in hooks:
                hook.remove()

    @staticmethod
    def mirror_layers(net: nn.Module) -> list[nn.Module]:
        return [m for m in net.modules() if isinstance(m, FeedbackLayer) and isinstance(m.feedback, MirrorFeedback)]

    @torch.no_grad()
    def mirror(self, net: nn.Module) -> None:
        """One mirror step of every feedback layer: B <- (1 - decay)·B + lr·⟨y ξᵀ⟩."""
        cfg = self.mirror_cfg
        layers = self.mirror_layers(net)
        if not layers:
            return
        device = layers[0].weight.device
        gen = torch.Generator(device=device)
        gen.manual_seed(int(self.mirror_seed) * 1_000_003 + int(self.mirror_steps_done))
        # B's own precision, whatever trainer.precision autocasts the training step to
        with torch.autocast(device_type=device.type, enabled=False):
            for layer in layers:
                b = layer.feedback.matrix
                xi = torch.randn((int(cfg.batch_size), *layer.feedback.in_shape), generator=gen, device=device,
                                 dtype=layer.weight.dtype) * float(cfg.noise_std)
                b.mul_(1.0 - float(cfg.decay)).add_(mirror_correlation(layer, xi).to(b.dtype), alpha=float(cfg.lr))
        self.mirror_steps_done += 1

    def begin_batch(self, net, x, y) -> None:
        for _ in range(int(self.mirror_cfg.steps)):
            self.mirror(net)

    def describe(self) -> str:
        c = self.mirror_cfg
        return (f"{self.name} ({c.steps} mirror step(s)/batch, noise std {c.noise_std}, lr {c.lr}, decay {c.decay}; "
                f"{self._conversion()})")
