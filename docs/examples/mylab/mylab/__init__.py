"""A lab's own rule, network and dataset for layerwise, kept outside the layerwise repository."""
