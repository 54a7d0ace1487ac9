import torch

from layerwise.core.memory import ActivationMeter


def test_counts_bytes_saved_for_backward_once_per_storage_and_frees_them():
    w = torch.randn(100, 100, requires_grad=True)
    x = torch.randn(64, 100)
    meter = ActivationMeter()
    with meter.track(torch.device("cpu")):
        h = x @ w            # saves x (input) and w (a parameter: not counted)
        a = torch.relu(h)    # saves its output a
        b = a * 2.0          # saves nothing that needs grad from a scalar
        loss = (b * a).sum()  # saves a twice (same storage: counted once) and b
    expected = x.nbytes + a.nbytes + b.nbytes
    assert meter.peak_bytes == expected
    loss.backward()
    assert meter._live == 0
