"""AugLocal (method=auglocal): the aux networks follow the paper's sampling and pyramid, each block's update is the
gradient of its own aux loss, and it learns digits."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import DIGITS, assert_one_epoch_reaches, compose_cfg, fit_cfg, small_module
from layerwise.errors import ConfigError
from layerwise.models import InputSpec, flat_layers
from layerwise.models.resnets import BasicBlock
from layerwise.rules import build_rule
from layerwise.rules.auglocal import depth_schedule, sampled_layers

CNN = ["model=basic_cnn", "model.channels=[4,6,8]", "model.kernel_size=3", "model.head_hidden=[16]"]
SPEC = InputSpec(3, 8, 5)


def test_depth_schedule_and_sampling_are_the_authors_formulas():
    # Their code: max(1, round(d·(1 - i·c/(K-2)) + i·c/(K-2))) for the K-1 aux modules i = 0..K-2, and layer
    # indices round(l + (L-1-l)/d·k), k = 1..d, after layer l (Python's round: half to even).
    for k_aux, d, c in [(13, 2, 0.5), (51, 3, 0.5), (9, 5, 1.0)]:
        by_hand = [max(1, round(d * (1 - i * c / (k_aux - 1)) + i * c / (k_aux - 1))) for i in range(k_aux)]
        assert depth_schedule(k_aux, d, 1, True, c) == by_hand
    assert depth_schedule(13, 2) == [2] * 13  # d=2, c=0.5: 2 -> 1.5, which rounds to 2 (half to even)
    assert depth_schedule(5, 5, 1, True, 1.0) == [5, 4, 3, 2, 1]
    assert depth_schedule(4, 3, 2, True, 1.0) == [3, 3, 2, 2]  # 3, 2.67, 2.33, 2
    assert depth_schedule(4, 3, 1, False, 1.0) == [3] * 4
    # ResNet-32's 16 layers: layer 0 samples 7.5 -> 8 and 15; near the end every later layer
    assert sampled_layers(0, 16, 2) == [8, 15]
    assert sampled_layers(0, 16, 3) == [5, 10, 15]
    assert sampled_layers(12, 16, 2) == [14, 15]  # 13.5 -> 14
    assert sampled_layers(13, 16, 2) == [14, 15] and sampled_layers(14, 16, 3) == [15]


def _layer_outputs(layers, x):
    shapes = []
    for layer in layers:
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    return shapes


def test_aux_networks_are_fresh_copies_of_the_sampled_layers_with_their_shapes():
    module, x, _ = small_module(["model=resnet20", "model.width_mult=0.5", "method=auglocal", "method.aux_depth=3",
                                 "method.pyramid_coeff=1"], InputSpec(3, 16, 10), batch=4)
    net, rule = module.net, module.rule
    layers = flat_layers(net)
    assert rule.depths == depth_schedule(9, 3, 1, True, 1.0) == [3, 3, 2, 2, 2, 2, 2, 1, 1]  # 2.5 -> 2, 1.5 -> 2
    net.eval()
    rule.eval()
    with torch.no_grad():
        shapes = _layer_outputs(layers, x)
        h = x
        net_params = {id(p) for p in net.parameters()}
        for i, aux in enumerate(rule.aux):
            h = net.blocks[i](h)
            assert aux.sampled == sampled_layers(i, 10, rule.depths[i])
            copies = [m for m in aux if isinstance(m, BasicBlock)]
            assert len(copies) == rule.depths[i]
            # each copy outputs the shape of the layer it copies, whatever was skipped before it
            z = h
            for m in aux[:-1]:
                z = m(z)
                if isinstance(m, BasicBlock):
                    j = aux.sampled[copies.index(m)]
                    assert tuple(z.shape[1:]) == shapes[j], (i, j)
                    assert m.conv2.weight.shape == layers[j].conv2.weight.shape
                    assert not torch.equal(m.conv2.weight, layers[j].conv2.weight)  # re-initialised, not cloned
            assert aux[-1](z).shape == (4, 10) and type(aux[-1]) is type(net.head)
            assert not net_params & {id(p) for p in aux.parameters()}


def test_merge_tail_joins_the_last_aux_depth_blocks_as_the_authors_code():
    cfg = compose_cfg(["model=resnet32", "model.width_mult=0.25", "method=auglocal", "method.merge_tail=true"])
    from layerwise.models import build_network

    net, rule = build_network(cfg.model, InputSpec(3, 8, 10)), build_rule(cfg.method)
    rule.setup(net, torch.randn(2, 3, 8, 8), 10)
    assert len(net.blocks) == 14 and len(net.blocks[-1]) == 3  # 16 layers, d=2: modules 0..12, then 13-15
    assert len(rule.aux) == 13 and rule.aux[12].sampled == [14, 15]


def test_each_block_update_is_the_gradient_of_its_own_aux_loss():
    lr = 0.1
    module, x, y = small_module([*CNN, "method=auglocal", "optimizer.lr=0.1", "optimizer.momentum=0",
                                 "optimizer.weight_decay=0", "optimizer.scheduler.name=none"], SPEC)
    ref_net, ref_rule = copy.deepcopy(module.net), copy.deepcopy(module.rule)
    n = len(ref_net.blocks)
    expected, h = {}, x
    for i, block in enumerate(ref_net.blocks):
        out = block(h.detach())  # the local objective: no gradient reaches earlier blocks
        local = ref_rule.aux[i] if i < n - 1 else ref_net.head
        logits = local(out)
        loss = -logits.log_softmax(-1)[torch.arange(len(y)), y].mean()  # the aux network's cross-entropy
        params = [*block.parameters(), *local.parameters()]
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            expected[id(p)] = p.detach() - lr * g
        h = out
    ref_params = [*ref_net.parameters(), *ref_rule.parameters()]
    assert len(expected) == len(ref_params)
    assert_one_epoch_reaches(module, x, y, len(x), [expected[id(p)] for p in ref_params],
                             "block, aux copy and the head")


def test_auglocal_learns_digits(tmp_path):
    summary = fit_cfg([*DIGITS, "method=auglocal", "trainer.max_epochs=2"], tmp_path)
    assert summary["test_acc"] > 0.9, summary  # measured 0.950 (aux nets 0.958, 0.967); dgl 0.956, bp 0.939
    assert len(summary["block_test_acc"]) == 3


def test_min_depth_above_aux_depth_is_one_config_error():
    with pytest.raises(ConfigError, match=r"method.min_depth=3 exceeds method.aux_depth=2.*min_depth<=2"):
        build_rule(compose_cfg(["method=auglocal", "method.min_depth=3"]).method)


def test_alignment_diagnostic_and_pipeline_accept_auglocal():
    from layerwise.diagnostics.probes import gradient_alignment
    from layerwise.runs.pipeline import check_pipeline_rule

    module, x, y = small_module([*CNN, "method=auglocal"], SPEC)
    align = gradient_alignment(module.net, module.rule, x, y)
    n = len(module.net.blocks)
    assert set(align) == {f"block{i}/align_bp" for i in range(n)} | {"head/align_bp"}
    assert align[f"block{n - 1}/align_bp"] == pytest.approx(1.0, abs=1e-5)  # the last block learns from the head
    assert check_pipeline_rule(compose_cfg(["method=auglocal"])).name == "auglocal"


@pytest.mark.slow
def test_pipeline_with_buffer_zero_equals_sequential_auglocal(tmp_path):
    """2 stage processes train exactly as the sequential loop (the cheap test above only checks it is accepted);
    measured ~150 s for both runs at 2 epochs on the loaded 2-core machine, hence slow."""
    base = ["data=digits", "data.image_size=8", "data.batch_size=16", "data.subset_train=320", "model=mlp",
            "model.widths=[32,32,32]", "model.head_hidden=[]", "method=auglocal", "optimizer=adam",
            "optimizer.lr=0.003", "trainer.max_epochs=1", "trainer.accelerator=cpu", "logger=csv",
            "trainer.progress_bar=false", "seed=3"]
    piped = fit_cfg([*base, "trainer=pipeline", "trainer.pipeline.stages=2"], tmp_path / "pipe")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the stages: float sums depend on how threads split them
    try:
        fit_cfg([*base, "trainer=default"], tmp_path / "seq")
    finally:
        torch.set_num_threads(threads)
    assert piped["status"] == "completed"
    ours, ref = (torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
                 for d in ("pipe", "seq"))
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
