"""The options of layerwise's rules, one module per rule (options/dgl.py: method=dgl's, as `Options`), apart from
the rules so that they import no torch: the CLI checks a config (types, ranges, cross-field rules, a zero-derivative
activation) before torch is imported, and a config error costs well under a second. rules/<name>.py imports its
options from here as its `Options`; base.py holds what every rule has, feedback.py the FA family's `feedback`.
A rule without a module here still works: its options are then read from the rule's class (its module imported).
"""
