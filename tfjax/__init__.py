"""tfjax: a functional JAX/Flax research codebase for transformers."""
__version__ = "0.1.0"
