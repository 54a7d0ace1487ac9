"""More than one process: DDP with one all-reduce per step point (distributed.py), and the stage processes of
pipelined local training (pipeline_stage.py; runs/pipeline.py starts them and writes the run's outputs)."""
