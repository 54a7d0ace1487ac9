"""More than one process: DDP with one all-reduce per step point (distributed.py), and the stage processes of
pipelined local training (pipeline_stage.py; runs/pipeline.py starts them and writes the run's outputs)."""

#: trainer.strategy values and the process start method each means (Lightning's names); here, torch-free, for the
#: config check (distributed.py builds the strategy).
START_METHODS = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}
