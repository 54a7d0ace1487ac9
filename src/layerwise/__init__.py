"""layerwise: train deep networks block by block with local learning rules, next to backprop."""

__version__ = "0.1.0"
