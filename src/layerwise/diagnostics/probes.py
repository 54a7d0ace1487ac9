"""Diagnostics callbacks (`diagnostics=alignment`, `diagnostics=probe`, `diagnostics=locality`, or a list).

- `GradientAlignment`: every N training batches, before the batch's training step, how well the rule's
  gradient for each block points along the true end-to-end backprop gradient (cosine), and for
  feedback-alignment layers the angle between W and its feedback matrix B and the norm ratio |B|/|W|, over
  training (learned feedback: kolen_pollack, weight_mirror, pfa's product B·R).
- `LinearProbe`: after training, how linearly separable each block's features are (test accuracy of a
  linear softmax classifier on frozen, pooled features).
- `Locality` (layerwise.diagnostics.locality): on the first batch, which blocks each of the rule's signals reaches.

Both log to every logger of the trainer (metrics.csv, wandb) on Lightning's own step axis (batches trained,
counted across epochs), and keep their last values for summary.json (`summary()`).
"""
from __future__ import annotations

import copy
import math

import lightning as L
import torch
import torch.nn.functional as F
from loguru import logger
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from layerwise.core.batch import backward_only, run_batch
from layerwise.data import TensorImages
from layerwise.errors import ConfigError
from layerwise.models import Network
from layerwise.rules.base import LearningRule, evaluating
from layerwise.rules.feedback import FeedbackLayer, exact_gradients


def _log(trainer, metrics: dict[str, float], step: int, epoch: int) -> None:
    # `pl_module.log` from a callback reaches loggers only every `log_every_n_steps` batches; these
    # measurements are already sparse, so they go to the loggers directly. `step` counts batches, as
    # Lightning's own logging does (not `global_step`, which advances once per optimizer).
    if metrics:
        for lg in trainer.loggers:
            lg.log_metrics({**metrics, "epoch": epoch}, step=step)


def _stages(net: Network) -> list[tuple[str, nn.Module]]:
    return [*((f"block{i}", block) for i, block in enumerate(net.blocks)), ("head", net.head)]


# --------------------------------------------------------------------------------------------- alignment
def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return math.nan
    return float((a @ b) / (na * nb))


def feedback_geometry(module: nn.Module) -> dict[str, float]:
    """Angle (degrees) between vec(W) and vec(B) over `module`'s feedback layers, and |B|/|W|; {} if none."""
    layers = [m for m in module.modules() if isinstance(m, FeedbackLayer)]
    if not layers:
        return {}
    with torch.no_grad():
        # float64: acos is ill-conditioned near 0 degrees, where float32 leaves ~0.02 degrees of noise
        w = torch.cat([m.weight.detach().flatten().double() for m in layers])
        b = torch.cat([m.feedback_weight().detach().flatten().double() for m in layers])
        cos = _cosine(w, b)
        return {"angle_wb": math.nan if math.isnan(cos) else math.degrees(math.acos(max(-1.0, min(1.0, cos)))),
                "norm_ratio_bw": float(b.norm() / w.norm()) if w.norm() > 0 else math.nan}


def _zero_grads(*modules: nn.Module) -> None:
    for module in modules:
        for p in module.parameters():
            p.grad = None


def _feedback_params(module: nn.Module) -> set[int]:
    return {id(p) for m in module.modules() if isinstance(m, FeedbackLayer) for p in m.feedback.parameters()}


def _flat_grads(module: nn.Module) -> tuple[list[nn.Parameter], torch.Tensor | None]:
    # A learned feedback matrix (kolen_pollack's B, pfa's R) has no BP counterpart: not part of the cosine.
    feedback = _feedback_params(module)
    params = [p for p in module.parameters() if p.grad is not None and id(p) not in feedback]
    return params, (torch.cat([p.grad.flatten() for p in params]) if params else None)


def gradient_alignment(net: Network, rule: LearningRule, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """`<stage>/align_bp` for every block and the head, plus feedback geometry where there is any.

    Works on copies and restores the RNG, so neither the weights nor the random stream of training move.
    The cosine is over the stage's parameters the rule gives a gradient; a stage it gives none (e.g. a frozen
    block), or an all-zero one (e.g. a zero-initialised synthesizer), gets nan.
    Rules that draw random numbers outside the blocks' forward (e.g. a no-grad pass in `begin_batch`) may
    see other dropout masks than the BP pass; for all others the masks are the same.
    """
    cuda = [torch.device("cuda", i) for i in range(torch.cuda.device_count())] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        seed = int(torch.randint(0, 2**31 - 1, ()))  # drawn on the forked stream: training's is untouched
        # One deepcopy for both, so the rule's references into the net (hooks, shared modules) follow it.
        rule_net, rule_copy = copy.deepcopy((net, rule))
        bp_net = copy.deepcopy(net)
        _zero_grads(rule_net, rule_copy, bp_net)

        torch.manual_seed(seed)  # the same seed for both passes: same dropout masks
        run_batch(rule_net, rule_copy, x, y, backward_only, step=lambda i: None)
        torch.manual_seed(seed)
        with exact_gradients():  # feedback layers backpropagate through W, not B
            F.cross_entropy(bp_net(x), y).backward()

    metrics = {}
    for (name, rule_stage), (_, bp_stage) in zip(_stages(rule_net), _stages(bp_net)):
        params, g_rule = _flat_grads(rule_stage)
        if g_rule is None:
            metrics[f"{name}/align_bp"] = math.nan
        else:
            bp_params = dict(zip((id(p) for p in rule_stage.parameters()), bp_stage.parameters()))
            g_bp = torch.cat([(q.grad if q.grad is not None else torch.zeros_like(q)).flatten()
                              for q in (bp_params[id(p)] for p in params)])
            metrics[f"{name}/align_bp"] = _cosine(g_rule.double(), g_bp.double())
        metrics.update({f"{name}/{k}": v for k, v in feedback_geometry(rule_stage).items()})
    return metrics


def _per_block(values: dict[str, float], key: str, n_blocks: int) -> list[float | None]:
    return [_json(values.get(f"block{i}/{key}")) for i in range(n_blocks)]


def _json(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


class GradientAlignment(L.Callback):
    """Measures `gradient_alignment` on the batch about to be trained, every `every_n_steps` batches."""

    def __init__(self, every_n_steps: int = 50):
        if int(every_n_steps) < 1:
            raise ConfigError(f"diagnostics.alignment.every_n_steps={every_n_steps} must be >= 1")
        self.every = int(every_n_steps)
        self.last: dict[str, float] = {}
        self.n_blocks = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        seen = trainer.current_epoch * trainer.num_training_batches + batch_idx
        if seen % self.every:
            return
        x, y = (t.to(pl_module.device) for t in batch[:2])
        self.n_blocks = len(pl_module.net.blocks)
        self.last = gradient_alignment(pl_module.net, pl_module.rule, x, y)
        _log(trainer, self.last, step=seen, epoch=trainer.current_epoch)

    def summary(self) -> dict:
        if not self.last:
            return {}
        out = {"align_bp": _per_block(self.last, "align_bp", self.n_blocks),
               "head_align_bp": _json(self.last.get("head/align_bp"))}
        if any(k.endswith("/angle_wb") for k in self.last):
            out["angle_wb"] = _per_block(self.last, "angle_wb", self.n_blocks)
            out["norm_ratio_bw"] = _per_block(self.last, "norm_ratio_bw", self.n_blocks)
        return out


# ------------------------------------------------------------------------------------------------ probe
def eval_view(train_set: Dataset, test_set: Dataset) -> Dataset:
    """The training samples with the test set's (augmentation-free) transform; the data module is untouched."""
    def unwrap(ds):
        indices = None
        while isinstance(ds, Subset):
            indices = list(ds.indices) if indices is None else [ds.indices[i] for i in indices]
            ds = ds.dataset
        return ds, indices

    base, indices = unwrap(train_set)
    transform = unwrap(test_set)[0].transform
    if isinstance(base, TensorImages):
        view = TensorImages(base.images, base.labels, transform)
    else:  # torchvision-style datasets apply `self.transform`; a shallow copy shares the samples
        view = copy.copy(base)
        view.transform = transform
    return view if indices is None else Subset(view, indices)


def _capped(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if not n or n >= len(ds):
        return ds
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    return Subset(ds, order[: int(n)].tolist())


def block_features(net: Network, loader: DataLoader, pool_size: int, device) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every block's output for the loader's samples (eval mode), conv maps pooled, flattened, on the CPU."""
    feats, labels = None, []
    with evaluating(net):
        for x, y in loader:
            outs = []
            for h in net.block_outputs(x.to(device)):
                if h.ndim == 4:  # pool to at most pool_size: bounds the probe's input dimension
                    h = F.adaptive_avg_pool2d(h, (min(pool_size, h.shape[2]), min(pool_size, h.shape[3])))
                outs.append(h.flatten(1).float().cpu())
            feats = [[o] for o in outs] if feats is None else [f + [o] for f, o in zip(feats, outs)]
            labels.append(y)
    return [torch.cat(f) for f in feats], torch.cat(labels)


def linear_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                 num_classes: int, epochs: int = 30, lr: float = 1e-3, batch_size: int = 256,
                 weight_decay: float = 0.0, seed: int = 0, device=None) -> float:
    """Test accuracy of a linear softmax classifier on standardized features (deterministic given `seed`)."""
    device = device or x_train.device
    x_train, y_train = x_train.to(device).float(), y_train.to(device)
    x_test, y_test = x_test.to(device).float(), y_test.to(device)
    mean, std = x_train.mean(0), x_train.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant features: centre, don't blow up
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std

    # Zero init: the problem is convex, and no random draw touches (or depends on) the global RNG.
    probe = nn.Linear(x_train.shape[1], num_classes).to(device)
    nn.init.zeros_(probe.weight), nn.init.zeros_(probe.bias)
    opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(int(epochs)):
            for idx in torch.randperm(len(y_train), generator=gen).to(device).split(int(batch_size)):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(probe(x_train[idx]), y_train[idx]).backward()
                opt.step()
    with torch.no_grad():
        return float((probe(x_test).argmax(1) == y_test).float().mean())


class LinearProbe(L.Callback):
    """At the end of training: `block{i}/probe_acc`, the test accuracy of a linear probe on block i's output."""

    def __init__(self, seed: int = 0, max_train_samples: int | None = 10000,
                 max_test_samples: int | None = None, pool_size: int = 4, epochs: int = 30, lr: float = 1e-3,
                 batch_size: int = 256, weight_decay: float = 0.0):
        for key, value in (("pool_size", pool_size), ("batch_size", batch_size)):
            if int(value) < 1:
                raise ConfigError(f"diagnostics.probe.{key}={value} must be >= 1")
        self.seed = seed
        self.max_train, self.max_test, self.pool_size = max_train_samples, max_test_samples, int(pool_size)
        self.fit_args = dict(epochs=int(epochs), lr=float(lr), batch_size=int(batch_size),
                             weight_decay=float(weight_decay))
        self.acc: list[float] = []

    def on_train_end(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        if dm is None or getattr(dm, "train_set", None) is None:
            logger.warning("diagnostics.probe needs the run's ImageDataModule; skipped")
            return
        train = _capped(eval_view(dm.train_set, dm.test_set), self.max_train, self.seed)
        test = _capped(dm.test_set, self.max_test, self.seed + 1)
        loader = lambda ds: DataLoader(ds, batch_size=int(dm.cfg.batch_size), shuffle=False)  # noqa: E731
        device = pl_module.device
        f_train, y_train = block_features(pl_module.net, loader(train), self.pool_size, device)
        f_test, y_test = block_features(pl_module.net, loader(test), self.pool_size, device)
        self.acc = [linear_probe(a, y_train, b, y_test, dm.info.num_classes, seed=self.seed, device=device,
                                 **self.fit_args) for a, b in zip(f_train, f_test)]
        logger.info("linear probe test acc per block: " + " ".join(f"{a:.3f}" for a in self.acc))
        epochs = trainer.current_epoch  # epochs done: the step after the last trained batch
        _log(trainer, {f"block{i}/probe_acc": a for i, a in enumerate(self.acc)},
             step=epochs * trainer.num_training_batches, epoch=max(epochs - 1, 0))

    def summary(self) -> dict:
        return {"probe_acc": self.acc} if self.acc else {}


def build_diagnostics(cfg) -> list[L.Callback]:
    """The callbacks selected in `cfg.diagnostics` (absent or empty: none)."""
    selected = cfg.get("diagnostics") or {}
    callbacks: list[L.Callback] = []
    if selected.get("alignment") is not None:
        callbacks.append(GradientAlignment(**selected.alignment))
    if selected.get("probe") is not None:
        callbacks.append(LinearProbe(seed=int(cfg.seed), **selected.probe))
    if selected.get("locality") is not None:
        from layerwise.diagnostics.locality import Locality

        callbacks.append(Locality(**selected.locality))
    return callbacks
