"""Training: the loop every family shares, its steps, checkpoints and parallelism (imported on first use).

- :func:`train_and_evaluate` ``(config, workdir, task) -> results`` (:mod:`tfjax.train.loop`).
- :func:`make_train_step` / :func:`make_eval_step` and :class:`TrainState` (:mod:`tfjax.train.step`);
  :func:`make_optimizer` (:mod:`tfjax.train.optimizer`).
- :func:`load_params` / :func:`load_config`: a trained workdir's parameters and config for inference
  (:mod:`tfjax.train.restore`).
"""

from tfjax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), {
    "train_and_evaluate": "tfjax.train.loop:train_and_evaluate",
    "evaluate": "tfjax.train.loop:evaluate",
    "NonFiniteLossError": "tfjax.train.logger:NonFiniteLossError",
    "MetricsLogger": "tfjax.train.logger:MetricsLogger",
    "TrainState": "tfjax.train.step:TrainState",
    "make_train_step": "tfjax.train.step:make_train_step",
    "make_eval_step": "tfjax.train.step:make_eval_step",
    "make_optimizer": "tfjax.train.optimizer:make_optimizer",
    "load_params": "tfjax.train.restore:load_params",
    "load_config": "tfjax.train.restore:load_config",
    "CheckpointError": "tfjax.train.checkpoint:CheckpointError",
})
