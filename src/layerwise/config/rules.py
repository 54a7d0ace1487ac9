"""One schema per learning rule's options (conf/method/*.yaml), picked by `method.rule` or else `method.name`.

The checks mirror what each rule's constructor refuses (same wording), so a bad option fails here, before any
data is loaded, and a rule built from code (tests, notebooks) still refuses it. Checks that need the network
(number of blocks, conv vs flat outputs) stay in the rules' `setup`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, List, Optional

from omegaconf import MISSING

from layerwise.errors import ConfigError
from layerwise.options import in_range, items_in_range, number_or, one_of


@dataclass
class RuleSchema:
    PATH: ClassVar[str] = "method"
    name: str = MISSING
    rule: Optional[str] = None     # the rule's code, when a preset (cdni, random_features) reuses another's


@dataclass
class AuxSchema:
    PATH: ClassVar[str] = "method.aux"
    type: str = "mlp"
    hidden_dim: int = 256
    n_hidden_layers: int = 1
    pool_size: Optional[int] = None
    cnn_channels: int = 128
    cnn_layers: int = 1

    def __post_init__(self) -> None:
        from layerwise.rules.dgl import AUX_TYPES

        one_of(self, "type", AUX_TYPES)
        in_range(self, "hidden_dim", 1, example=256)
        in_range(self, "n_hidden_layers", 0, example=1)
        in_range(self, "pool_size", 1, example=2)
        in_range(self, "cnn_channels", 1, example=128)
        in_range(self, "cnn_layers", 0, example=1)


@dataclass
class BpSchema(RuleSchema):
    pass


@dataclass
class DglSchema(RuleSchema):
    aux: AuxSchema = field(default_factory=AuxSchema)
    direct_global: bool = False
    last_gradient_weight: float = 0.5
    first_trainable_block: Any = 0   # a block index, or head (only the head trains)

    def __post_init__(self) -> None:
        in_range(self, "last_gradient_weight", 0, 1, example=0.5,
                 what="0 = plain DGL, 1 = only the network head's error")
        number_or(self, "first_trainable_block", ["head"], low=0, example=1)


@dataclass
class SslSchema(DglSchema):
    pred_weight: float = 0.5
    ssl_weight: float = 0.5
    ssl_only: bool = False
    shift: bool = False
    upsample: str = "none"
    decoder_before_pool: bool = False

    def __post_init__(self) -> None:
        from layerwise.rules.ssl import UPSAMPLING

        super().__post_init__()
        if self.direct_global:
            raise ConfigError("method=ssl cannot use direct_global (it mixes the head's error into aux classifier "
                              "outputs only); set method.direct_global=false or use method=dgl")
        one_of(self, "upsample", UPSAMPLING)
        in_range(self, "pred_weight", 0, 1, example=0.5)
        in_range(self, "ssl_weight", 0, 1, example=0.5)
        if not self.ssl_only and self.ssl_weight == 0:
            raise ConfigError("method.ssl_weight=0 turns reconstruction off; use method=dgl (or set ssl_weight > 0)")


@dataclass
class SynthesizerSchema:
    PATH: ClassVar[str] = "method.synthesizer"
    type: str = "auto"
    hidden_layers: int = 2
    channels: Optional[int] = 128
    kernel_size: int = 5
    hidden_dim: int = 1024
    zero_init: bool = True
    batch_norm: bool = True
    lr_scale: Optional[float] = None   # null: 0.1 for mlp synthesizers, 1.0 for conv ones

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
class DniSchema(RuleSchema):
    context: bool = False
    synthesize_last: bool = False
    synthesizer: SynthesizerSchema = field(default_factory=SynthesizerSchema)


@dataclass
class FeedbackSchema:
    PATH: ClassVar[str] = "method.feedback"
    init: str = "default"
    scale: Any = 1.0               # a number > 0 | null; sign_symmetry usf also rms | init_std (checked per rule)

    def __post_init__(self) -> None:
        from layerwise.rules.feedback import INITS

        one_of(self, "init", INITS)


@dataclass
class DfaFeedbackSchema(FeedbackSchema):
    shape: str = "dense"

    def __post_init__(self) -> None:
        from layerwise.rules.dfa import FEEDBACK_SHAPES

        super().__post_init__()
        one_of(self, "shape", FEEDBACK_SHAPES)


@dataclass
class FaSchema(RuleSchema):
    feedback: FeedbackSchema = field(default_factory=FeedbackSchema)
    exact_last: bool = False

    def __post_init__(self) -> None:
        from layerwise.rules.feedback import check_scale

        check_scale(self.feedback.scale, "fa")


@dataclass
class SignSymmetrySchema(FaSchema):
    variant: str = "usf"

    def __post_init__(self) -> None:
        from layerwise.rules.feedback import check_scale
        from layerwise.rules.sign_symmetry import VARIANTS

        one_of(self, "variant", VARIANTS)
        check_scale(self.feedback.scale, "sign_symmetry", self.variant)


@dataclass
class DfaSchema(RuleSchema):
    injection: str = "post"
    feedback: DfaFeedbackSchema = field(default_factory=lambda: DfaFeedbackSchema(scale=0.3))

    def __post_init__(self) -> None:
        from layerwise.rules.feedback import check_scale
        from layerwise.rules.dfa import INJECTIONS, check_shape

        one_of(self, "injection", INJECTIONS)
        check_scale(self.feedback.scale, "dfa")
        check_shape(self.feedback.shape, self.injection)


@dataclass
class ForwardForwardSchema(RuleSchema):
    threshold: Any = "units"         # a number, or units (theta = the block's width)
    score_from: int = 0
    loss_reduction: str = "mean"
    normalize: str = "rms"
    peer_normalization: float = 0.03
    peer_momentum: float = 0.9

    def __post_init__(self) -> None:
        from layerwise.rules.forward_forward import LOSS_REDUCTIONS, NORMALIZATIONS

        if self.threshold != "units" and (isinstance(self.threshold, bool)
                                          or not isinstance(self.threshold, (int, float))):
            raise ConfigError(f"method.threshold={self.threshold!r} must be a number or units (the block's width), "
                              "e.g. method.threshold=units")
        in_range(self, "score_from", 0, example=1)
        one_of(self, "loss_reduction", LOSS_REDUCTIONS)
        one_of(self, "normalize", NORMALIZATIONS)
        in_range(self, "peer_normalization", 0, example=0.03, what="the reference uses 0.03")
        in_range(self, "peer_momentum", 0, 1, high_open=True, example=0.9)


@dataclass
class InfoProSchema(RuleSchema):
    num_modules: Optional[int] = None
    split: Optional[List[int]] = None
    recon_loss: str = "bce"
    recon_target: str = "image"
    label_loss: str = "ce"
    recon_weight: List[float] = field(default_factory=lambda: [5.0, 0.5])
    pred_weight: List[float] = field(default_factory=lambda: [1.0, 1.0])
    decoder_channels: int = 12
    feature_dim: int = 128
    temperature: float = 0.07
    aux: AuxSchema = field(default_factory=AuxSchema)

    def __post_init__(self) -> None:
        from layerwise.rules.infopro import LABEL_LOSSES, RECON_LOSSES, check_recon, check_weights

        one_of(self, "recon_loss", RECON_LOSSES)
        check_recon(self.recon_loss, self.recon_target)
        one_of(self, "label_loss", LABEL_LOSSES)
        items_in_range(self, "recon_weight", 0, length=2, example="[5.0,0.5]")
        items_in_range(self, "pred_weight", 0, length=2, example="[1.0,1.0]")
        check_weights(self.recon_weight[:1], self.pred_weight[:1])  # the end pair: per module, in setup
        if self.num_modules is not None and self.split is not None:
            raise ConfigError("method.num_modules and method.split both set; set one of them (the other to null)")
        in_range(self, "num_modules", 2, example=2)
        items_in_range(self, "split", 1, min_length=2, example="[2,1]")
        in_range(self, "decoder_channels", 1, example=12)
        in_range(self, "feature_dim", 1, example=128)
        in_range(self, "temperature", 0, low_open=True, example=0.07, what="the paper uses 0.07")


@dataclass
class PredSimSchema(RuleSchema):
    loss: str = "predsim"
    beta: float = 0.99
    dim_in_decoder: int = 2048
    loss_before_pool: bool = True
    zero_init_head: bool = False

    def __post_init__(self) -> None:
        from layerwise.rules.predsim import LOSSES

        one_of(self, "loss", LOSSES)
        in_range(self, "beta", 0, 1, example=0.99, what="the weight of the sim loss")
        in_range(self, "dim_in_decoder", 1, example=2048)


# Keyed by the rule's code name (method.rule, else method.name), like layerwise.rules.RULES.
RULE_SCHEMAS: dict[str, type[RuleSchema]] = {
    "bp": BpSchema, "dgl": DglSchema, "ssl": SslSchema, "dni": DniSchema, "fa": FaSchema,
    "sign_symmetry": SignSymmetrySchema, "dfa": DfaSchema, "forward_forward": ForwardForwardSchema,
    "infopro": InfoProSchema, "predsim": PredSimSchema,
}
