"""Data: tokenizers, data files (look-up, download with checksum) and corpora (imported on first use).

- :class:`CharTokenizer` (characters), :class:`Tokenizer` (WordPiece / BPE, Hugging Face ``tokenizers``).
- :func:`find_data_file`, :func:`cache_dir`: where data files are found (``$TFJAX_DATA_DIR``, the user cache).
"""

from tfjax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), {
    "CharTokenizer": "tfjax.data.tokenizers:CharTokenizer",
    "Tokenizer": "tfjax.data.tokenizers:Tokenizer",
    "find_data_file": "tfjax.data.files:find_data_file",
    "cache_dir": "tfjax.data.files:cache_dir",
    "DataFileError": "tfjax.data.files:DataFileError",
})
