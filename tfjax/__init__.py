"""tfjax: a functional JAX/Flax research codebase for transformers.

The names below are the library's stable surface; each is imported on first use (PEP 562), so ``import tfjax`` is
cheap and imports no JAX::

    import tfjax
    model = tfjax.GPT(tfjax.gpt_config(vocab_size=65))    # the model ./launch.sh train builds by default
    tfjax.train_and_evaluate(config, workdir, task)        # any object with the tfjax.Task methods
    logits, cache = tfjax.run_with_cache(model, {"params": params}, ids, names="*/resid_post")

Subpackages: :mod:`tfjax.layers` (attention, blocks, embeddings, MLP, masks), :mod:`tfjax.models` (GPT, BERT,
encoder-decoder, word2vec), :mod:`tfjax.data`, :mod:`tfjax.tasks` (the Task protocol and registry), :mod:`tfjax.train`
(the loop, steps, checkpoints, parallelism), :mod:`tfjax.explain` (capture, interventions, logit lens),
:mod:`tfjax.hf` (Hugging Face import/export), :mod:`tfjax.generate` (sampling, translation). See docs/library.md.
"""

from tfjax._lazy import lazy_exports

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), {
    # models and their configuration
    "TransformerConfig": "tfjax.models.config:TransformerConfig",
    "GPT": "tfjax.models.gpt:GPT",
    "gpt_config": "tfjax.models.gpt:gpt_config",
    "BERT": "tfjax.models.bert:BERT",
    "bert_config": "tfjax.models.bert:bert_config",
    "EncoderDecoder": "tfjax.models.transformer:EncoderDecoder",
    # training
    "Task": "tfjax.tasks.base:Task",
    "make_task": "tfjax.tasks:make_task",
    "train_and_evaluate": "tfjax.train.loop:train_and_evaluate",
    "load_params": "tfjax.train.restore:load_params",
    # seeing inside
    "run_with_cache": "tfjax.explain.capture:run_with_cache",
    "ActivationCache": "tfjax.explain.capture:ActivationCache",
    "ablate_heads": "tfjax.explain.interventions:ablate_heads",
    "ablate_neurons": "tfjax.explain.interventions:ablate_neurons",
    "patch": "tfjax.explain.interventions:patch",
    "run_with_interventions": "tfjax.explain.interventions:run_with_interventions",
    "logit_lens": "tfjax.explain.lens:logit_lens",
    # subpackages and modules
    "config": "tfjax.config",
    "data": "tfjax.data",
    "explain": "tfjax.explain",
    "generate": "tfjax.generate",
    "hf": "tfjax.hf",
    "layers": "tfjax.layers",
    "models": "tfjax.models",
    "tasks": "tfjax.tasks",
    "train": "tfjax.train",
})
