"""A linear layer ``x [..., D_in] -> [..., D_out]`` computed as one 2-D matmul over the flattened leading axes.

Semantically ``flax.linen.Dense``, with the same parameter names (``kernel [D_in, D_out]``, ``bias [D_out]``) and
logical axes for sharding. The input is reshaped to ``[N, D_in]`` before the matmul: on XLA:CPU a dot with batch
axes makes the weight-gradient matmul transpose a large activation in a slow fused loop (measured 3x slower for
an MLP block in fwd+bwd); the 2-D form avoids it and is neutral on GPUs/TPUs.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any
# jax.lax.Precision, its name ("default" | "high" | "highest"), or None: how float32 matmuls run on GPUs and TPUs
Precision = Any


class Dense(nn.Module):
  """``y = x @ kernel + bias`` over the last axis of ``x``."""
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  stddev: float = 0.02
  axes: Sequence[str | None] = ("embed", "mlp")
  out_dtype: Dtype | None = None  # e.g. float32 logits from bfloat16 inputs (accumulated in that dtype)
  precision: Precision = None  # the matmul's precision: None/"default" (TF32 on GPUs, bf16 passes on TPUs) | "highest"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(self.stddev), tuple(self.axes)),
                        (x.shape[-1], self.features), self.param_dtype)
    lead = x.shape[:-1]
    y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(self.dtype), jnp.asarray(kernel, self.dtype),
                preferred_element_type=self.out_dtype, precision=self.precision)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.axes[-1],)),
                        (self.features,), self.param_dtype)
      y = y + jnp.asarray(bias, y.dtype)
    return y.reshape(*lead, self.features)
