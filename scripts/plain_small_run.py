#!/usr/bin/env python
"""The plain-PyTorch reference of scripts/small_run_benchmark.py: the work of one small layerwise run, nothing else.

    python scripts/plain_small_run.py --data small.npz --method bp  --epochs 10 --out plain.pt
    python scripts/plain_small_run.py --data small.npz --method dgl --epochs 10 --out plain.pt

Same work as `python main.py data=npz data.path=small.npz model=mlp model.widths=[512,512] data.batch_size=64
method=bp|dgl trainer.max_epochs=10`: images from the .npz held in memory and scaled to [-1, 1] (data.normalize=
minus_one_one), an MLP of Linear+ReLU blocks and a Linear head, SGD lr 0.05 momentum 0.9 weight decay 5e-4 (the
project's optimizer=sgd defaults; one optimizer per trained group as layerwise builds them), a reshuffle per epoch,
a test pass after every epoch, one checkpoint (weights and optimizer states) at the end.
- bp: one cross-entropy on the head, one backward.
- dgl (Belilovsky et al. 2019): every block but the last has an aux classifier Linear(512, 256)-ReLU-Linear(256, 10)
  (method.aux defaults); block i and its aux head minimise their cross-entropy on the detached input and step at
  once; the last block is trained with the head.
Prints one JSON line: {"loop_s": seconds from the first batch to the checkpoint on disk, "test_acc": ..}.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def images(a: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(a).float().div_(255.0)
    return x.sub_(0.5).div_(0.5).reshape(len(a), -1)


def sgd(modules: list[nn.Module]) -> torch.optim.SGD:
    params = [p for m in modules for p in m.parameters()]
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--method", choices=["bp", "dgl"], default="bp")
    parser.add_argument("--widths", default="512,512")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="the checkpoint written at the end")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    parts = np.load(args.data)
    x_train, x_test = images(parts["x_train"]), images(parts["x_test"])
    y_train, y_test = torch.from_numpy(parts["y_train"]).long(), torch.from_numpy(parts["y_test"]).long()
    classes = int(y_train.max()) + 1

    dims = [x_train.shape[1], *map(int, args.widths.split(","))]
    blocks = [nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(dims, dims[1:])]
    head = nn.Linear(dims[-1], classes)
    if args.method == "bp":
        aux: list[nn.Module] = []
        groups = [(blocks + [head], sgd(blocks + [head]))]
    else:
        aux = [nn.Sequential(nn.Linear(d, 256), nn.ReLU(), nn.Linear(256, classes)) for d in dims[1:-1]]
        groups = [([b, a], sgd([b, a])) for b, a in zip(blocks, aux)] + [([blocks[-1], head],
                                                                            sgd([blocks[-1], head]))]

    start = time.perf_counter()
    for _ in range(args.epochs):
        for m in blocks + aux + [head]:
            m.train()
        for idx in torch.randperm(len(y_train)).split(args.batch_size):
            x, y = x_train[idx], y_train[idx]
            if args.method == "bp":
                opt = groups[0][1]
                opt.zero_grad(set_to_none=True)
                h = x
                for block in blocks:
                    h = block(h)
                F.cross_entropy(head(h), y).backward()
                opt.step()
                continue
            h = x
            for i, block in enumerate(blocks):
                opt = groups[i][1]
                opt.zero_grad(set_to_none=True)
                h = block(h.detach())
                out = aux[i](h) if i < len(aux) else head(h)
                F.cross_entropy(out, y).backward()
                opt.step()
        for m in blocks + aux + [head]:
            m.eval()
        correct = 0
        with torch.no_grad():
            for x, y in zip(x_test.split(args.batch_size), y_test.split(args.batch_size)):
                h = x
                for block in blocks:
                    h = block(h)
                correct += int((head(h).argmax(-1) == y).sum())
    torch.save({"blocks": [b.state_dict() for b in blocks], "aux": [a.state_dict() for a in aux],
                "head": head.state_dict(), "optimizers": [opt.state_dict() for _, opt in groups]}, args.out)
    loop_s = time.perf_counter() - start
    print(json.dumps({"loop_s": round(loop_s, 3), "test_acc": correct / len(y_test)}))


if __name__ == "__main__":
    main()
