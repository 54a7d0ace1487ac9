"""Residual networks: CIFAR ResNets (He et al. 2016) and torchvision's ResNet-18/34/50 as layers + head."""
from __future__ import annotations

import pytest
import torch

from conftest import compose_cfg, fit_cfg, run_cli, small_module, train_batches
from layerwise.errors import ConfigError
from layerwise.models import InputSpec, build_network
from layerwise.models.resnets import BasicBlock, balanced_sizes

CIFAR = InputSpec(channels=3, size=32, num_classes=10)


def build(*overrides, spec=CIFAR):
    return build_network(compose_cfg(list(overrides)).model, spec)


def n_params(net):
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("depth, params", [(20, 0.27e6), (32, 0.46e6), (110, 1.7e6)])
def test_cifar_resnets_have_the_papers_size(depth, params):
    # He et al. 2016, table 6: ResNet-20 0.27M, -32 0.46M, -110 1.7M parameters (option A shortcuts).
    net = build(f"model=resnet{depth}")
    assert len(net.blocks) == 1 + (depth - 2) // 2  # the stem + 3n residual blocks
    assert n_params(net) == pytest.approx(params, rel=0.02)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_shortcut_a_is_parameter_free_and_b_projects():
    a, b = build("model=resnet20"), build("model=resnet20", "model.shortcut=B")
    down_a, down_b = a.blocks[4], b.blocks[4]  # the first block of stage 2 (16 -> 32 channels, stride 2)
    assert isinstance(down_a, BasicBlock) and not list(down_a.shortcut.parameters())
    assert isinstance(down_b.shortcut[0], torch.nn.Conv2d)
    assert n_params(b) > n_params(a)
    x = torch.randn(2, 16, 32, 32)
    assert down_a(x).shape == down_b(x).shape == (2, 32, 16, 16)


def test_infopro_published_splits():
    # Wang et al. 2021's module ends, e.g. ResNet-32 K=2 closes the first module after block 1 of stage 2.
    sizes = lambda *o: [len(b) if isinstance(b, torch.nn.Sequential) and not isinstance(b, BasicBlock) else 1  # noqa: E731
                        for b in build(*o).blocks]
    assert sizes("model=resnet32", "model.blocks=2", "model.split=infopro") == [8, 8]
    assert sizes("model=resnet110", "model.blocks=4", "model.split=infopro") == [13, 14, 14, 14]
    assert len(build("model=resnet32", "model.blocks=16", "model.split=infopro").blocks) == 16
    with pytest.raises(ConfigError, match="no published split for resnet20"):
        build("model=resnet20", "model.blocks=2", "model.split=infopro")


def test_balanced_split_minimises_the_largest_module():
    assert balanced_sizes([1, 1, 1, 1], 2) == [2, 2]
    assert balanced_sizes([4, 1, 1, 1, 1], 2) == [1, 4]
    assert balanced_sizes([1, 2, 3, 4, 5], 3) == [3, 1, 1]  # 6 | 4 | 5: the best largest run is 6


def test_memory_split_gives_the_wide_early_stage_fewer_blocks():
    # Stage 1 keeps 4x the activation elements of stage 3 per block, so memory-balanced modules get shorter
    # early (InfoPro's own memory-balanced ResNet-110 K=4 split is 8/8/13/26 layers); FLOPs per block are
    # equal across stages, so the FLOPs split stays near even.
    mem = [len(b) for b in build("model=resnet110", "model.blocks=4", "model.split=memory").blocks]
    flops = [len(b) for b in build("model=resnet110", "model.blocks=4", "model.split=flops").blocks]
    assert sum(mem) == sum(flops) == 55
    assert mem[0] < 11 and mem[-1] > 20
    assert max(flops) - min(flops) <= 2


def test_split_without_a_number_of_blocks_is_refused():
    with pytest.raises(ConfigError, match="model.split=flops needs model.blocks=K"):
        build("model=resnet20", "model.split=flops")


@pytest.mark.parametrize("stem, side", [("cifar", 32), ("imagenet", 8)])
def test_torchvision_resnet18_stems(stem, side):
    net = build("model=resnet18", f"model.stem={stem}", spec=InputSpec(1, 32, 10))  # 1-channel input too
    assert len(net.blocks) == 9  # the stem + 4 stages x 2 BasicBlocks
    assert net.blocks[0](torch.randn(2, 1, 32, 32)).shape[-1] == side
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert n_params(net) == pytest.approx(11.17e6, rel=0.01)


def test_torchvision_resnet50_has_bottlenecks():
    net = build("model=resnet50", "model.blocks=4")
    assert len(net.blocks) == 4 and net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_bad_resnet_keys_are_one_line_before_any_data(tmp_path):
    proc = run_cli(["model=resnet20", "model.shortcut=C", "data=synthetic"], tmp_path)
    assert proc.returncode == 2
    assert "model.shortcut='C' is not known; choose one of A, B" in proc.stderr
    proc = run_cli(["model=resnet20", "model.split=memory", "data=synthetic"], tmp_path)
    assert proc.returncode == 2
    assert "model.split=memory needs model.blocks=K (a number of modules), got model.blocks=null" in proc.stderr
    assert "data synthetic:" not in proc.stdout + proc.stderr  # refused by the config check, before the data is loaded


RULES = ["bp", "dgl", "random_features", "dni", "cdni", "ssl", "predsim", "infopro", "fa", "sign_symmetry", "dfa",
         "auglocal", "drtp", "forward_gradient",
         "target_prop"]  # target_prop: a block is a black box to its target regression
RULES += ["deep_supervision", "mono_forward"]
RULES += ["kolen_pollack", "weight_mirror", "pfa"]
MODELS = {"resnet20": ["model=resnet20", "model.width_mult=0.5"], "resnet18": ["model=resnet18", "model.stem=cifar"]}


# On resnet18 (11M weights, the costly half of the matrix) `make test` runs one rule per mechanism; the others are
# slow (make test-all), their mechanism on residual blocks being covered by the resnet20 half and by the rule named
# beside them: cdni, ssl, predsim, random_features, deep_supervision, mono_forward (aux heads/decoders: dgl,
# infopro), sign_symmetry, weight_mirror, pfa (converted layers: fa, kolen_pollack), drtp (injection: dfa).
SLOW_ON_RESNET18 = {"cdni", "ssl", "predsim", "random_features", "deep_supervision", "mono_forward", "sign_symmetry",
                    "weight_mirror", "pfa", "drtp"}
MATRIX = [pytest.param(rule, model, id=f"{rule}-{model}",
                       marks=[pytest.mark.slow] if model == "resnet18" and rule in SLOW_ON_RESNET18 else [])
          for rule in RULES for model in MODELS]


@pytest.mark.parametrize("rule, model", MATRIX)
def test_every_rule_takes_a_step_on_residual_blocks(rule, model):
    module, x, y = small_module([f"method={rule}", *MODELS[model]], InputSpec(3, 16, 10), batch=8)
    before = [p.detach().clone() for p in module.net.parameters()]
    train_batches(module, x, y, batch_size=8)
    changed = sum(not torch.equal(a, p) for a, p in zip(before, module.net.parameters()))
    assert changed > 0
    assert torch.isfinite(module.net(x)).all()


@pytest.mark.parametrize("model", list(MODELS))
def test_forward_forward_takes_a_step_on_residual_blocks_without_batch_norm(model):
    # Batch norm would normalise over a batch that mixes positive and negative rows: refused in one line.
    with pytest.raises(ConfigError, match="forward_forward needs blocks without batch norm; set model.batch_norm"):
        small_module(["method=forward_forward", *MODELS[model]], InputSpec(3, 16, 10), batch=8)
    module, x, y = small_module(["method=forward_forward", *MODELS[model], "model.batch_norm=false"],
                                InputSpec(3, 16, 10), batch=8)
    before = [p.detach().clone() for p in module.net.blocks.parameters()]
    train_batches(module, x, y, batch_size=8)
    assert all(not torch.equal(a, p) for a, p in zip(before, module.net.blocks.parameters()))
    assert torch.isfinite(module.rule.evaluate(module.net, x[:2])[0]).all()


def test_pepita_refuses_conv_and_residual_networks():
    with pytest.raises(ConfigError, match="method=pepita trains fully-connected networks"):
        small_module(["method=pepita", "model=resnet20"], InputSpec(3, 16, 10), batch=8)


# resnet20 (half width) on scikit-learn's 8x8 digits upsampled to 16 px, 3 epochs; chance is 0.10.
DIGITS_RESNET = ["data=digits", "data.image_size=16", "model=resnet20", "model.width_mult=0.5",
                 "trainer.max_epochs=3", "trainer.accelerator=cpu", "logger=none", "trainer.progress_bar=false"]


@pytest.mark.parametrize("rule", [["method=bp"], ["method=dgl", "model.blocks=4"]])
def test_resnet20_learns_digits(rule, tmp_path):
    assert fit_cfg([*DIGITS_RESNET, *rule], tmp_path)["test_acc"] > 0.9  # measured 0.983 (bp), 0.972 (dgl, K=4)
