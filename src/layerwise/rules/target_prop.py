"""Difference target propagation: DTP (Lee, Zhang, Fischer & Bengio 2015, "Difference Target Propagation"),
DDTP-linear (Meulemans, Carzaniga, Suykens, Sacramento & Grewe 2020, "A Theoretical Framework for Target
Propagation") and L-DRL (Ernoult, Normandin, Moudgil, Spinney, Belilovsky, Rish, Richards & Bengio 2022, "Towards
Scaling Difference Target Propagation by Learning Backprop Targets").

Blocks f_0 .. f_{L} (h_k = f_k(h_{k-1}), h_{-1} = x), then the head (its hidden layers moved into blocks first,
so it is one output Linear). Per batch, with every weight as it was when the batch began:

- top target (Lee et al.'s target of the penultimate layer, computed by the gradient of the output layer):
  ĥ_L = h_L - η̂ ∂ℓ/∂h_L, ℓ the per-sample cross-entropy (so η̂ = method.target_step does not depend on the
  batch size; Ernoult et al.'s β);
- targets down the network (dtp, ldrl: the difference correction with the layer-wise feedback g_k, which maps
  h_{k+1} back to h_k's shape):  ĥ_k = h_k + g_k(ĥ_{k+1}) - g_k(h_{k+1});
  ddtp (direct feedback Q_k from the top block's output to block k, DDTP-linear: g_k(v) = Q_k v + c_k):
  ĥ_k = h_k + g_k(ĥ_L) - g_k(h_L);
- every block regresses onto its target on a detached input: L_k = ‖f_k(h_{k-1}) - ĥ_k‖² / (2 η̂) (squared
  norm per sample, mean over the batch). The 1/(2η̂) is a constant factor on the papers' ‖·‖²: with it the top
  block's update is exactly backprop's, so optimizer.lr means what it means for method=bp;
- the head trains on the cross-entropy of the detached h_L (Lee et al.: the output layer learns from the loss);
- feedback losses, ε ~ σ N(0, 1) with σ = method.noise, and only g's parameters trained (f evaluated without
  gradient and without moving batch-norm running statistics):
  dtp (Lee et al.'s reconstruction with a corrupted input):  L_inv = ‖g_k(f_{k+1}(h_k + ε)) - (h_k + ε)‖²;
  ddtp (Meulemans et al.'s difference reconstruction loss, DRL):
      L_DRL = ‖g_k(f_{L,k}(h_k + ε)) - g_k(h_L) + h_k - (h_k + ε)‖² / σ², f_{L,k} = f_L ∘ ... ∘ f_{k+1};
  ldrl (Ernoult et al.'s local DRL, with y = h_{k+1}, r = g_k(y), η ~ σ N(0, 1) on the block output):
      L_LDRL = -2 ε·(g_k(f_{k+1}(h_k + ε)) - r) + ‖g_k(y + η) - r‖²,
  whose expectation is σ²(‖J_g‖² - 2 tr(J_g J_f)) = σ²‖J_g - J_fᵀ‖² + const: the feedback's Jacobian learns
  the transpose of the forward one (their Jacobian matching condition), so the targets approximate backprop's.
  Each is a squared norm per sample, mean over the batch, averaged over `feedback.samples` noise draws.

Equation numbers are not cited: the papers' full text was not reachable from this session's reference search.
The formulas follow the papers' algorithms (Lee et al.'s Algorithm 1; Meulemans et al.'s DRL; Ernoult et al.'s
L-DRL) as the authors' code implements them (meulemansalex/theoretical_framework_for_target_propagation,
ernoult/scalingDTP, read to understand, not copied). The DRL's scale 1/σ² follows Meulemans et al.'s code; the
L-DRL is unscaled as in Ernoult et al.'s code, so their feedback learning rates carry over.

Schedule: targets need the whole forward pass, so every block's graph is kept until the head has run (peak
activation memory like backprop's). After the head's backward, every block's regression and every feedback loss
is backpropagated (each touching its own parameters only) and all groups step together. One feedback step per
batch: Lee et al. alternate one feedback and one forward update per minibatch; Ernoult et al. run several feedback
iterations per batch first (20 to 55 on CIFAR-10), which this loop (one step per group and batch) does not.

Feedback modules (method.feedback.type): between conv maps whose sides are in an integer ratio s, a transposed
conv (s = 1: 3x3, padding 1; even s: kernel 2s, stride s, padding s/2; odd s: kernel s, stride s); otherwise a
dense Linear on the flattened output. Then the activation that ends the block whose output it predicts
(feedback.activation=block, dtp's default: Lee et al.'s g has f's form) or none (ldrl's default: L-DRL fits g's
Jacobian to f's transpose, which a linear g does far better on digits). Ernoult et al. invert a max-pool with the
forward pass's pooling indices; here the transposed conv's stride upsamples. ddtp's Q_k are dense and linear.

Blocks are black boxes for all three (the regression backpropagates inside a block), so residual blocks work.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn

from layerwise.errors import ConfigError
from layerwise.models import Network, is_activation, split_head
from layerwise.rules.base import LearningRule, Signal, TrainGroup, output_shapes
from layerwise.rules.options.target_prop import AUTO_ACTIVATION, AUTO_LR_SCALE, TargetPropOptions


def squared(t: torch.Tensor) -> torch.Tensor:
    """‖t‖² per sample, mean over the batch."""
    return t.pow(2).flatten(1).sum(1).mean()


def conv_ratio(src: torch.Size, dst: torch.Size) -> int | None:
    """The integer factor s with dst's map = s x src's map, or None where a transposed conv cannot map src to dst."""
    if len(src) != 3 or len(dst) != 3 or dst[1] % src[1] or dst[2] % src[2]:
        return None
    s = dst[1] // src[1]
    return s if dst[2] // src[2] == s else None


class Inverse(nn.Module):
    """A feedback module: maps a tensor shaped `src` (per sample) to one shaped `dst`, then an activation."""

    def __init__(self, src: torch.Size, dst: torch.Size, kind: str, activation: nn.Module | None):
        super().__init__()
        self.dst = tuple(dst)
        s = conv_ratio(src, dst) if kind != "dense" else None
        if kind == "conv" and s is None:
            raise ConfigError(f"method.feedback.type=conv cannot map a block output {tuple(src)} back to "
                              f"{tuple(dst)} (not conv maps in an integer ratio); use method.feedback.type=auto")
        self.conv = s is not None
        if self.conv:
            k, p = (3, 1) if s == 1 else ((2 * s, s // 2) if s % 2 == 0 else (s, 0))
            self.layer = nn.ConvTranspose2d(src[0], dst[0], k, stride=s, padding=p)
        else:
            self.layer = nn.Linear(int(torch.Size(src).numel()), int(torch.Size(dst).numel()))
        self.act = activation if activation is not None else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.layer(h) if self.conv else self.layer(h.flatten(1)).view(len(h), *self.dst)
        return self.act(z)


def last_activation(block: nn.Module) -> nn.Module | None:
    acts = [m for m in block.modules() if is_activation(m)]
    return copy.deepcopy(acts[-1]) if acts else None


@contextmanager
def kept_buffers(modules: list[nn.Module]):
    """Run modules (train mode, no grad) on copies of their buffers: a noisy probe pass must not move batch
    norm's running statistics, which evaluation uses. Swapped, not restored in place: the training forward's
    graph holds the originals and would refuse a tensor modified after it was saved."""
    swapped = [(m, name, b) for module in modules for m in module.modules()
               for name, b in m._buffers.items() if b is not None]
    for m, name, b in swapped:
        m._buffers[name] = b.clone()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, name, b in swapped:
            m._buffers[name] = b


def per_module(value, count: int, path: str) -> list[float]:
    """A number for every feedback module, or a list with one per module (bottom first)."""
    if isinstance(value, (int, float)):
        return [float(value)] * count
    values = [float(v) for v in value]
    if len(values) != count:
        raise ConfigError(f"{path} has {len(values)} items, but this network has {count} feedback modules (one "
                          f"per block but the {'last' if count else 'only'}); give {count} numbers or one number")
    return values


class TargetProp(LearningRule):
    name = "target_prop"
    Options = TargetPropOptions
    local = True
    detach_head = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.variant = str(self.cfg.variant)
        self.step = float(self.cfg.target_step)
        self.samples = int(self.cfg.feedback.samples)
        self.feedback = nn.ModuleList()
        self.noise: list[float] = []
        self.lr_scales: list[float] = []
        self.moved = 0
        self._clear()

    def _clear(self) -> None:
        self._blocks: list[nn.Module] = []
        self._outs: dict[int, torch.Tensor] = {}
        self._top_in: torch.Tensor | None = None
        self._top_grad: torch.Tensor | None = None

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        self.moved = split_head(net)  # before the base setup, which counts the blocks
        super().setup(net, example, num_classes)
        shapes = output_shapes(net, example)
        count = len(shapes) - 1
        fb = self.cfg.feedback
        self.noise = per_module(self.cfg.noise, count, "method.noise")
        lr_scale = fb.lr_scale if fb.lr_scale is not None else AUTO_LR_SCALE[self.variant]
        self.lr_scales = per_module(lr_scale, count, "method.feedback.lr_scale")
        activation = AUTO_ACTIVATION[self.variant] if fb.activation == "auto" else str(fb.activation)
        if self.variant == "ddtp":
            modules = [Inverse(shapes[-1], shapes[k], "dense", None) for k in range(count)]
        else:
            modules = [Inverse(shapes[k + 1], shapes[k], str(fb.type),
                               last_activation(net.blocks[k]) if activation == "block" else None)
                       for k in range(count)]
        self.feedback = nn.ModuleList(modules)

    # ------------------------------------------------------------------------------------------ the batch
    def begin_batch(self, net: Network, x: torch.Tensor, y: torch.Tensor) -> None:
        self._clear()
        self._blocks = list(net.blocks)  # a plain list: the blocks stay the network's parameters, not the rule's

    def block_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if i == 0:
            return x
        if i == self.n_blocks:  # a leaf, so the head's loss gives ∂ℓ/∂h_L without reaching the blocks
            self._top_in = x.detach().requires_grad_()
            return self._top_in
        return x.detach()

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> None:
        self._outs[i] = h
        return None  # regressed onto its target once the head has run (after_backward)

    def head_signal(self, logits: torch.Tensor, y: torch.Tensor) -> Signal:
        signal = super().head_signal(logits, y)
        # The loss's own gradient (not a hook): under AMP the head's backward is scaled. Times the batch size:
        # the per-sample loss's gradient, so the target step does not depend on the batch size.
        grad = torch.autograd.grad(signal.loss, self._top_in, retain_graph=True)[0]
        self._top_grad = grad.detach() * len(y)
        return signal

    def after_backward(self, i: int) -> dict[str, Signal]:
        if i < self.n_blocks or self._top_grad is None:
            return {}
        outs = [self._outs[k] for k in range(self.n_blocks)]
        hs = [h.detach() for h in outs]
        with torch.no_grad():
            targets = self.targets(hs, self._top_grad)
        signals = {f"block{k}/train_": Signal(loss=squared(outs[k] - targets[k]) / (2 * self.step))
                   for k in range(self.n_blocks)}
        for k in range(len(self.feedback)):
            signals[f"feedback{k}/train_"] = Signal(loss=self.feedback_loss(k, hs))
        self._clear()
        return signals

    # ------------------------------------------------------------------------------------------ the math
    def targets(self, hs: list[torch.Tensor], top_grad: torch.Tensor) -> list[torch.Tensor]:
        """ĥ_L = h_L - η̂ ∂ℓ/∂h_L, then ĥ_k = h_k + g_k(ĥ_above) - g_k(h_above), the above being block k+1
        (dtp, ldrl) or the top block (ddtp)."""
        n = len(hs)
        out: list[torch.Tensor] = [hs[-1]] * n
        out[-1] = hs[-1] - self.step * top_grad.to(hs[-1].dtype)
        for k in range(n - 2, -1, -1):
            g = self.feedback[k]
            above = n - 1 if self.variant == "ddtp" else k + 1
            out[k] = hs[k] + g(out[above]) - g(hs[above])
        return out

    def feedback_loss(self, k: int, hs: list[torch.Tensor]) -> torch.Tensor:
        """Feedback module k's loss (dtp: reconstruction; ddtp: DRL; ldrl: L-DRL), mean over noise samples."""
        g, sigma, x = self.feedback[k], self.noise[k], hs[k]
        upper = self._blocks[k + 1:] if self.variant == "ddtp" else self._blocks[k + 1:k + 2]
        losses = []
        for _ in range(self.samples):
            dx = sigma * torch.randn_like(x)
            with kept_buffers(upper):
                z = x + dx
                for block in upper:
                    z = block(z)
            if self.variant == "dtp":
                losses.append(squared(g(z) - (x + dx)))
            elif self.variant == "ddtp":
                losses.append(squared(g(z) - g(hs[-1]) + x - (x + dx)) / sigma ** 2)
            else:
                y = hs[k + 1]
                r = g(y)
                dy = sigma * torch.randn_like(y)
                losses.append(-2 * (dx * (g(z) - r)).flatten(1).sum(1).mean() + squared(g(y + dy) - r))
        return torch.stack(losses).mean()

    # ------------------------------------------------------------------------------------------ training
    def train_groups(self, net: Network) -> list[TrainGroup]:
        n = len(net.blocks)
        groups = [TrainGroup(f"block{i}", [block], step_after=n) for i, block in enumerate(net.blocks)]
        groups += [TrainGroup(f"feedback{k}", [g], step_after=n, lr_scale=self.lr_scales[k])
                   for k, g in enumerate(self.feedback)]
        return groups + [TrainGroup("head", [net.head], step_after=n)]

    def describe(self) -> str:
        names = {"dtp": "DTP", "ddtp": "DDTP-linear", "ldrl": "L-DRL"}
        kinds = sorted({"conv" if g.conv else "dense" for g in self.feedback}) or ["no"]
        moved = f", {self.moved} head layer{'s' * (self.moved != 1)} moved into blocks" if self.moved else ""
        return (f"target_prop ({names[self.variant]}, {len(self.feedback)} {'/'.join(kinds)} feedback modules, "
                f"target step {self.step:g}{moved})")

