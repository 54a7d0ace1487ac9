"""The training loop: `LayerwiseModule` (Lightning, manual optimization) runs the batch loop of batch.py, which
never names a rule; the non-finite guard, optimizers and schedulers, precision and torch.compile, the activation
meter, the checkpoint format and its run state, preemption, and `build_experiment` (what the trainer and the
pipeline both build from a config)."""
