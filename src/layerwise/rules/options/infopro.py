"""method=infopro's options: local modules, the reconstruction and label terms and their weights."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from layerwise.errors import ConfigError
from layerwise.options import in_range, items_in_range, one_of
from layerwise.rules.options.base import RuleOptions
from layerwise.rules.options.dgl import AuxOptions

RECON_LOSSES = ("bce", "mse")
LABEL_LOSSES = ("ce", "contrast")
#: image: the raw image, the data module's normalisation undone (the paper's target); minmax: each image's
#: channels stretched to [0, 1] (this project's earlier bce target); input: the network input as it arrives.
RECON_TARGETS = ("image", "minmax", "input")


def check_recon(loss: str, target: str) -> None:
    if loss not in RECON_LOSSES:
        raise ConfigError(f"method.recon_loss={loss!r} is not known; choose bce or mse")
    if target not in RECON_TARGETS:
        raise ConfigError(f"method.recon_target={target!r} is not known; choose one of {', '.join(RECON_TARGETS)}")
    if loss == "bce" and target == "input":
        raise ConfigError("method.recon_loss=bce needs targets in [0, 1], which a normalised input is not; "
                          "use method.recon_target=image (the paper's) or method.recon_loss=mse")


def check_weights(recon: list[float], pred: list[float]) -> None:
    """Every local module needs a loss: the weights of no module may both be 0."""
    if any(r == 0 and p == 0 for r, p in zip(recon, pred)):
        raise ConfigError("method.recon_weight and method.pred_weight leave a local module with both weights 0 "
                          "(no loss); make one of them positive at that end")


@dataclass
class InfoProOptions(RuleOptions):
    """Local modules: null keeps the model's blocks; num_modules K regroups its layers into K nearly equal groups;
    split gives the group sizes, e.g. [2,1]. Set at most one of the two, and leave model.blocks null then.
    recon_weight / pred_weight: [first, last] local module, linear in between (the paper's ixx_1/ixx_2 and
    ixy_1/ixy_2). These defaults are this project's; the paper tunes them per number of modules K
    (experiment=wang_infopro_resnet32_cifar10 has its values)."""

    num_modules: Optional[int] = None
    split: Optional[List[int]] = None
    recon_loss: str = "bce"      # bce (sigmoid of the decoder vs the target, the paper's) | mse (raw decoder output)
    # image: the raw image in [0, 1], data.normalize undone (the paper's) | minmax: each image's channels
    # stretched to [0, 1] (this project's earlier target) | input: the network input as normalised (mse only)
    recon_target: str = "image"
    label_loss: str = "ce"       # ce (aux classifier, see aux) | contrast (supervised contrastive loss, a projection)
    recon_weight: List[float] = field(default_factory=lambda: [5.0, 0.5])   # lambda1: the reconstruction's weight
    pred_weight: List[float] = field(default_factory=lambda: [1.0, 1.0])    # lambda2: the label term's weight
    decoder_channels: int = 12   # hidden channels of the conv decoder (12 in the paper's code)
    feature_dim: int = 128       # label_loss=contrast: projection size
    temperature: float = 0.07    # label_loss=contrast: SupCon temperature
    # the aux classifier (ce) / projection head (contrast: always globally average-pooled); type infopro_paper is
    # the paper's head
    aux: AuxOptions = field(default_factory=AuxOptions)

    def __post_init__(self) -> None:
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


#: method=infopro's options (layerwise.rules.options_class finds them here without importing the rule).
Options = InfoProOptions
