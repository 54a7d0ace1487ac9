"""layerwise entry point: legacy flags -> Hydra overrides, then `layerwise.train.run(cfg)`.

    python main.py method=dgl model=vgg16 trainer.max_epochs=100
    python main.py -m method=bp,dgl seed=0,1,2
    python main.py --dgl --device cuda:0          (original thesis flags, translation printed)
"""
import sys

import hydra
from omegaconf import DictConfig

from layerwise.cli import translate_argv


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_main(cfg: DictConfig):
    from layerwise.train import run  # heavy imports (torch, lightning) only when a job runs

    return run(cfg)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *translate_argv(sys.argv[1:])]
    hydra_main()
