"""Memory a setting needs: checked before the network is allocated, and named in one line when an allocation fails.

`check_network_fits` builds the network on torch's meta device (shapes only, no memory) and refuses one whose
float32 weights alone exceed the memory available: on Linux a too-large allocation may succeed (overcommit) and
the kernel's OOM killer then ends the process without a word when the weights are initialized.
`memory_errors(cfg, stage)` turns the allocation failures that still happen (torch.OutOfMemoryError, the CPU
allocator's RuntimeError, numpy's MemoryError) into a ResourceError naming the size and the settings behind it.
"""
from __future__ import annotations

import contextlib
import os
import re

import torch
from omegaconf import OmegaConf

from layerwise.errors import ResourceError

# The messages allocators fail with (torch CPU and CUDA, numpy, Python).
OOM_PATTERNS = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory",
                "unable to allocate", "defaultcpuallocator")
_SIZE_PATTERNS = (re.compile(r"tried to allocate (\d+) bytes", re.I),          # DefaultCPUAllocator
                  re.compile(r"tried to allocate ([\d.]+ ?[KMGTP]i?B)", re.I),  # CUDA caching allocator
                  re.compile(r"unable to allocate ([\d.]+ ?[KMGTP]i?B)", re.I))  # numpy


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def available_memory() -> int | None:
    """Bytes of RAM a new allocation can use: MemAvailable (free + reclaimable cache) where Linux reports it, else
    the free pages os.sysconf reports; None where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def size_settings(cfg, stage: str = "") -> str:
    """The settings that size the network (and, while training, each batch), as `key=value` the user typed."""
    keys = ["model.widths", "model.channels", "model.width_mult", "model.head_hidden", "method.aux.hidden_dim",
            "data.image_size"]
    if stage == "training":
        keys = ["data.batch_size", *keys]
    shown = []
    for k in keys:
        value = OmegaConf.select(cfg, k, default=None)
        if value is None or (k == "model.width_mult" and value == 1) or (k == "model.head_hidden" and not value):
            continue
        if not isinstance(value, (int, float, str)):
            value = str(OmegaConf.to_container(value)).replace(" ", "")
        shown.append(f"{k}={value}")
    return ", ".join(shown) or "the model and data settings"


def _parameter_bytes(net: torch.nn.Module) -> tuple[int, int, str]:
    """(parameters, bytes, the largest layer as 'name (Module(...))')."""
    count = sum(p.numel() for p in net.parameters())
    size = sum(p.numel() * p.element_size() for p in net.parameters())
    largest = max(((name, m) for name, m in net.named_modules() if any(True for _ in m.parameters(recurse=False))),
                  key=lambda nm: sum(p.numel() for p in nm[1].parameters(recurse=False)), default=None)
    where = f"{largest[0]} ({largest[1]})" if largest else "?"
    return count, size, where


def _count(n: int) -> str:
    return f"{n / 1e9:,.2f}G" if n >= 1e9 else f"{n / 1e6:,.2f}M"


def check_network_fits(cfg, spec, device: torch.device | None = None) -> None:
    """Refuse a network whose weights alone do not fit in the memory this run has (RAM, and the GPU's if any)."""
    from layerwise.models import build_network

    with torch.device("meta"):
        net = build_network(cfg.model, spec)
    count, size, largest = _parameter_bytes(net)
    limits = [("of memory available", available_memory())]
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        limits.append((f"free on {device}", free))
    for where, limit in limits:
        if limit is not None and size > limit:
            raise ResourceError(
                f"model={cfg.model.name} has {_count(count)} parameters, {human_bytes(size)} of weights alone "
                f"(largest layer {largest}), more than the {human_bytes(limit)} {where}; lower "
                f"{size_settings(cfg)}")


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(p in str(err).lower() for p in OOM_PATTERNS)


def requested_size(err: BaseException) -> str | None:
    text = str(err)
    for pattern in _SIZE_PATTERNS:
        match = pattern.search(text)
        if match:
            size = match.group(1)
            return human_bytes(int(size)) if size.isdigit() else size
    return None


@contextlib.contextmanager
def memory_errors(cfg, stage: str):
    """Inside: an allocation failure becomes one ResourceError line (the size, the settings behind it, the fix)."""
    try:
        yield
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        size = requested_size(err)
        asked = f"an allocation of {size}" if size else "an allocation"
        on_gpu = "cuda" in str(err).lower()
        free = None if on_gpu else available_memory()
        have = " on the GPU" if on_gpu else f" ({human_bytes(free)} of memory available)" if free is not None else ""
        raise ResourceError(f"out of memory while {stage}: {asked} failed{have}; lower "
                            f"{size_settings(cfg, stage)}, or run on a machine with more memory") from None
