"""From word2vec's average to attention (``./launch.sh explain cbow_to_attention``): the four context models of
tfjax.models.context_models trained on the same corpus, seed, batches, optimizer and budget, differing only in
``model.context`` (and, for rung 4, ``model.num_heads``).

Corpus: WikiText-2 (valid + test) and the Lee background corpus (~0.5M words; word2vec's tokenisation), one line in
20 held out. No frequent-word subsampling and a fixed window, so that position ``c`` of the window is the same
neighbour for every centre (rung 2 learns a weight per position) and the held-out loss is the plain centre-word
cross-entropy of running text. Every rung is trained with the same full softmax over the vocabulary and Adam.
"""

from tfjax.explain.cbow_to_attention_config import get_config  # noqa: F401  (the library's: the explain command's)
