"""A linear layer ``x [..., D_in] -> [..., D_out]`` computed as one 2-D matmul over the flattened leading axes.

Semantically ``flax.linen.Dense``, with the same parameter names (``kernel [D_in, D_out]``, ``bias [D_out]``) and
logical axes for sharding. The input is reshaped to ``[N, D_in]`` before the matmul: on XLA:CPU a dot with batch
axes makes the weight-gradient matmul transpose a large activation in a slow fused loop (measured 3x slower for
an MLP block in fwd+bwd); the 2-D form avoids it and is neutral on GPUs/TPUs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

Dtype = Any
# jax.lax.Precision, its name ("default" | "high" | "highest"), or None: how float32 matmuls run on GPUs and TPUs
Precision = Any
Initializer = Callable[..., jnp.ndarray]  # (key, shape, dtype) -> array, as jax.nn.initializers
# how attention and MLP layers initialise their Dense kernels and biases: "normal" (GPT-2/BERT: N(0, 0.02), zero
# biases) | "fairseq" (fairseq's transformer: xavier-uniform attention, PyTorch's default nn.Linear init in the MLP)
DENSE_INITS = ("normal", "fairseq")


def uniform_init(bound: float) -> Initializer:
  """``U(-bound, bound)``."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def xavier_init(fan_in: int, fan_out: int, gain: float = 1.0) -> Initializer:
  """Glorot's (xavier) uniform init of a ``[fan_in, fan_out]`` projection, ``U(±gain·sqrt(6 / (fan_in + fan_out)))``,
  as PyTorch's ``xavier_uniform_``. Given explicitly rather than read from the kernel's shape, so that a fused kernel
  holding several projections side by side (``qkv``) initialises each as its own."""
  return uniform_init(gain * (6.0 / (fan_in + fan_out)) ** 0.5)


def torch_linear_init(fan_in: int) -> Initializer:
  """PyTorch's default ``nn.Linear`` init, of the kernel and of the bias alike: ``U(±1/sqrt(fan_in))``
  (``kaiming_uniform_`` with ``a=sqrt(5)``)."""
  return uniform_init(fan_in ** -0.5)


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
  kernel_init: Initializer | None = None  # None: N(0, stddev)
  bias_init: Initializer | None = None  # None: zeros

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kernel_init = self.kernel_init or nn.initializers.normal(self.stddev)
    kernel = self.param("kernel", nn.with_logical_partitioning(kernel_init, tuple(self.axes)),
                        (x.shape[-1], self.features), self.param_dtype)
    lead = x.shape[:-1]
    y = dot_out(x.reshape(-1, x.shape[-1]).astype(self.dtype), jnp.asarray(kernel, self.dtype), self.out_dtype,
                self.precision)
    if self.use_bias:
      bias_init = self.bias_init or nn.initializers.zeros
      bias = self.param("bias", nn.with_logical_partitioning(bias_init, (self.axes[-1],)), (self.features,),
                        self.param_dtype)
      y = y + jnp.asarray(bias, y.dtype)
    return y.reshape(*lead, self.features)
