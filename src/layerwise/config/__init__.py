"""What a config may say: the typed schema (schema.py, derived from the options dataclasses beside each rule,
model and dataset), the checks that run before any data is loaded (checks.py), and hyperparameter searches
(search.py)."""
