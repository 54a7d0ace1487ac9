"""The epoch metrics the training step accumulates: batch-weighted means, and the training accuracies."""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import multiclass_accuracy

from conftest import small_module
from layerwise.core.module import EpochMeans
from layerwise.models import InputSpec

SPEC = InputSpec(channels=1, size=8, num_classes=10)


def test_epoch_means_are_batch_weighted_across_folds():
    means = EpochMeans()
    means.FOLD = 3  # several folds plus a remainder
    values = [(float(i), 16 if i < 6 else 5) for i in range(7)]
    for value, n in values:
        means.add("loss", torch.tensor(value), n)
        means.add("half", torch.tensor(value, dtype=torch.bfloat16), n)
    want = sum(v * n for v, n in values) / sum(n for _, n in values)
    got = dict(means.pop())
    assert means.pending() is False
    assert got["loss"].item() == got["half"].item() == torch.tensor(want).item()


def test_training_accuracies_are_the_share_of_correct_predictions_over_the_epoch():
    """With lr=0 the network is fixed, so train/acc must be its accuracy on the whole training set, counted over
    batches of unequal size (50 samples in batches of 16: the last has 2), as torchmetrics counts it."""
    module, _, _ = small_module(["model=mlp", "model.widths=[32,32]", "method=dgl", "optimizer.lr=0"], SPEC)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(50, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (50,), generator=gen)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=16))
    with torch.no_grad():
        logits, exits = module.rule.evaluate(module.net, x)
    metrics = trainer.callback_metrics
    for name, outputs in [("train/acc", logits), *((f"block{i}/train_acc", exits[i]) for i in sorted(exits))]:
        want = multiclass_accuracy(outputs, y, num_classes=10, average="micro")
        torch.testing.assert_close(metrics[name], want, msg=name)
    assert list(exits) == [0]  # two blocks: DGL's one aux head, on block 0 (block 1 learns from the head)
