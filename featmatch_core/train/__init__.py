"""Training: a generic trainer for models with ``forward(batch)`` and ``loss(pred, batch)``.

    python -m featmatch_core.train EXPERIMENT --conf training/<recipe>.yaml [key=value ...]
        [--restore] [--distributed] [--run_benchmarks]

- :mod:`.trainer`: config defaults (``TRAIN_DEFAULTS``), :class:`~.trainer.Trainer`, ``train()``;
- :mod:`.registry`: model and dataset names -> "module:callable" (the interface contract);
- :mod:`.checkpoints`: atomic checkpoints, RNG states, experiment files;
- :mod:`.distributed`: DDP process group (gloo on CPU, nccl on CUDA), spawning, samplers;
- :mod:`.schedule`: learning-rate schedules (the LightGlue paper's exponential decay);
- :mod:`.toy`: a tiny model and dataset following the interface (tests, examples).

Nothing is imported here so that ``import featmatch_core.train`` stays light.
"""
