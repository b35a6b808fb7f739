"""The MLP block: ``x [B, T, D] -> [B, T, D]``, applied to every position independently.

``fc_out(activation(fc_in(x)))`` with hidden width ``F`` (usually ``4·D``), or SwiGLU
``fc_out(silu(fc_gate(x)) * fc_in(x))``. Each row of ``fc_in`` asks a question of the token; the answers, through the
nonlinearity, are mapped back to the width by ``fc_out`` and added to the residual stream.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from tfjax.layers import hooks
from tfjax.layers.dropout import Dropout
from tfjax.layers.linear import DENSE_INITS, Dense, Precision, torch_linear_init

Dtype = Any

ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),   # exact erf GELU (BERT, nanoGPT's nn.GELU)
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # GPT-2's "gelu_new"
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swiglu": jax.nn.silu,  # the gate's activation
}


def get_activation(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


class MLP(nn.Module):
  """``[B, T, D] -> [B, T, D]``: ``fc_in [D, F]``, activation (or SwiGLU gate ``fc_gate [D, F]``), ``fc_out [F, D]``.

  Observation point (:func:`tfjax.layers.hooks.hook`): ``hidden [B, T, F]``, the activations after the nonlinearity.
  """
  hidden_dim: int
  activation: str = "gelu"
  use_bias: bool = True
  dropout_rate: float = 0.0
  out_stddev: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Precision = None
  # "normal": kernels N(0, 0.02) (``fc_out``: N(0, out_stddev)), biases 0; "fairseq": PyTorch's default nn.Linear
  # init of kernels and biases, U(±1/sqrt(fan_in)), as fairseq's transformer layers leave their fc1/fc2
  dense_init: str = "normal"

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    act = get_activation(self.activation)
    if self.dense_init not in DENSE_INITS:
      raise ValueError(f"dense_init must be one of {DENSE_INITS}, got {self.dense_init!r}")

    def dense(features, name, axes, stddev=0.02):
      inits = {}
      if self.dense_init == "fairseq":
        fan_in = x.shape[-1] if name != "fc_out" else self.hidden_dim
        inits = {"kernel_init": torch_linear_init(fan_in), "bias_init": torch_linear_init(fan_in)}
      return Dense(features, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype, stddev=stddev,
                   axes=axes, precision=self.precision, name=name, **inits)

    h = dense(self.hidden_dim, "fc_in", ("embed", "mlp"))(x)
    if self.activation == "swiglu":
      h = act(dense(self.hidden_dim, "fc_gate", ("embed", "mlp"))(x)) * h
    else:
      h = act(h)
    h = hooks.hook(self, "hidden", h)  # [B, T, F]: the answers to the bank of questions
    out = dense(x.shape[-1], "fc_out", ("mlp", "embed"), self.out_stddev)(h)
    return Dropout(self.dropout_rate)(out, deterministic=deterministic)
