"""method=dni's options: the synthesizers and cDNI's label context."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from layerwise.errors import ConfigError
from layerwise.options import in_range, one_of
from layerwise.rules.options.base import RuleOptions


@dataclass
class SynthesizerOptions:
    PATH: ClassVar[str] = "method.synthesizer"
    type: str = "auto"                 # auto (conv for conv blocks, mlp for flat ones) | conv | mlp
    hidden_layers: int = 2             # conv: Conv-BN-ReLU-Conv-BN-ReLU-Conv with 2, keeping the block's map size
    channels: Optional[int] = 128      # conv hidden channels (BasicCNN's width; caps VGG's); null = the block's own
    kernel_size: int = 5               # conv layers use same padding
    hidden_dim: int = 1024             # mlp hidden width
    zero_init: bool = True             # last layer starts at zero: no signal until the synthesizer has learnt (paper)
    batch_norm: bool = True            # BN before the ReLU of each hidden layer
    # synthesizers train at lr_scale x optimizer.lr; null: 0.1 for mlp synthesizers (1.0 collapses a digits MLP),
    # 1.0 for conv ones (0.1 learns too slowly); docs/rules/dni.md
    lr_scale: Optional[float] = None

    def __post_init__(self) -> None:
        one_of(self, "type", ("auto", "conv", "mlp"))
        in_range(self, "hidden_layers", 0, example=2)
        in_range(self, "channels", 1, example=128)
        in_range(self, "kernel_size", 1, example=5)
        if self.kernel_size % 2 == 0:  # same padding keeps the map size only for odd kernels
            raise ConfigError(f"method.synthesizer.kernel_size={self.kernel_size} must be odd (same padding), "
                              f"e.g. method.synthesizer.kernel_size=5")
        in_range(self, "hidden_dim", 1, example=1024)
        in_range(self, "lr_scale", 0, low_open=True, example=0.1, what="a multiple of optimizer.lr")


@dataclass
class DniOptions(RuleOptions):
    context: bool = False              # condition the synthesizers on the label (cDNI; see method=cdni)
    # true: a synthesizer after the last block too (paper), regressed on the head's true gradient; on MLPs pair
    # it with synthesizer.lr_scale=0.01 (at 0.1 it swings; docs/rules/dni.md)
    synthesize_last: bool = False
    synthesizer: SynthesizerOptions = field(default_factory=SynthesizerOptions)


#: method=dni's options (layerwise.rules.options_class finds them here without importing the rule).
Options = DniOptions
