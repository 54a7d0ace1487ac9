"""method=ssl's options: dgl's plus the reconstruction loss, its weights, shift and decoder placement."""
from __future__ import annotations

from dataclasses import dataclass

from layerwise.errors import ConfigError
from layerwise.options import in_range, one_of
from layerwise.rules.options.dgl import DglOptions

UPSAMPLING = ("none", "bilinear", "transposed")


@dataclass
class SslOptions(DglOptions):
    """Extends dgl's options (aux, first_trainable_block); direct_global does not apply."""

    pred_weight: float = 0.5             # weight of the aux classifier's cross-entropy (--pred_loss_weight)
    ssl_weight: float = 0.5              # weight of the reconstruction L1 loss (--ssl_loss_weight)
    ssl_only: bool = False               # no label signal in conv blocks; the head trains on detached features
    # roll block j's target by a shift rising from the first kernel size to half the image size
    # (--shift_ssl_labels); use with model.padding_mode=circular
    shift: bool = False
    upsample: str = "none"               # none (decode at the block's resolution) | bilinear | transposed
    decoder_before_pool: bool = False    # the decoder reads the block's map before its pool; the aux the pooled one

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direct_global:
            raise ConfigError("method=ssl cannot use direct_global (it mixes the head's error into aux classifier "
                              "outputs only); set method.direct_global=false or use method=dgl")
        one_of(self, "upsample", UPSAMPLING)
        in_range(self, "pred_weight", 0, 1, example=0.5)
        in_range(self, "ssl_weight", 0, 1, example=0.5)
        if not self.ssl_only and self.ssl_weight == 0:
            raise ConfigError("method.ssl_weight=0 turns reconstruction off; use method=dgl (or set ssl_weight > 0)")


#: method=ssl's options (layerwise.rules.options_class finds them here without importing the rule).
Options = SslOptions
