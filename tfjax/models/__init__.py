"""The models; each composes :mod:`tfjax.layers` and none imports another (imported on first use).

- :class:`GPT` ``ids [B, T] -> logits [B, T, V]`` (causal; :func:`gpt_config`: the shipped defaults).
- :class:`BERT` ``input_ids [B, T] -> logits [B, T, V]`` (bidirectional, MLM head; :func:`bert_config`).
- :class:`EncoderDecoder` ``(src [B, S], tgt [B, T]) -> logits [B, T, V]`` (translation).
- word2vec: :class:`SkipGram`, :class:`CBOW` (:class:`Word2VecConfig`); the CBOW-to-attention ladder's
  :class:`CentreWordModel` (:class:`ContextModelConfig`).
"""

from tfjax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), {
    "TransformerConfig": "tfjax.models.config:TransformerConfig",
    "GPT": "tfjax.models.gpt:GPT",
    "gpt_config": "tfjax.models.gpt:gpt_config",
    "BERT": "tfjax.models.bert:BERT",
    "bert_config": "tfjax.models.bert:bert_config",
    "EncoderDecoder": "tfjax.models.transformer:EncoderDecoder",
    "SkipGram": "tfjax.models.word2vec:SkipGram",
    "CBOW": "tfjax.models.word2vec:CBOW",
    "Word2VecConfig": "tfjax.models.word2vec:Word2VecConfig",
    "CentreWordModel": "tfjax.models.context_models:CentreWordModel",
    "ContextModelConfig": "tfjax.models.context_models:ContextModelConfig",
})
