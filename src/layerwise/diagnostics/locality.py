"""Locality certificate (`diagnostics=locality`): which blocks each training signal of a rule really reaches.

A rule trains through *signals*, one stage at a time (layerwise.core.batch.run_batch). Block i's signal is
`block_signal(i)` (a local loss, an injected gradient, or nothing, as in backprop, where blocks learn from what
flows back into them) plus any late signal (`after_backward`) whose metric prefix names block i (DFA's B_i·e,
computable only after the head's backward); the head's signal is `head_signal`. Other late signals (DNI's
synthesizer regressions) count for the stage whose backward made them computable.
On one real batch, on copies of the network and the rule (training itself is untouched), every stage is
backpropagated alone and we record whose parameters its backward reached: autograd fills a parameter's `.grad`
exactly when the signal's graph reaches it, even where the values happen to be zero (a zero-initialised
synthesizer at step 0). The rule's own modules (aux heads, synthesizers, decoders) are not blocks and not listed.

A second check asks whether block i's update *depends* on the blocks after it: the later blocks' parameters are
perturbed and the batch replayed with the same random stream; if block i's gradient changes, its signal carries
information from downstream (DFA's projected output error, DGL's `direct_global`, backprop's chain rule), even
when no gradient path crosses a block (DFA). The head is not counted as a later block: in DGL, DNI and
InfoPro the last block and the head form the last module.

The rule is certified `local` when every signal reaches at most one block (the head's signal may also reach the
head) and no block's update depends on a later block.
"""
from __future__ import annotations

import copy

import lightning as L
import torch
from loguru import logger

from layerwise.core.batch import run_batch
from layerwise.models import Network
from layerwise.rules.base import LearningRule, Signal

HEAD = "head"


def _reached(net: Network) -> list:
    """Blocks (indices, then 'head') whose parameters autograd reached since the grads were last cleared."""
    stages = [*enumerate(net.blocks), (HEAD, net.head)]
    return [name for name, part in stages if any(p.grad is not None for p in part.parameters())]


def _clear(*modules: torch.nn.Module) -> None:
    for module in modules:
        for p in module.parameters():
            p.grad = None


def _named_block(prefix: str, n: int) -> int | None:
    """The block a late signal's metric prefix names ("block3/train_" -> 3), if any."""
    head, _, _ = prefix.partition("/")
    if head.startswith("block") and head[5:].isdigit() and int(head[5:]) < n:
        return int(head[5:])
    return None


def signal_reach(net: Network, rule: LearningRule, x: torch.Tensor, y: torch.Tensor) -> list[list]:
    """Per stage (blocks 0..n-1, then the head): the blocks its signal's backward reaches. Works on `net`/`rule`
    as given (pass copies); nothing is stepped."""
    n = len(net.blocks)
    reach: list[list] = [[] for _ in range(n + 1)]
    current = [0]

    def backward(signal: Signal | None, out, prefix: str, stage: int | None) -> None:
        if stage is not None:
            current[0] = stage
        owner = _named_block(prefix, n) if stage is None else stage
        owner = current[0] if owner is None else owner
        objective = signal.surrogate(out) if signal is not None else None
        if objective is None:
            return
        _clear(net, rule)
        # retain_graph: a rule that forgets to detach backpropagates a later signal through an earlier block's
        # graph; keeping the graphs lets that show up as a reach instead of failing.
        objective.backward(retain_graph=True)
        for name in _reached(net):
            if name not in reach[owner]:
                reach[owner].append(name)
        _clear(net, rule)

    _clear(net, rule)
    run_batch(net, rule, x, y, backward, step=lambda i: None)
    return reach


def _block_grads(net: Network, rule: LearningRule, x: torch.Tensor, y: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """Every block's gradient from one replayed batch (all signals), flattened; zeros where none arrives."""
    def backward(signal, out, prefix, stage):
        objective = signal.surrogate(out) if signal is not None else None
        if objective is not None:
            objective.backward(retain_graph=True)

    _clear(net, rule)
    torch.manual_seed(seed)
    run_batch(net, rule, x, y, backward, step=lambda i: None)
    grads = []
    for block in net.blocks:
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in block.parameters()]
        grads.append(torch.cat(parts) if parts else torch.zeros(0))
    _clear(net, rule)
    return grads


def depends_on_later_blocks(net: Network, rule: LearningRule, x: torch.Tensor, y: torch.Tensor,
                            seed: int) -> list[bool]:
    """Per block i: does its gradient change when the parameters of blocks i+1.. are perturbed? (Copies only.)"""
    n = len(net.blocks)
    base_net, base_rule = copy.deepcopy((net, rule))
    base = _block_grads(base_net, base_rule, x, y, seed)
    out = []
    for i in range(n):
        if i == n - 1:  # no later block
            out.append(False)
            continue
        net_i, rule_i = copy.deepcopy((net, rule))
        gen = torch.Generator().manual_seed(seed + i)
        with torch.no_grad():
            for block in list(net_i.blocks)[i + 1:]:
                for p in block.parameters():
                    p.mul_(1.5).add_(0.1 * torch.randn(p.shape, generator=gen).to(p))
        got = _block_grads(net_i, rule_i, x, y, seed)[i]
        scale = base[i].abs().max().clamp_min(1e-12)
        out.append(bool((got - base[i]).abs().max() > 1e-4 * scale))
    return out


def certify(net: Network, rule: LearningRule, x: torch.Tensor, y: torch.Tensor,
            check_later_blocks: bool = True) -> dict:
    """The `locality` entry of summary.json for this rule on batch (x, y)."""
    cuda = [torch.device("cuda", i) for i in range(torch.cuda.device_count())] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):  # training's random stream is untouched
        seed = int(torch.randint(0, 2**31 - 1, ()))
        torch.manual_seed(seed)
        reach = signal_reach(*copy.deepcopy((net, rule)), x, y)
        later = depends_on_later_blocks(net, rule, x, y, seed) if check_later_blocks else None
    n = len(net.blocks)
    single = all(len([b for b in r if b != HEAD]) <= 1 for r in reach)
    blocks = [{"block": i, "signal_reaches": reach[i],
               **({"depends_on_later_blocks": later[i]} if later is not None else {})} for i in range(n)]
    return {"local": bool(single and not any(later or [])),
            "blocks": blocks,
            "head_signal_reaches": reach[n],
            "rule_declares_local": bool(rule.local)}


class Locality(L.Callback):
    """Certifies the rule's locality on the first training batch this process sees; `summary()` for summary.json."""

    def __init__(self, check_later_blocks: bool = True):
        self.check_later_blocks = bool(check_later_blocks)
        self.result: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.result:
            return
        x, y = (t.to(pl_module.device) for t in batch[:2])
        self.result = certify(pl_module.net, pl_module.rule, x, y, self.check_later_blocks)
        touched = "; ".join(f"block{b['block']} -> {b['signal_reaches']}" for b in self.result["blocks"])
        logger.info(f"locality: local={str(self.result['local']).lower()} ({touched}; "
                    f"head -> {self.result['head_signal_reaches']})")

    def summary(self) -> dict:
        return {"locality": self.result} if self.result else {}
