"""From word2vec's average to attention (``./launch.sh explain cbow_to_attention``): the four context models
trained on the same corpus, seed, batches, optimizer and budget. The config lives in the library, because the
explain command trains the ladder from it: see :mod:`tfjax.explain.cbow_to_attention_config`.
"""

from tfjax.explain.cbow_to_attention_config import get_config  # noqa: F401  (the library's: the explain command's)
