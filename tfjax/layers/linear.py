"""A linear layer ``x [..., D_in] -> [..., D_out]`` computed as one 2-D matmul over the flattened leading axes.

Semantically ``flax.linen.Dense``, with the same parameter names (``kernel [D_in, D_out]``, ``bias [D_out]``) and
logical axes for sharding. The input is reshaped to ``[N, D_in]`` before the matmul: on XLA:CPU a dot with batch
axes makes the weight-gradient matmul transpose a large activation in a slow fused loop (measured 3x slower for
an MLP block in fwd+bwd); the 2-D form avoids it and is neutral on GPUs/TPUs.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

Dtype = Any
# jax.lax.Precision, its name ("default" | "high" | "highest"), or None: how float32 matmuls run on GPUs and TPUs
Precision = Any


def dot_out(x: jnp.ndarray, w: jnp.ndarray, out_dtype: Dtype | None = None, precision: Precision = None) -> jnp.ndarray:
  """``x [N, K] @ w [K, M]`` computed from the inputs' dtype, accumulated and returned in ``out_dtype`` (e.g. float32
  logits from bfloat16 activations: never rounded to bfloat16).

  The backward pass rounds the cotangent to the inputs' dtype before its two matmuls, so they run as fast as the
  forward one (bfloat16 tensor cores). Left to JAX, a float32 cotangent against bfloat16 operands makes both of them
  float32 matmuls: GPT-2 small's unembedding backward then took 14 of a 42 ms micro-step on an H100. PyTorch's
  autocast does the same rounding (a bfloat16 matmul's output cotangent is bfloat16). Forward-mode differentiation
  (``jax.jvp``) works too, its tangent rounded the same way. With ``out_dtype`` unset or equal to the inputs' dtype
  this is ``jnp.dot``.
  """
  if out_dtype is None or jnp.dtype(out_dtype) == x.dtype or x.dtype != w.dtype:
    return jnp.dot(x, w, preferred_element_type=out_dtype, precision=precision)
  return _dot_rounded_cotangent(x, w, jnp.dtype(out_dtype), precision)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _dot_rounded_cotangent(x, w, out_dtype, precision):
  return jnp.dot(x, w, preferred_element_type=out_dtype, precision=precision)


def _dot_rounded_cotangent_jvp(out_dtype, precision, primals, tangents):
  # the tangent is computed in the inputs' dtype, then widened: its transpose (the backward pass) narrows the
  # cotangent first, so both backward matmuls take operands of the inputs' dtype. (A JVP rule rather than a VJP
  # rule, so forward-mode differentiation works too; a symbolic-zero tangent, e.g. of input data, costs no matmul.)
  x, w = primals
  dx, dw = tangents
  out = _dot_rounded_cotangent(x, w, out_dtype, precision)
  tangent = None if isinstance(dx, SymbolicZero) else jnp.dot(dx, w, precision=precision)
  if not isinstance(dw, SymbolicZero):
    from_w = jnp.dot(x, dw, precision=precision)
    tangent = from_w if tangent is None else tangent + from_w
  return out, jnp.zeros_like(out) if tangent is None else tangent.astype(out_dtype)


_dot_rounded_cotangent.defjvp(_dot_rounded_cotangent_jvp, symbolic_zeros=True)


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
    y = dot_out(x.reshape(-1, x.shape[-1]).astype(self.dtype), jnp.asarray(kernel, self.dtype), self.out_dtype,
                self.precision)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.axes[-1],)),
                        (self.features,), self.param_dtype)
      y = y + jnp.asarray(bias, y.dtype)
    return y.reshape(*lead, self.features)
