"""InfoPro against its math (lambda schedule, SupCon, one real step vs. a hand computation) and in training."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import DIGITS, TINY, assert_one_epoch_reaches, compose_cfg, fit_cfg, train_batches
from layerwise.core.module import LayerwiseModule
from layerwise.errors import ConfigError
from layerwise.models import InputSpec, LayerGroup, build_network, regroup
from layerwise.rules import build_rule
from layerwise.rules.infopro import lambda_schedule, supcon_loss

SPEC = InputSpec(3, 8, 5)
SGD = ["optimizer.lr=0.1", "optimizer.momentum=0", "optimizer.weight_decay=0"]


def make(extra=(), spec=SPEC):
    cfg = compose_cfg(["model=basic_cnn", "model.channels=[4,6,8]", "model.kernel_size=3", "model.head_hidden=[16]",
                       "method=infopro", "method.aux.hidden_dim=12", "method.decoder_channels=5",
                       "method.feature_dim=8", "optimizer.scheduler.name=none", *extra])
    torch.manual_seed(0)
    net = build_network(cfg.model, spec)
    rule = build_rule(cfg.method)
    x = torch.randn(16, spec.channels, spec.size, spec.size)
    y = torch.arange(16) % spec.num_classes
    rule.setup(net, x, spec.num_classes)
    module = LayerwiseModule(net, rule, cfg.optimizer, spec.num_classes, x[:2], max_epochs=1)
    return module, x, y


def test_lambdas_interpolate_linearly_over_the_local_modules():
    assert lambda_schedule([5.0, 0.5], 3) == pytest.approx([5.0, 2.75, 0.5])
    assert lambda_schedule([1.0, 0.0], 5) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert lambda_schedule([2.0, 7.0], 1) == [2.0]  # one local module: t = 0
    module, _, _ = make(["method.num_modules=4", "model.channels=[4,4,4,4]", "method.pred_weight=[0.5,2.0]"],
                        InputSpec(3, 16, 5))
    assert module.rule.recon_weights == pytest.approx([5.0, 2.75, 0.5])
    assert module.rule.pred_weights == pytest.approx([0.5, 1.25, 2.0])


def test_supcon_matches_a_hand_computation():
    # Anchors 0 and 1 are positives of each other; anchor 2 (alone in its class) is left out.
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    t = 0.5
    a0 = -0.6 / t + math.log(math.exp(0.6 / t) + math.exp(0.0))
    a1 = -0.6 / t + math.log(math.exp(0.6 / t) + math.exp(0.8 / t))
    assert supcon_loss(z, y, t).item() == pytest.approx((a0 + a1) / 2, rel=1e-6)
    # Two identical features of one class and a different one: positives already maximally similar.
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # float32 rounds ~6e-7 away
    assert supcon_loss(z, y, 0.07).item() == pytest.approx(math.log1p(math.exp(-1 / 0.07)), rel=1e-4)
    # An anchor with two positives averages their log-probabilities.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    y3 = torch.tensor([0, 0, 0])
    lp = lambda s, others: s - math.log(sum(math.exp(o) for o in others))  # noqa: E731
    per_anchor = [(lp(0.0, [0.0, 0.6]) + lp(0.6, [0.0, 0.6])) / 2,
                  (lp(0.0, [0.0, 0.8]) + lp(0.8, [0.0, 0.8])) / 2,
                  (lp(0.6, [0.6, 0.8]) + lp(0.8, [0.6, 0.8])) / 2]
    assert supcon_loss(z, y3, 1.0).item() == pytest.approx(-sum(per_anchor) / 3, rel=1e-6)
    # No positives at all: zero, still differentiable.
    zz = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    loss = supcon_loss(zz, torch.tensor([0, 1, 2]), 0.07)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(zz.grad, torch.zeros_like(zz))


def test_one_step_of_each_module_equals_its_local_loss_gradient():
    lr = 0.1
    module, x, y = make(SGD)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    module.rule.set_input_normalization("gaussian", mean, std)
    ref_net, ref_rule = copy.deepcopy(module.net), copy.deepcopy(module.rule)
    n = len(ref_net.blocks)
    assert n == 3 and ref_rule.recon_weights == [5.0, 0.5] and ref_rule.pred_weights == [1.0, 1.0]

    # The paper's target: the raw image, the data's (x - mean) / std undone, not rescaled per image.
    target = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    expected = {}
    h = x
    for i, block in enumerate(ref_net.blocks):
        out = block(h.detach())
        if i < n - 1:
            dec, aux = ref_rule.decoders[i], ref_rule.label_heads[i]
            up = F.interpolate(out, size=(8, 8), mode="bilinear", align_corners=True)
            p = torch.sigmoid(dec.net(up))
            recon = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()  # sigmoid + BCE
            loss = ref_rule.recon_weights[i] * recon + ref_rule.pred_weights[i] * F.cross_entropy(aux(out), y)
            params = [*block.parameters(), *dec.parameters(), *aux.parameters()]
        else:
            loss = F.cross_entropy(ref_net.head(out), y)
            params = [*block.parameters(), *ref_net.head.parameters()]
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            expected[id(p)] = p.detach() - lr * g
        h = out
    ref_params = [*ref_net.parameters(), *ref_rule.parameters()]
    assert len(expected) == len(ref_params)
    assert_one_epoch_reaches(module, x, y, len(x), [expected[id(p)] for p in ref_params],
                             "module, decoder and aux head")
    assert [g.name for g in module.groups] == ["block0", "block1", "block2+head"]
    assert module.meter._live == 0  # every local graph was freed by its backward


def test_num_modules_regroups_the_layers_and_trains():
    module, x, y = make(["method.num_modules=2"])
    net = module.net
    assert len(net.blocks) == 2 and isinstance(net.blocks[0], LayerGroup) and len(net.blocks[0]) == 2
    out_channels = [[c.out_channels for c in b.modules() if isinstance(c, nn.Conv2d)] for b in net.blocks]
    assert out_channels == [[4, 6], [8]]
    assert [type(m) for m in net.blocks[1]] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]  # one layer
    assert len(module.rule.decoders) == 1 and module.rule.recon_weights == [5.0]
    assert [g.name for g in module.groups] == ["block0", "block1+head"]
    before = [p.detach().clone() for p in net.parameters()]
    train_batches(module, x, y, batch_size=8)
    assert all(not torch.equal(p, b) for p, b in zip(net.parameters(), before))


def test_regroup_keeps_the_layers_and_state_dict_keys():
    cfg = compose_cfg(["model=basic_cnn", "model.channels=[4,6,8]", "model.blocks=2"]).model
    net = build_network(cfg, SPEC)
    keys = list(net.state_dict())
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    regroup(net, [1, 2])
    assert [len(b) for b in net.blocks] == [4, 2] and isinstance(net.blocks[1], LayerGroup)  # a layer; 2 layers
    assert [m for m in net.modules() if isinstance(m, nn.Conv2d)] == convs
    regroup(net, 2)
    assert list(net.state_dict()) == keys


@pytest.mark.parametrize("overrides, match", [
    (["method.recon_loss=l1"], "recon_loss='l1' is not known"),
    (["method.label_loss=nce"], "label_loss='nce' is not known"),
    (["method.recon_weight=[1.0,-1.0]"], "every item must be >= 0"),
    (["method.recon_weight=[0,1]", "method.pred_weight=[0,1]"], "both weights 0"),
    (["method.recon_weight=[1,0]", "method.pred_weight=[1,0]"], "both weights 0"),  # 2 local modules: the end counts
    (["method.recon_target=pixels"], "recon_target='pixels' is not known"),
    (["method.recon_target=input"], "use method.recon_target=image"),
    (["method.pred_weight=[1.0]"], "pred_weight=\\[1.0\\] must have 2 items"),
    (["method.pred_weight=1.0"], "method.pred_weight must be a list of numbers, got 1.0"),
    (["method.num_modules=2", "method.split=[2,1]"], "set one of them"),
    (["method.num_modules=1"], "num_modules=1 is out of range; it must be >= 2"),
    (["method.num_modules=4"], r"num_modules=4 must be between 2 and the number of layers \(3\)"),  # in setup
    (["method.split=[3]"], "split=\\[3\\] must have at least 2 items"),
    (["method.split=[1,1]"], "summing to the 3 layers"),
    (["model.blocks=1"], "at least 2 modules"),
])
def test_config_errors_name_the_fix(overrides, match):
    with pytest.raises(ConfigError, match=match):
        make(overrides)


def test_infopro_learns_digits(tmp_path):
    summary = fit_cfg([*DIGITS, "method=infopro"], tmp_path / "run")
    assert summary["test_acc"] > 0.85  # measured 0.98 after 3 epochs; chance is 0.10


@pytest.mark.parametrize("extra", [
    ["model=basic_cnn", "model.channels=[8,8]", "method.label_loss=contrast", "method.recon_loss=mse"],
    ["model=mlp", "model.widths=[32,32,32]", "method.num_modules=2"],
    ["model=mlp", "model.widths=[32,32]", "method.label_loss=contrast"],
])
def test_variants_train(tmp_path, extra):
    summary = fit_cfg([*TINY, "method=infopro", *extra], tmp_path / "run")
    assert summary["status"] == "completed" and summary["test_acc"] is not None


# ----------------------------------------------------------------------------- the paper's target, head, lambdas
@pytest.mark.parametrize("normalize, mean, std", [("gaussian", (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)),
                                                  ("minus_one_one", (0.3,) * 3, (0.2,) * 3),
                                                  ("none", (0.3,) * 3, (0.2,) * 3)])
def test_recon_target_image_undoes_the_data_normalisation(normalize, mean, std):
    from layerwise.rules.infopro import pixel_affine

    raw = torch.rand(4, 3, 5, 5)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x = {"gaussian": (raw - m) / s, "minus_one_one": (raw - 0.5) / 0.5, "none": raw}[normalize]
    module, _, _ = make()
    module.rule.set_input_normalization(normalize, mean, std)
    torch.testing.assert_close(module.rule.recon_target_of(x), raw)
    scale, shift = pixel_affine(normalize, mean, std)
    torch.testing.assert_close(x * scale.view(1, 3, 1, 1) + shift.view(1, 3, 1, 1), raw)


def test_recon_target_options_keep_the_old_targets():
    x = torch.randn(2, 3, 4, 4)
    minmax, _, _ = make(["method.recon_target=minmax"])
    got = minmax.rule.recon_target_of(x)
    assert got.amin((2, 3)).abs().max() < 1e-6 and (got.amax((2, 3)) - 1).abs().max() < 1e-6
    plain, _, _ = make(["method.recon_target=input", "method.recon_loss=mse"])
    assert torch.equal(plain.rule.recon_target_of(x), x)


def test_training_hands_the_data_normalisation_to_the_rule():
    from layerwise.core.experiment import build_experiment

    cfg = compose_cfg([*DIGITS, "method=infopro", "data.normalize=gaussian"])
    datamodule, module = build_experiment(cfg)
    info = datamodule.info
    torch.testing.assert_close(module.rule.pixel_scale.flatten(), torch.tensor(info.std, dtype=torch.float32))
    torch.testing.assert_close(module.rule.pixel_shift.flatten(), torch.tensor(info.mean, dtype=torch.float32))


@pytest.mark.parametrize("channels, size, conv", [(16, 32, (32, 16, 2)), (32, 16, (64, 32, 2)), (64, 8, (64, 64, 1))])
def test_infopro_paper_head_is_conv_bn_relu_pool_fc_relu_fc(channels, size, conv):
    """Wang et al.'s '1c2f' head for ResNet-32's three stages (16/32/64 channels on 32/16/8-px maps)."""
    from layerwise.rules.dgl import infopro_paper_head

    head = infopro_paper_head(torch.Size((channels, size, size)), 10, hidden=128)
    out_c, in_c, stride = conv
    assert [type(m).__name__ for m in head] == ["Conv2d", "BatchNorm2d", "ReLU", "AdaptiveAvgPool2d", "Flatten",
                                                "Linear", "ReLU", "Linear"]
    assert head[0].weight.shape == (out_c, in_c, 3, 3) and head[0].stride == (stride, stride)
    assert head[0].bias is None and head[0].padding == (1, 1) and head[3].output_size == 1
    assert (head[5].in_features, head[5].out_features, head[7].out_features) == (out_c, 128, 10)
    assert head(torch.randn(2, channels, size, size)).shape == (2, 10)


def test_paper_preset_options_build_contrastive_paper_heads():
    module, x, y = make(["method.label_loss=contrast", "method.aux.type=infopro_paper", "method.aux.hidden_dim=16",
                         "method.recon_weight=[5.0,0.0]", "method.pred_weight=[1.0,0.0]", "method.num_modules=2"])
    rule = module.rule
    assert rule.recon_weights == [5.0] and rule.pred_weights == [1.0]  # K=2: one local module, the start pair
    head = rule.label_heads[0]
    assert type(head[0]) is nn.Conv2d and head[-1].out_features == 8  # feature_dim: a projection for SupCon
    assert "head infopro_paper" in rule.describe() and "of the image" in rule.describe()
    rule.begin_batch(module.net, x, y)
    h = module.net.blocks[0](x)
    assert torch.isfinite(rule.block_signal(0, h, y).loss)
