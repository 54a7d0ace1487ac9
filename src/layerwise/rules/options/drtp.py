"""method=drtp's options: dfa's injection point and feedback matrices (the same B_i, projecting y* instead of e)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from layerwise.rules.options.dfa import DfaOptions


@dataclass
class DrtpOptions(DfaOptions):
    """dfa's options as they are: injection post (B_i y* is the gradient of the block output, the paper's; f'
    applies) | pre (the gradient of the last activation's input, skipping f', so model.activation=sign|step can
    learn); feedback as method=dfa's (dense | conv_shared, init, scale 0.3)."""

    RULE: ClassVar[str] = "drtp"


#: method=drtp's options (layerwise.rules.options_class finds them here without importing the rule).
Options = DrtpOptions
