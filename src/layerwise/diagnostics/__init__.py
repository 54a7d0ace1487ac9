"""What a run can measure besides accuracy: gradient alignment with backprop and linear probes (probes.py),
whether a rule is really local (locality.py), and image grids (images.py)."""
