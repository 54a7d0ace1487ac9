"""layerwise entry point: legacy flags -> Hydra overrides, then `layerwise.runs.train.run(cfg)`.

    python main.py method=dgl model=vgg16 trainer.max_epochs=100
    python main.py -m method=bp,dgl seed=0,1,2
    python main.py --dgl --device cuda:0          (original thesis flags, translation printed)
"""
import sys

import hydra
from omegaconf import DictConfig

from layerwise.cli import register_help_resolvers, translate_argv
from layerwise import preflight
from layerwise.errors import ConfigError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_main(cfg: DictConfig):
    from layerwise.runs.train import run  # heavy imports (torch, lightning) only when a job runs

    return run(cfg)


if __name__ == "__main__":
    args = translate_argv(sys.argv[1:])
    try:
        args += preflight.prepare(args)  # resume= continues in the run's own dir
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.argv = [sys.argv[0], *args]
    register_help_resolvers()  # for --help (conf/hydra/help/layerwise.yaml)
    hydra_main()
