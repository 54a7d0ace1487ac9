"""SSL reconstruction rule against its math: shift schedule, targets, label-free SSL-only, mixed-loss step."""
import copy

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import DIGITS, fit_cfg, train_batches
from layerwise.errors import ConfigError
from layerwise.rules.ssl import shift_schedule
from test_rule_math import make

SGD = ["optimizer.lr=0.1", "optimizer.momentum=0", "optimizer.weight_decay=0"]


def test_shift_schedule_rises_linearly_from_the_first_kernel_to_half_the_image():
    assert shift_schedule(5, 32, 4) == [5, 9, 12, 16]
    assert shift_schedule(3, 16, 3) == [3, 6, 8]
    assert shift_schedule(5, 32, 1) == [5]


def test_each_block_targets_the_input_rolled_by_its_shift_then_resized():
    _, module, x, _ = make("ssl", ["method.shift=true", "model.padding_mode=circular"])
    rule = module.rule
    assert rule.shifts == {0: 3, 1: 4}  # kernel 3 -> half of 8px, over the 2 local blocks
    target = rule.target(1, x, 2)
    torch.testing.assert_close(target, F.adaptive_avg_pool2d(torch.roll(x, (4, 4), (-2, -1)), 2))
    assert not torch.allclose(target, F.adaptive_avg_pool2d(x, 2))


def test_mixed_loss_step_equals_the_weighted_local_gradient():
    _, module, x, y = make("ssl", [*SGD, "method.pred_weight=0.3", "method.ssl_weight=0.7"])
    net, rule = copy.deepcopy(module.net), copy.deepcopy(module.rule)
    h = net.blocks[0](x)
    recon = rule.decoders["0"](h)
    loss = 0.3 * F.cross_entropy(rule.aux["0"](h), y) + 0.7 * F.l1_loss(recon, F.adaptive_avg_pool2d(x, 4))
    params = [*net.blocks[0].parameters(), *rule.aux["0"].parameters(), *rule.decoders["0"].parameters()]
    expected = [p.detach() - 0.1 * g for p, g in zip(params, torch.autograd.grad(loss, params))]
    train_batches(module, x, y, batch_size=len(x))
    got = [*module.net.blocks[0].parameters(), *module.rule.aux["0"].parameters(),
           *module.rule.decoders["0"].parameters()]
    for p_got, p_exp in zip(got, expected, strict=True):
        torch.testing.assert_close(p_got.detach(), p_exp, atol=1e-6, rtol=1e-5)


def test_ssl_only_never_lets_a_label_gradient_reach_a_conv_block():
    _, a, x, y = make("ssl", ["method.ssl_only=true"])
    b = copy.deepcopy(a)
    assert a.rule.detach_head and len(a.rule.aux) == 0 and sorted(a.rule.decoders) == ["0", "1", "2"]
    assert [g.name for g in a.groups] == ["block0", "block1", "block2", "head"]
    train_batches(a, x, y, batch_size=8)
    train_batches(b, x, (y + 1) % 5, batch_size=8)
    for p, q in zip(a.net.blocks.parameters(), b.net.blocks.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
    assert not all(torch.equal(p, q) for p, q in zip(a.net.head.parameters(), b.net.head.parameters()))


@pytest.mark.parametrize("upsample", ["bilinear", "transposed"])
def test_upsampling_decoders_reconstruct_at_input_size(upsample):
    _, module, x, _ = make("ssl", [f"method.upsample={upsample}"])
    h = x
    for i in range(2):
        h = module.net.blocks[i](h)
        assert module.rule.decoders[str(i)](h).shape == x.shape


def test_decoder_before_pool_reads_the_unpooled_map():
    _, module, x, y = make("ssl", ["method.decoder_before_pool=true"])
    h = module.net.blocks[0](x)          # 8px input -> 4px after the block's pool
    assert h.shape[-1] == 4
    assert module.rule.decoders["0"].size == 8
    assert module.rule.reconstruct(0, h).shape[-1] == 8
    assert module.rule.aux["0"](h).shape == (len(x), 5)  # the aux classifier reads the pooled output


def test_a_copy_of_net_and_rule_keeps_its_own_pre_pool_maps():
    """The alignment and locality diagnostics deepcopy (net, rule): the copy's decoder must read the copy's map."""
    _, module, x, y = make("ssl", ["method.decoder_before_pool=true"])
    net, rule = copy.deepcopy((module.net, module.rule))
    module.rule._pre_pool.clear()
    rule._pre_pool.clear()
    with torch.no_grad():
        for p in net.blocks[0].parameters():
            p.add_(1.0)  # the copy's map now differs from the original's
        net.blocks[0](x)
        unpooled = net.blocks[0][:-1](x)  # conv, BN, ReLU: the map entering the block's max-pool
    torch.testing.assert_close(rule._pre_pool.pop(0, None), unpooled)
    assert module.rule._pre_pool.pop(0, None) is None


@pytest.mark.parametrize("overrides, match", [
    (["method.direct_global=true"], "direct_global"),
    (["method.ssl_weight=0"], "ssl_weight"),
    (["method.pred_weight=1.5"], "pred_weight"),
    (["method.upsample=nearest"], "upsample"),
])
def test_incompatible_options_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        make("ssl", overrides)


def test_ssl_refuses_flat_blocks(tmp_path):
    from conftest import TINY
    with pytest.raises(ConfigError, match="conv blocks"):
        fit_cfg([*TINY, "model=mlp", "method=ssl"], tmp_path)


@pytest.mark.parametrize("extra, floor", [([], 0.85), (["method.ssl_only=true", "method.upsample=transposed"], 0.5)],
                         ids=["pred+ssl", "ssl_only"])
def test_learns_digits_and_saves_reconstructions(extra, floor, tmp_path):
    """Chance is 0.10; 3 epochs reach about 0.97 (mixed) and 0.75 (SSL only, transposed decoders)."""
    summary = fit_cfg([*DIGITS, "method=ssl", *extra], tmp_path)
    assert summary["test_acc"] > floor, summary
    grid = tmp_path / "images" / "ssl_block0_epoch003.png"
    assert grid.is_file() and Image.open(grid).size[0] > 16
