"""layerwise entry point: legacy flags -> Hydra overrides, then `layerwise.runs.train.run(cfg)`.

    python main.py method=dgl model=vgg16 trainer.max_epochs=100
    python main.py -m method=bp,dgl seed=0,1,2
    python main.py --dgl --device cuda:0          (original thesis flags, translation printed)

The same as the `layerwise` command and `python -m layerwise` (layerwise/__main__.py), kept for the habit.
"""
from layerwise.__main__ import main

if __name__ == "__main__":
    main()
