"""layerwise: train deep networks block by block with local learning rules, next to backprop."""

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml reads it from here
