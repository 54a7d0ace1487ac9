"""method=bp has only the options every rule has."""
from __future__ import annotations

from layerwise.rules.options.base import RuleOptions

#: method=bp's options (layerwise.rules.options_class finds them here without importing the rule).
Options = RuleOptions
