"""method=dgl's options: the aux classifier (shared with infopro and ssl), direct_global, frozen blocks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from layerwise.options import in_range, number_or, one_of
from layerwise.rules.options.base import RuleOptions

#: mlp / cnn: the thesis's heads; dgl_paper / dgl_paper_sr: Belilovsky et al.'s MLP-aux / MLP-SR-aux;
#: infopro_paper: Wang et al.'s label head.
AUX_TYPES = ("mlp", "cnn", "dgl_paper", "dgl_paper_sr", "infopro_paper")


@dataclass
class AuxOptions:
    """The aux classifier after a local block (method.aux; legacy --pred_aux_type, --aux_mlp_*)."""

    PATH: ClassVar[str] = "method.aux"
    # mlp | cnn (conv layers, then the MLP) | dgl_paper: Belilovsky et al.'s MLP-aux (pool to 2x2, 3 x Linear(4C)
    # + BN + ReLU, Linear) | dgl_paper_sr: their MLP-SR-aux (3 x 1x1 conv + BN + ReLU at H/4 first) |
    # infopro_paper (conv3x3 stride 2 + BN + ReLU, global average pool, FC hidden_dim, ReLU, FC). The paper heads
    # have their own sizes: hidden_dim .. cnn_layers do not apply to dgl_paper*.
    type: str = "mlp"
    hidden_dim: int = 256
    n_hidden_layers: int = 1
    pool_size: Optional[int] = None   # adaptive average pool to pool_size x pool_size before the aux; null = none
    cnn_channels: int = 128           # type=cnn only
    cnn_layers: int = 1

    def __post_init__(self) -> None:
        one_of(self, "type", AUX_TYPES)
        in_range(self, "hidden_dim", 1, example=256)
        in_range(self, "n_hidden_layers", 0, example=1)
        in_range(self, "pool_size", 1, example=2)
        in_range(self, "cnn_channels", 1, example=128)
        in_range(self, "cnn_layers", 0, example=1)


@dataclass
class DglOptions(RuleOptions):
    aux: AuxOptions = field(default_factory=AuxOptions)
    direct_global: bool = False          # mix the network head's error into every aux head's output gradient
    last_gradient_weight: float = 0.5    # w in (1-w)*local + w*global, when direct_global
    first_trainable_block: Any = 0       # blocks before it stay at their random init; head: only the head trains

    def __post_init__(self) -> None:
        in_range(self, "last_gradient_weight", 0, 1, example=0.5,
                 what="0 = plain DGL, 1 = only the network head's error")
        number_or(self, "first_trainable_block", ["head"], low=0, example=1)


#: method=dgl's options (layerwise.rules.options_class finds them here without importing the rule).
Options = DglOptions
