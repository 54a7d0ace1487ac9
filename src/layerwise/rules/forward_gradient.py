"""Forward gradients: gradient estimates from forward-mode directional derivatives (`torch.func.jvp`).

`method.estimator`:
- `weight` (Baydin et al. 2022, "Gradients without Backpropagation"): a tangent v ~ N(0, I) over the parameters;
  one jvp gives d = ∇f·v and the update is d·v, unbiased. f is the head's cross-entropy of the whole network
  (`method.loss=global`, the paper's) or, per block, the block's aux-head cross-entropy with v over the block and
  its aux head (`local`, Ren et al.'s LG-FG-W; the last block's aux head is the network head).
- `activity` (Ren et al. 2023, "Scaling Forward Gradient With Local Losses", LG-FG-A): a tangent u ~ N(0, I) on
  each block's output h, per example; d_n = ∇_{h_n} L · u_n (one jvp of the per-example losses), the activity
  gradient guess ĝ_h = d·u is injected at h and backpropagated through that block only: ĝ_w = (∇_h L·u) u ∂h/∂w.
  L is the block's aux loss (`local`, the paper's main variant) or the head's (`global`, their FG-A).
- `guess` (Fournier et al. 2023, "Can Forward Gradient Match Backpropagation?", local guess of the global target):
  the tangent is G = ∇_h of the block's aux loss; the jvp of the global loss through the later blocks and the
  head along G gives the projection ĝ_n = (∇_{h_n}L·G_n) G_n / (‖G_n‖² + ε), per example, as in their code.
  ĝ is backpropagated through the block only.

`method.tangents` k averages k estimates. The aux heads and the network head learn from their own loss's exact
gradient under activity and guess (they are one module from their loss); under weight they are perturbed too.

Tangents come from a generator seeded by (a seed drawn at setup from the run's seeded stream, the batch counter,
the block, the tangent's index): resuming restores both numbers with the rule's state (`get_extra_state`), and a
copy of the rule (the alignment diagnostic's) draws the same tangents training is about to use.

Per-example directional derivatives are exact when the later modules treat examples independently; a train-mode
batch norm after h couples them (its batch statistics), and d_n then also carries the other examples' terms,
zero-mean noise under `activity`. Extra passes run with copies of the buffers: batch-norm statistics move once
per batch, with the training loop's own forward.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from layerwise.models import Network
from layerwise.rules.base import LearningRule, Signal, TrainGroup, output_shapes
from layerwise.rules.dgl import build_aux_head
from layerwise.rules.options.forward_gradient import ForwardGradientOptions

EPS = 1e-14  # Fournier et al.'s code divides the projection by |G_n|^2 + eps_norm, 1e-14 in their runs
_MASK = 2**64 - 1


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (FNV-1a over their 64-bit words): distinct keys give unrelated streams."""
    s = 0xCBF29CE484222325
    for v in values:
        s = ((s ^ (int(v) & _MASK)) * 0x100000001B3) & _MASK
    return s >> 1


def stateless(module: nn.Module, params: dict, x: torch.Tensor) -> torch.Tensor:
    """module(x) with `params` replacing its own (those not named stay) and copies of its buffers: a train-mode
    batch norm neither moves its running statistics twice a batch nor mutates a tensor inside torch.func."""
    buffers = {name: b.clone() for name, b in module.named_buffers()}
    return functional_call(module, {**params, **buffers}, (x,))


def trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def per_example_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropies / batch size: their sum is the mean loss, each depends on its own example."""
    return F.cross_entropy(logits, y, reduction="none") / len(y)


def surrogate(params: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """A scalar whose gradient with respect to each parameter is the given estimate."""
    return sum((p * g.detach()).sum() for p, g in zip(params, grads))


def expand(d: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return d.reshape(-1, *([1] * (like.ndim - 1)))


class ForwardGradient(LearningRule):
    name = "forward_gradient"
    Options = ForwardGradientOptions
    detach_head = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.estimator, self.loss, self.k = str(self.cfg.estimator), str(self.cfg.loss), int(self.cfg.tangents)
        # Certified local (diagnostics=locality): no block's update depends on a later block.
        self.local = self.estimator != "guess" and self.loss == "local"
        self.aux = nn.ModuleDict()
        self._net: list[Network] = []  # a plain list: the network is not the rule's submodule
        self._seed, self._step = 0, 0
        self._x: torch.Tensor | None = None
        self._global: dict[int, torch.Tensor] = {}  # weight/global: this batch's estimate, by id(parameter)

    @property
    def uses_aux(self) -> bool:
        return self.estimator == "guess" or self.loss == "local"

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        super().setup(net, example, num_classes)
        if self.uses_aux:
            shapes = output_shapes(net, example)
            self.aux = nn.ModuleDict({str(i): build_aux_head(shapes[i], num_classes, self.cfg.aux)
                                      for i in range(len(net.blocks) - 1)})
        self._net = [net]
        self._seed = int(torch.randint(0, 2**62, ()))  # from the run's seeded stream, after every init

    # ------------------------------------------------------------------ state: the tangent stream's key
    # A tensor, not a dict: checkpoints' state dicts hold tensors only (the resume check compares their shapes).
    # Plain ints in between: reading a device tensor every batch would synchronise.
    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor([self._seed, self._step], dtype=torch.int64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self._seed, self._step = (int(v) for v in state.tolist())

    def generator(self, device: torch.device, *key: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(_mix(self._seed, self._step, *key))

    def tangents(self, like: list[torch.Tensor], *key: int) -> list[torch.Tensor]:
        """One tangent N(0, I) shaped like `like`, from the stream keyed by (seed, batch, *key)."""
        g = self.generator(like[0].device, *key)
        return [torch.randn(t.shape, generator=g, device=t.device, dtype=t.dtype) for t in like]

    # ------------------------------------------------------------------ estimators
    def weight_estimate(self, f: Callable, params: list[dict], key: int):
        """Mean over k tangents of (∇f·v) v for the parameter dicts `params`; and f's value and aux output."""
        primals = tuple({n: p.detach() for n, p in group.items()} for group in params)
        flat = [p for group in primals for p in group.values()]
        if not flat:  # nothing trainable (frozen, or parameter-free layers): just the loss
            with torch.no_grad():
                value, out = f(*primals)
            return [], value, out
        total = None
        for j in range(self.k):
            vs = iter(self.tangents(flat, key, j))
            tangent = tuple({n: next(vs) for n in group} for group in primals)
            with torch.no_grad():  # forward mode only: no autograd graph over the captured modules
                value, d, out = jvp(f, primals, tangent, has_aux=True)
            est = [d * v for group in tangent for v in group.values()]
            total = est if total is None else [a + b for a, b in zip(total, est)]
        return [g / self.k for g in total], value, out

    def activity_estimate(self, f: Callable, h: torch.Tensor, key: int) -> torch.Tensor:
        """Mean over k tangents u of d_n u_n, with d_n the directional derivative of f's n-th output along u."""
        total = torch.zeros_like(h)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        for j in range(self.k):
            # Per-example tangents: each DDP process draws its own rows (weight tangents, shared, must agree).
            (u,) = self.tangents([h], key, j, rank)
            with torch.no_grad():
                _, d = jvp(f, (h,), (u,))
            total += expand(d, h) * u
        return total / self.k

    def guess_estimate(self, f: Callable, h: torch.Tensor, guess: torch.Tensor) -> torch.Tensor:
        """The global target's per-example projection on the guess: (∇_{h_n}L·G_n) G_n / (|G_n|² + ε)."""
        with torch.no_grad():
            _, d = jvp(f, (h,), (guess,))
        norm2 = guess.flatten(1).pow(2).sum(1)
        return expand(d / (norm2 + EPS), guess) * guess

    # ------------------------------------------------------------------ the batch
    @property
    def net(self) -> Network:
        return self._net[0]

    def loss_module(self, i: int) -> nn.Module:
        """Block i's local loss head: its aux head, the network head for the last block."""
        return self.aux[str(i)] if i < self.n_blocks - 1 else self.net.head

    def rest(self, i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The network after block i (later blocks and the head), stateless."""
        def run(h):
            for block in self.net.blocks[i + 1:]:
                h = stateless(block, {}, h)
            return stateless(self.net.head, {}, h)
        return run

    def begin_batch(self, net: Network, x: torch.Tensor, y: torch.Tensor) -> None:
        self._step += 1
        self._global = {}
        if self.estimator == "weight" and self.loss == "global":
            params = trainable(net)
            grads, _, _ = self.weight_estimate(
                lambda p: (lambda logits: (F.cross_entropy(logits, y), logits.detach()))(stateless(net, p, x)),
                [params], key=len(net.blocks) + 1)
            self._global = {id(p): g for p, g in zip(params.values(), grads)}

    def block_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        # Estimates are applied stage by stage: nothing backpropagates across blocks, nor into the head's input.
        x = x.detach() if i > 0 else x
        if i < self.n_blocks:
            self._x = x.detach()
        return x

    def _global_surrogate(self, module: nn.Module) -> Signal | None:
        params = [p for p in module.parameters() if id(p) in self._global]
        if not params:
            return None
        return Signal(objective=surrogate(params, [self._global[id(p)] for p in params]))

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> Signal | None:
        block, last = self.net.blocks[i], i == self.n_blocks - 1
        if self.estimator == "weight":
            if self.loss == "global":
                return self._global_surrogate(block)
            head = self.loss_module(i)
            pb, pa = trainable(block), trainable(head)

            def f(pb_, pa_):
                logits = stateless(head, pa_, stateless(block, pb_, self._x))
                return F.cross_entropy(logits, y), logits.detach()

            grads, loss, logits = self.weight_estimate(f, [pb, pa], key=i)
            objective = surrogate([*pb.values(), *pa.values()], grads)
            # The last block's loss is the head's, reported at the head's stage.
            return Signal(objective=objective) if last else Signal(loss=loss, logits=logits, objective=objective)

        hd = h.detach()
        target = self.rest(i) if self.estimator == "guess" or self.loss == "global" else None
        if self.estimator == "activity":
            f = target or (lambda z: stateless(self.loss_module(i), {}, z))
            grad = self.activity_estimate(lambda z: per_example_ce(f(z), y), hd, key=i)
        else:
            z = hd.clone().requires_grad_(True)
            local = F.cross_entropy(stateless(self.loss_module(i), {}, z), y)
            (guess,) = torch.autograd.grad(local, z)
            grad = self.guess_estimate(lambda v: per_example_ce(target(v), y), hd, guess)
        if last or not self.uses_aux:
            return Signal(grad=grad)
        logits = self.aux[str(i)](hd)  # the aux head learns from its loss's exact gradient
        return Signal(loss=F.cross_entropy(logits, y), logits=logits, grad=grad)

    def head_signal(self, logits: torch.Tensor, y: torch.Tensor) -> Signal:
        loss = F.cross_entropy(logits, y)
        if self.estimator == "weight":
            if self.loss == "global":
                signal = self._global_surrogate(self.net.head)
                return Signal(loss=loss, logits=logits, objective=signal.objective if signal else loss.new_zeros(()))
            return Signal(loss=loss, logits=logits, objective=loss.new_zeros(()))  # estimated with the last block
        return Signal(loss=loss, logits=logits)

    def block_logits(self, i: int, h: torch.Tensor) -> torch.Tensor | None:
        return self.aux[str(i)](h) if str(i) in self.aux else None

    def train_groups(self, net: Network) -> list[TrainGroup]:
        groups = [TrainGroup(f"block{i}", [block, *([self.aux[str(i)]] if str(i) in self.aux else [])],
                             step_after=i) for i, block in enumerate(net.blocks)]
        return [*groups, TrainGroup("head", [net.head], step_after=len(net.blocks))]

    pipeline_refusal = ("trainer=pipeline cannot run method=forward_gradient: its tangents are keyed to the batch "
                        "counter begin_batch advances, which pipeline stages do not call (and estimator=guess or "
                        "loss=global need the later blocks); use trainer=default")

    def describe(self) -> str:
        what = {"weight": "weight perturbation", "activity": "activity perturbation", "guess": "local guess"}
        loss = "" if self.estimator == "guess" else f", {self.loss} loss"
        return f"{self.name} ({what[self.estimator]}{loss}, {self.k} tangent{'s' * (self.k > 1)})"
