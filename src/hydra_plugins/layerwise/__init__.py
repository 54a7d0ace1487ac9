"""Hydra finds layerwise's config source here (hydra_plugins is the namespace Hydra scans for plugins)."""
from layerwise.config.source import OptionsConfigSource, OptionsSearchPath

__all__ = ["OptionsConfigSource", "OptionsSearchPath"]
