"""One experiment from a composed config: `train.run(cfg)` claims the run directory, trains (or resumes), and
writes summary.json, metrics.csv, run.log and the checkpoints; the loggers (csv, wandb) and the progress line.
Only the entry points import this package."""
