"""`trainer.compile`'s values, torch-free: the config check reads them before torch is imported."""
from __future__ import annotations

from layerwise.errors import ConfigError

#: torch.compile modes (`trainer.compile=<mode>`); `true` is "default".
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(value) -> str | None:
    """`trainer.compile` as a torch.compile mode, or None for off."""
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("false", "off", "none", "")):
        return None
    if value is True or (isinstance(value, str) and value.lower() == "true"):
        return "default"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise ConfigError(f"trainer.compile={value!r} is not known; use false, true or a torch.compile mode: "
                      f"{', '.join(COMPILE_MODES)}")
