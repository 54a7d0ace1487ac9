"""BP and DGL against their math: one real training step through the Lightning loop vs. a hand computation."""
import copy

import torch
import torch.nn.functional as F

from conftest import compose_cfg, train_batches
from layerwise.core.module import LayerwiseModule
from layerwise.models import InputSpec, build_network
from layerwise.rules import build_rule

SPEC = InputSpec(3, 8, 5)


def make(method: str, extra=()):
    aux = ["method.aux.hidden_dim=12"] if method == "dgl" else []
    cfg = compose_cfg(["model=basic_cnn", "model.channels=[4,6,8]", "model.kernel_size=3", "model.head_hidden=[16]",
                       f"method={method}", *aux, "optimizer.scheduler.name=none", *extra])
    torch.manual_seed(0)
    net = build_network(cfg.model, SPEC)
    rule = build_rule(cfg.method)
    x = torch.randn(16, 3, 8, 8)
    y = torch.randint(0, 5, (16,))
    rule.setup(net, x, SPEC.num_classes)
    module = LayerwiseModule(net, rule, cfg.optimizer, SPEC.num_classes, x[:2], max_epochs=1)
    return cfg, module, x, y


def test_dgl_update_of_each_block_equals_its_local_loss_gradient():
    lr = 0.1
    cfg, module, x, y = make("dgl", ["optimizer.lr=0.1", "optimizer.momentum=0", "optimizer.weight_decay=0"])
    ref_net, ref_rule = copy.deepcopy(module.net), copy.deepcopy(module.rule)
    n = len(ref_net.blocks)

    expected = {}
    h = x
    for i, block in enumerate(ref_net.blocks):
        out = block(h.detach())
        local_head = ref_rule.aux[str(i)] if i < n - 1 else ref_net.head
        params = list(block.parameters()) + list(local_head.parameters())
        grads = torch.autograd.grad(F.cross_entropy(local_head(out), y), params)
        for p, g in zip(params, grads):
            expected[id(p)] = p.detach() - lr * g
        h = out
    ref_params = list(ref_net.parameters()) + list(ref_rule.parameters())
    before = ([p.detach().clone() for p in module.net.parameters()]
              + [p.detach().clone() for p in module.rule.parameters()])

    train_batches(module, x, y, batch_size=len(x))

    got = list(module.net.parameters()) + list(module.rule.parameters())
    assert len(got) == len(ref_params) == len(expected)
    for p_ref, p_got, p_before in zip(ref_params, got, before):
        assert not torch.equal(p_got, p_before), "every block (and the head) must be trained"
        torch.testing.assert_close(p_got.detach(), expected[id(p_ref)], atol=1e-6, rtol=1e-5)


def test_dgl_detaches_block_inputs_but_the_head_reaches_the_last_block():
    _, module, x, _ = make("dgl")
    rule, n = module.rule, len(module.net.blocks)
    x.requires_grad_(True)
    assert rule.block_input(0, x) is x
    assert all(not rule.block_input(i, x).requires_grad for i in range(1, n))
    assert rule.block_input(n, x).requires_grad


def test_bp_equals_a_plain_pytorch_loop_with_momentum_and_weight_decay():
    cfg, module, x, y = make("bp", ["optimizer.lr=0.05"])
    plain = copy.deepcopy(module.net)
    opt = torch.optim.SGD(plain.parameters(), lr=0.05, momentum=cfg.optimizer.momentum,
                          weight_decay=cfg.optimizer.weight_decay)
    for xb, yb in zip(x.split(8), y.split(8)):
        opt.zero_grad()
        F.cross_entropy(plain(xb), yb).backward()
        opt.step()

    train_batches(module, x, y, batch_size=8)

    for p_plain, p_got in zip(plain.parameters(), module.net.parameters()):
        torch.testing.assert_close(p_got, p_plain, atol=1e-6, rtol=1e-5)
    for b_plain, b_got in zip(plain.buffers(), module.net.buffers()):
        torch.testing.assert_close(b_got.float(), b_plain.float())


def test_no_autograd_graph_survives_a_training_step():
    """Saved activations still alive after a step mean a block was never backpropagated."""
    for method in ("bp", "dgl"):
        _, module, x, y = make(method)
        module.memory_batches = 10
        train_batches(module, x, y, batch_size=8)
        assert module.meter.peak_bytes > 0
        assert module.meter._live == 0, method


def test_dgl_aux_heads_follow_their_config():
    _, module, x, _ = make("dgl", ["method.aux.type=cnn", "method.aux.cnn_channels=5", "method.aux.pool_size=2",
                                   "method.aux.n_hidden_layers=2"])
    aux0 = module.rule.aux["0"]
    convs = [m for m in aux0.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in aux0.modules() if isinstance(m, torch.nn.Linear)]
    assert len(module.rule.aux) == len(module.net.blocks) - 1
    assert [c.out_channels for c in convs] == [5]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(5 * 2 * 2, 12), (12, 12), (12, 5)]
    assert [g.name for g in module.groups] == ["block0", "block1", "block2+head"]
