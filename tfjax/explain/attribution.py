"""``explain attribution``: which heads and MLPs write the next token (direct logit attribution).

The notes' picture of a transformer is additive: every attention head adds its weighted values to the residual
stream, every MLP adds its answer, and the next-token prediction is read off the last vector by the unembedding.
The stream after the last layer of a pre-LN model is exactly a sum of components ``[B, T, D]``:

    resid = tokens + positions + sum_{l, h} head_{l,h} + sum_l mlp_l + biases

(``head_{l,h} = z_{l,h} W_O[h]``: head ``h``'s output ``z [B, T, Dh]`` through its rows of the output projection; a
translator's decoder adds its cross-attention heads ``L{l} X{h}``; ``biases``: the output projections' biases). The
final norm divides the stream by its own scale ``σ`` (LayerNorm: after removing the mean over ``D``; RMSNorm: the
root mean square); holding that ``σ`` fixed at its value on the whole stream, as TransformerLens does, the final norm
and the unembedding are linear, so each component's **direct logit attribution** to a token ``y``,

    attr_c = ((c - mean_D c) / σ) · (g ⊙ u_y),     u_y = W_U[:, y] - mean_v W_U[:, v],

adds up over the components (plus the norm's bias and the unembedding's bias, counted in ``biases``) to exactly the
logit of ``y`` minus the mean logit over the vocabulary (the part of a logit the softmax sees). ``direct`` means what
a component writes straight into the unembedding; what it contributes through later layers (composition) is not
counted here (``explain heads`` measures a head's whole effect by ablation).

Pre-LN GPTs and translators' decoders only: in a post-LN stack each block's norm rescales everything written before
it, and BERT's MLM head is nonlinear (a dense layer, GELU and a norm before the unembedding), so neither is a sum.

:func:`logit_attribution` is the library's entry point; :func:`run` is ``./launch.sh explain attribution WORKDIR``:
on a text, every component's attribution to each actual next token (a components x positions heatmap), and at one
position the bars of the next token's logit and of its difference to the runner-up; over the validation text, each
head's and MLP's mean attribution to the correct next token (a layer x head heatmap), each MLP neuron's
(:func:`neuron_attribution`), and, with each head zeroed in turn, what every component stops writing
(:func:`head_sources`).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tfjax.explain import data as data_lib
from tfjax.explain import pictures
from tfjax.explain.capture import run_with_cache

HIGHEST = jax.lax.Precision.HIGHEST


@struct.dataclass
class Unembedding:
  """The map from the residual stream after the last layer to logits, with the final norm's scale held fixed.

  ``norm``: ``"layernorm"``, ``"rmsnorm"`` or ``"none"``; ``scale``/``bias`` ``[D]`` its parameters (``bias`` None
  when it has none); ``eps`` its epsilon; ``matrix [D, V]`` and ``logit_bias [V]`` the affine unembedding after it
  (the transposed token embedding when tied; plus a translator's ``logits_bias``)."""
  norm: str = struct.field(pytree_node=False)
  scale: jax.Array | None
  bias: jax.Array | None
  eps: float = struct.field(pytree_node=False)
  matrix: jax.Array
  logit_bias: jax.Array


STACK = "decoder"  # the stack whose last stream is unembedded: a GPT's, and a translator's decoder


def check_decomposable(model) -> None:
  """Raises ``ValueError`` unless ``model`` is a pre-LN GPT or encoder-decoder (see the module docstring)."""
  from tfjax.models.gpt import GPT
  from tfjax.models.transformer import EncoderDecoder
  if not isinstance(model, (GPT, EncoderDecoder)):
    raise ValueError(f"direct logit attribution reads a GPT or a translator's decoder; this is a "
                     f"{type(model).__name__} (BERT's MLM head is nonlinear: its logits are not a sum of components)")
  if not model.cfg.pre_ln:
    raise ValueError("direct logit attribution needs a pre-LN model (pre_ln=True): in a post-LN stack each block's "
                     "norm rescales everything written before it, so the last stream is not a sum of components")


def _affine_unembed(module, x):
  """The model's unembedding without its final norm (a method for ``model.apply``)."""
  from tfjax.models.transformer import EncoderDecoder
  logits = (module.embed.unembed(x) if module.cfg.tie_embeddings else module.unembed_matrix(x)).astype(jnp.float32)
  if isinstance(module, EncoderDecoder) and module.cfg.logits_bias:
    logits = logits + jnp.asarray(module.logits_bias, jnp.float32)
  return logits


def unembedding(model, params) -> Unembedding:
  """The final norm's parameters and the affine unembedding ``[D, V]`` of a GPT or a translator's decoder, read
  through the model's own modules (the unembedding applied to the identity matrix and to zero)."""
  from tfjax.models.gpt import GPT
  check_decomposable(model)
  cfg = model.cfg
  width = cfg.emb_dim
  basis = jnp.concatenate([jnp.eye(width, dtype=jnp.float32), jnp.zeros((1, width), jnp.float32)])
  logits = model.apply({"params": params}, basis.astype(cfg.dtype), method=_affine_unembed)
  logit_bias = logits[-1]
  matrix = logits[:-1] - logit_bias[None]
  if not isinstance(model, GPT) and not cfg.final_norm:
    return Unembedding("none", None, None, 0.0, matrix, logit_bias)
  norm_params = params["ln_final" if isinstance(model, GPT) else "ln_decoder"]
  scale = jnp.asarray(norm_params["scale"], jnp.float32) if "scale" in norm_params else None
  bias = jnp.asarray(norm_params["bias"], jnp.float32) if "bias" in norm_params else None
  return Unembedding(cfg.norm, scale, bias, cfg.norm_eps, matrix, logit_bias)


def component_names(model) -> list[str]:
  """The names of the residual-stream components, in the order of :func:`residual_components`: ``tokens`` and
  ``positions`` (``embed`` when the model adds no position vector, or normalises the sum), ``L{l} H{h}`` (head
  ``h`` of layer ``l``), ``L{l} X{h}`` (a decoder's cross-attention), ``L{l} MLP``, and ``biases``."""
  cfg = model.cfg
  names = ["tokens", "positions"] if _has_position_vectors(model) else ["embed"]
  cross = _has_cross_attention(model)
  for l in range(cfg.num_layers):
    names += [f"L{l} H{h}" for h in range(cfg.num_heads)]
    if cross:
      names += [f"L{l} X{h}" for h in range(cfg.num_heads)]
    names.append(f"L{l} MLP")
  return names + ["biases"]


def _has_cross_attention(model) -> bool:
  from tfjax.models.transformer import EncoderDecoder
  return isinstance(model, EncoderDecoder)


def _has_position_vectors(model) -> bool:
  cfg = model.cfg
  return cfg.positional in ("learned", "sinusoidal") and not getattr(cfg, "embed_norm", False)


def position_table(model, params) -> jax.Array | None:
  """``[max_len, D]``: what the (decoder's) embedding adds at each position
  (:func:`tfjax.explain.positions.position_table`), or None (RoPE, no positions, or a normalised embedding whose sum
  does not split). Traceable: ``params`` may be jit arguments."""
  if not _has_position_vectors(model):
    return None
  from tfjax.explain.positions import position_table as table
  return table(model, params, STACK)


def capture_names(model) -> list[str]:
  """What :func:`residual_components` reads from :func:`tfjax.explain.run_with_cache`."""
  stack, last = STACK, model.cfg.num_layers - 1
  names = [f"{stack}/block_0/resid_pre", f"{stack}/block_{last}/resid_post", f"{stack}/block_*/attn/z",
           f"{stack}/block_*/mlp_out"]
  if _has_cross_attention(model):
    names.append(f"{stack}/block_*/cross_attn/z")
  return names


def _heads(z_BxTxHxDh, out_params) -> tuple[jax.Array, jax.Array | None]:
  """Each head's write into the stream ``[H, B, T, D]`` (``z`` through its rows of ``out``), and ``out``'s bias."""
  z = z_BxTxHxDh.astype(jnp.float32)
  heads, head_dim = z.shape[2], z.shape[3]
  kernel = jnp.asarray(out_params["kernel"], jnp.float32).reshape(heads, head_dim, -1)
  bias = out_params.get("bias")
  return (jnp.einsum("bthe,hed->hbtd", z, kernel, precision=HIGHEST),
          None if bias is None else jnp.asarray(bias, jnp.float32))


def residual_components(model, params, cache, positions_TxD: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """``(components [C, B, T, D], resid [B, T, D])``: the components of :func:`component_names` (float32) of the
  stream after the last layer, and that stream as the model computed it (their sum, to rounding).

  ``cache`` holds :func:`capture_names`; ``positions_TxD``: :func:`position_table` (None: one ``embed`` component).
  """
  stack, cfg = STACK, model.cfg
  embed = cache[f"{stack}/block_0/resid_pre"].astype(jnp.float32)
  b, t, _ = embed.shape
  if _has_position_vectors(model):
    pos = jnp.broadcast_to(jnp.asarray(positions_TxD, jnp.float32)[None, :t], embed.shape)
    parts = [embed - pos, pos]
  else:
    parts = [embed]
  biases = jnp.zeros_like(embed)
  sublayers = ["attn", "cross_attn"] if _has_cross_attention(model) else ["attn"]
  for l in range(cfg.num_layers):
    block = params[stack][f"block_{l}"]
    for sub in sublayers:
      heads, bias = _heads(cache[f"{stack}/block_{l}/{sub}/z"], block[sub]["out"])
      parts.extend(list(heads))
      if bias is not None:
        biases = biases + bias
    parts.append(cache[f"{stack}/block_{l}/mlp_out"].astype(jnp.float32))
  parts.append(biases)
  resid = cache[f"{stack}/block_{cfg.num_layers - 1}/resid_post"].astype(jnp.float32)
  return jnp.stack(parts), resid


def token_directions(unembed: Unembedding, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(u [..., D], bias [...])`` of token ids ``tokens [...]``: each token's unembedding column and logit bias,
  minus their mean over the vocabulary (a logit relative to the mean logit: what the softmax sees). The difference
  of two tokens' directions is the direction of their logit difference."""
  matrix = unembed.matrix - jnp.mean(unembed.matrix, axis=1, keepdims=True)
  bias = unembed.logit_bias - jnp.mean(unembed.logit_bias)
  return matrix.T[tokens], bias[tokens]


def frozen_norm(unembed: Unembedding, resid: jax.Array) -> tuple[bool, jax.Array]:
  """``(centre, inv [B, T])``: whether the final norm removes the mean over ``D``, and ``1 / σ`` held at its value
  on ``resid [B, T, D]`` (LayerNorm: the standard deviation; RMSNorm: the root mean square; no norm: 1)."""
  if unembed.norm == "layernorm":
    return True, jax.lax.rsqrt(jnp.var(resid, axis=-1) + unembed.eps)
  if unembed.norm == "rmsnorm":
    return False, jax.lax.rsqrt(jnp.mean(resid * resid, axis=-1) + unembed.eps)
  return False, jnp.ones(resid.shape[:-1], jnp.float32)


def attribute(unembed: Unembedding, components: jax.Array, resid: jax.Array, direction: jax.Array,
              direction_bias: jax.Array) -> jax.Array:
  """Direct logit attribution ``[C, B, T]`` of ``components [C, B, T, D]`` to ``direction [B, T, D]`` (from
  :func:`token_directions`) with the final norm's scale held at its value on ``resid [B, T, D]``; the last component
  (``biases``) also takes the final norm's bias and ``direction_bias``, so the sum over ``C`` is the logit (or logit
  difference) the model computes."""
  g = direction if unembed.scale is None else direction * unembed.scale
  centre, inv = frozen_norm(unembed, resid)
  if centre:
    components = components - jnp.mean(components, axis=-1, keepdims=True)
  attr = jnp.einsum("cbtd,btd->cbt", components, g, precision=HIGHEST) * inv[None]
  constant = direction_bias
  if unembed.bias is not None:
    constant = constant + jnp.einsum("d,btd->bt", unembed.bias, direction, precision=HIGHEST)
  return attr.at[-1].add(constant)


def neuron_attribution(unembed: Unembedding, hidden_BxTxF: jax.Array, fc_out_params: dict, resid: jax.Array,
                       direction: jax.Array) -> jax.Array:
  """``[B, T, F]``: each MLP neuron's direct logit attribution to ``direction [B, T, D]``, its activation times
  its row of ``fc_out`` read through the held final norm. Over ``F``, plus ``fc_out``'s bias, it is the MLP's
  component in :func:`attribute` (tested)."""
  g = direction if unembed.scale is None else direction * unembed.scale
  kernel = jnp.asarray(fc_out_params["kernel"], jnp.float32)  # [F, D]
  centre, inv = frozen_norm(unembed, resid)
  if centre:
    kernel = kernel - jnp.mean(kernel, axis=-1, keepdims=True)
  read = jnp.einsum("fd,btd->btf", kernel, g, precision=HIGHEST)  # what a unit of each neuron adds to the logit
  return hidden_BxTxF.astype(jnp.float32) * read * inv[..., None]


def logit_attribution(model, variables: dict, *inputs, tokens, **kwargs) -> tuple[list[str], jax.Array]:
  """``(names, attribution [C, B, T])``: each residual-stream component's direct logit attribution to ``tokens [B,
  T]`` (ids; e.g. the next tokens) at every position, from one run of ``model`` (a pre-LN GPT or encoder-decoder) on
  ``inputs`` (a GPT: ``ids``; an encoder-decoder: ``src, src_valid, tgt``). ``attribution.sum(0)`` is each token's
  logit minus the mean logit at its position. Jit it with ``model`` static."""
  check_decomposable(model)
  params = variables["params"]
  _, cache = run_with_cache(model, variables, *inputs, names=capture_names(model), **kwargs)
  components, resid = residual_components(model, params, cache, position_table(model, params))
  unembed = unembedding(model, params)
  return component_names(model), attribute(unembed, components, resid, *token_directions(unembed, tokens))


# ------------------------------------------------------------------------------------------------------- command


def _variables(params, tree) -> dict:
  return {"params": params} if tree is None else {"params": params, "interventions": tree}


@functools.partial(jax.jit, static_argnames=("model", "kind"))
def _decompose(model, kind, params, batch, positions_TxD, tree=None):
  """``(components, resid, logits)`` of a batch (see :func:`residual_components`), with the interventions ``tree``
  (None: none) applied."""
  args, kwargs = data_lib.model_inputs(kind, batch)
  logits, cache = run_with_cache(model, _variables(params, tree), *args, names=capture_names(model), **kwargs)
  components, resid = residual_components(model, params, cache, positions_TxD)
  return components, resid, logits.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("model", "kind"))
def _target_sums(model, kind, params, batch, positions_TxD, unembed, weights, tree=None):
  """Each component's attribution to the correct next token, summed over the positions ``weights [B, T]`` counts,
  and their count; plus the summed centred logit of the targets (the sum of the attributions, as a check)."""
  components, resid, logits = _decompose(model, kind, params, batch, positions_TxD, tree)
  u, ub = token_directions(unembed, batch["targets"])
  attr = attribute(unembed, components, resid, u, ub)
  centred = jnp.take_along_axis(logits, batch["targets"][..., None], -1)[..., 0] - jnp.mean(logits, -1)
  return jnp.sum(attr * weights[None], axis=(1, 2)), jnp.sum(weights), jnp.sum(centred * weights)


@functools.partial(jax.jit, static_argnames=("model", "kind"))
def _neuron_sums(model, kind, params, batch, unembed, weights):
  """Each MLP neuron's attribution to the correct next token, summed over the positions ``weights`` counts:
  ``[L, F]``."""
  args, kwargs = data_lib.model_inputs(kind, batch)
  names = [f"{STACK}/block_{model.cfg.num_layers - 1}/resid_post", f"{STACK}/block_*/mlp/hidden"]
  _, cache = run_with_cache(model, {"params": params}, *args, names=names, **kwargs)
  resid = cache[names[0]].astype(jnp.float32)
  u, _ = token_directions(unembed, batch["targets"])
  sums = []
  for l in range(model.cfg.num_layers):
    fc_out = params[STACK][f"block_{l}"]["mlp"]["fc_out"]
    attr = neuron_attribution(unembed, cache[f"{STACK}/block_{l}/mlp/hidden"], fc_out, resid, u)
    sums.append(jnp.sum(attr * weights[..., None], axis=(0, 1)))
  return jnp.stack(sums)


def _grid(names: list[str], num_layers: int, values: np.ndarray) -> tuple[np.ndarray, list[str]]:
  """The per-layer components of ``values [C]`` as ``[L, heads (+ cross heads) + MLP]`` and the column labels."""
  index = {n: i for i, n in enumerate(names)}
  cols = [n.split(" ", 1)[1] for n in names if n.startswith("L0 ")]
  grid = np.array([[values[index[f"L{l} {c}"]] for c in cols] for l in range(num_layers)], np.float64)
  return grid, cols


def head_sources(model) -> list[tuple[str, dict]]:
  """``(label, interventions tree)`` zeroing each head of each attention of ``model`` in turn (a translator: its
  encoder's, decoder's and cross-attention heads), labelled as the components are (``L{l} H{h}``, ``L{l} X{h}``;
  the encoder's ``enc L{l} H{h}``). Every tree has the same leaves, so one compiled function serves them all."""
  from tfjax.explain.capture import model_stacks
  from tfjax.explain.heads import attentions
  from tfjax.explain.interventions import combine_interventions
  stacks = model_stacks(model)
  out = []
  for stack, sublayer in attentions(model):
    prefix = "enc " if stack == "encoder" else ""
    kind = "X" if sublayer == "cross_attn" else "H"
    for l in range(stacks[stack].num_layers):
      for h in range(stacks[stack].num_heads):
        tree = combine_interventions(*_all_attention_trees(model, stack, sublayer, l, h))
        out.append((f"{prefix}L{l} {kind}{h}", tree))
  return out


def _all_attention_trees(model, stack: str, sublayer: str, layer: int, head: int) -> list[dict]:
  """One zeroing tree per attention of ``model``, all masks False except head ``head`` of ``layer`` of
  ``stack/sublayer``: every source's tree then has the same leaves."""
  from tfjax.explain.capture import model_stacks
  from tfjax.explain.heads import attentions, head_masks_tree
  stacks = model_stacks(model)
  return [head_masks_tree(s, sub, stacks[s].num_layers, stacks[s].num_heads,
                          layer if (s, sub) == (stack, sublayer) else -1, head) for s, sub in attentions(model)]


def _validation(subject, unembed, positions, max_batches: int, budget: int = data_lib.OUTPUT_BYTES,
                sources: list[tuple[str, dict]] = ()) -> dict:
  """Each component's mean attribution to the correct next token over the validation batches (``mean [C]``), scored
  in chunks of rows whose components ``[C, rows, T, D]`` fit ``budget`` bytes; and for each of ``sources`` (a label
  and an interventions tree, e.g. :func:`head_sources`) the change of every component's mean when it is applied
  (``indirect [S, C]``; its row sum: the change of the correct token's centred logit); ``neurons [L, F]``: each MLP
  neuron's mean attribution (:func:`neuron_attribution`)."""
  model, params, kind = subject.model, subject.params, subject.kind
  names = component_names(model)
  batches = data_lib.eval_batches(subject, max_batches)
  chunks = []
  for batch in batches:
    t, width = batch["inputs"].shape[1], model.cfg.emb_dim
    for chunk in data_lib.row_chunks(batch, len(names) * t * width * 4, budget):
      chunks.append((jax.tree.map(jnp.asarray, chunk), jnp.asarray(data_lib.token_weights(kind, chunk))))

  def means(tree):
    total, count, centred = np.zeros(len(names)), 0.0, 0.0
    for chunk, weights in chunks:
      s, n, c = _target_sums(model, kind, params, chunk, positions, unembed, weights, tree)
      total += np.asarray(s, np.float64)
      count += float(n)
      centred += float(c)
    return total / max(count, 1.0), count, centred / max(count, 1.0)

  mean, count, centred = means(None)
  neurons = sum(np.asarray(_neuron_sums(model, kind, params, chunk, unembed, weights), np.float64)
                for chunk, weights in chunks) / max(count, 1.0)
  out = {"names": names, "mean": mean, "tokens": count, "batches": len(batches), "mean_centred_logit": centred,
         "neurons": neurons}
  if sources:
    out["sources"] = [label for label, _ in sources]
    out["indirect"] = np.stack([means(tree)[0] - mean for _, tree in sources])
  return out


def _text_view(subject, unembed, positions, text, target, position: int) -> dict:
  """Attributions on one text: to each actual next token, and at ``position`` to the next token and to its logit
  difference from the strongest other token."""
  model, params, kind = subject.model, subject.params, subject.kind
  if text is None:  # the default text (cut to the context window), also for a workdir (not its validation text)
    text = subject.default_text() if kind == "translator" else subject.tokenizer.decode(subject.text_ids(None))
  batch = jax.tree.map(jnp.asarray, data_lib.eval_batches(subject, 1, text, target)[0])
  components, resid, logits = _decompose(model, kind, params, batch, positions)
  targets = batch["targets"]
  attr = np.asarray(attribute(unembed, components, resid, *token_directions(unembed, targets)))[:, 0]  # [C, T]
  length = attr.shape[1]
  if not -length <= position < length:
    from tfjax.explain.subjects import SubjectError
    raise SubjectError(f"position {position} is outside the text's {length} predicted positions "
                       f"(0 .. {length - 1}, or -1 for the last)")
  p = position % length
  row = np.asarray(logits[0, p])
  y = int(targets[0, p])
  rival = int(np.argmax(np.where(np.arange(row.size) == y, -np.inf, row)))
  u_y, b_y = token_directions(unembed, targets[:, p:p + 1])
  u_r, b_r = token_directions(unembed, jnp.full_like(targets[:, p:p + 1], rival))
  at = lambda a: a[:, :, p:p + 1]  # noqa: E731
  diff = np.asarray(attribute(unembed, at(components), resid[:, p:p + 1], u_y - u_r, b_y - b_r))[:, 0, 0]
  centred = np.asarray(jnp.take_along_axis(logits, targets[..., None], -1)[..., 0] - jnp.mean(logits, -1))[0]
  inputs = np.asarray(batch["inputs"][0])
  return {"inputs": subject.labels(inputs), "targets": subject.labels(np.asarray(targets[0])), "attribution": attr,
          "centred_logit": centred, "position": p, "target": subject.token_label(y),
          "rival": subject.token_label(rival), "logit_difference": float(row[y] - row[rival]),
          "difference_attribution": diff}


def _top(names, values, k, sign=1.0) -> str:
  order = np.argsort(-sign * np.asarray(values))[:k]
  return ", ".join(f"{names[i]} {values[i]:+.2f}" for i in order)


def neurons_for_share(values_F: np.ndarray, share: float = 0.5) -> int | None:
  """How many of the neurons, strongest first, write ``share`` of the layer's total attribution ``values_F.sum()``
  (None when the total is not positive)."""
  total = float(np.sum(values_F))
  if total <= 0:
    return None
  cumulative = np.cumsum(np.sort(np.asarray(values_F, np.float64))[::-1])
  return int(np.searchsorted(cumulative, share * total) + 1)


def _neuron_view(val: dict, out_dir: str, top_k: int) -> list[str]:
  """Draws ``attribution_neurons.png`` (each layer's neurons, strongest first: the cumulative share of the layer's
  attribution) and returns a summary line per layer."""
  neurons = val["neurons"]
  curves, lines = {}, ["  MLP neurons (validation): who writes each layer's share"]
  width = neurons.shape[1]
  for l, row in enumerate(neurons):
    total = float(row.sum())
    order = np.argsort(-row)
    if total > 0:
      curves[f"layer {l} ({total:+.2f})"] = np.cumsum(row[order]) / total
    half = neurons_for_share(row)
    lines.append(f"    L{l} MLP {total:+.2f}: " + ("half from the strongest "
                                                    f"{half} of {width} neurons" if half else "no positive share")
                 + "; strongest " + ", ".join(f"#{i} {row[i]:+.3f}" for i in order[:max(1, top_k)]))
  if curves:
    ranks = (np.arange(width) + 1).tolist()
    pictures.curves(ranks, curves, os.path.join(out_dir, "attribution_neurons.png"), logx=True, markers=False,
                    xlabel="neurons, strongest first", ylabel="share of the layer's attribution",
                    title="each MLP's neurons, strongest first: their share of its write")
  return lines


def _indirect_view(val: dict, out_dir: str, top_k: int) -> list[str]:
  """Draws ``attribution_indirect.png`` (zeroed head x component: the change of each component's mean direct
  attribution, and their total) and returns the summary lines of the heads whose zeroing moves the logit most."""
  names, sources, delta = val["names"], val["sources"], val["indirect"]
  total = delta.sum(1)
  pictures.heatmap(np.concatenate([delta, total[:, None]], 1), os.path.join(out_dir, "attribution_indirect.png"),
                   row_labels=[f"zero {s}" for s in sources], col_labels=names + ["total"], center=True,
                   xlabel="component whose direct attribution changes", ylabel="head zeroed",
                   title="change of each component's mean direct attribution to the correct next token when one "
                         "head is zeroed")
  lines = ["  zeroing a head (validation): the correct token's logit changes by its own direct write and through "
           "what later components write:"]
  for i in np.argsort(total)[:max(1, min(top_k, 3))]:
    own = delta[i, names.index(sources[i])] if sources[i] in names else 0.0
    others = np.where(np.arange(len(names)) == (names.index(sources[i]) if sources[i] in names else -1), 0.0,
                      delta[i])
    lines.append(f"    {sources[i]}: {total[i]:+.2f} = own {own:+.2f}, through others {total[i] - own:+.2f} "
                 f"(most: {_top(names, others, 3, sign=-1.0)})")
  return lines


def run(subject, out_dir: str, *, text: str | None = None, target: str | None = None, position: int = -1,
        max_batches: int = 4, top_k: int = 5, indirect: bool = True) -> dict:
  """Writes ``attribution_text.png`` (components x positions: attribution to each actual next token),
  ``attribution_position.png`` (at ``position``: the next token's logit, and its difference to the runner-up, by
  component), ``attribution_heads.png`` (workdirs: each head's and MLP's mean attribution to the correct next
  token over the validation text), ``attribution_neurons.png`` (workdirs: how many MLP neurons write each layer's
  share), ``attribution_indirect.png`` (workdirs, ``indirect``: when each head is zeroed, the
  change of every component's mean attribution: the head's own direct write and what it does through the components
  that read it) and ``attribution.json``."""
  from tfjax.explain.subjects import SubjectError
  subject.require(("gpt", "translator"), "attribution")
  try:
    check_decomposable(subject.model)
  except ValueError as e:
    raise SubjectError(str(e)) from None
  os.makedirs(out_dir, exist_ok=True)
  model, params = subject.model, subject.params
  unembed = unembedding(model, params)
  positions = position_table(model, params)
  names = component_names(model)
  view = _text_view(subject, unembed, positions, text, target, position)
  attr = view["attribution"]
  cols = [f"{a}→{b}" for a, b in zip(view["inputs"], view["targets"])]
  pictures.heatmap(attr, os.path.join(out_dir, "attribution_text.png"), row_labels=names, col_labels=cols,
                   center=True, xlabel="input → actual next token",
                   title="direct logit attribution of each component to the next token (logit minus mean logit)")
  p = view["position"]
  order = np.argsort(-np.abs(view["difference_attribution"]))[:max(top_k, 1) * 3]
  pictures.bars(None, None, os.path.join(out_dir, "attribution_position.png"), ncols=2, panels={
      f"logit of {view['target']!r} after {view['inputs'][p]!r} (sum {view['centred_logit'][p]:+.2f})":
          ([names[i] for i in order], attr[order, p]),
      f"{view['target']!r} minus {view['rival']!r} (sum {view['logit_difference']:+.2f})":
          ([names[i] for i in order], view["difference_attribution"][order])})
  numbers = {"components": names, "text": view}
  lines = [f"attribution: the last stream as {len(names)} components; at position {p} ({view['inputs'][p]!r} → "
           f"{view['target']!r}, runner-up {view['rival']!r}, logit difference {view['logit_difference']:+.2f}):",
           f"  for: {_top(names, view['difference_attribution'], top_k)}",
           f"  against: {_top(names, view['difference_attribution'], min(top_k, 3), sign=-1.0)}"]
  if subject.config is not None:
    val = _validation(subject, unembed, positions, max_batches, sources=head_sources(model) if indirect else ())
    numbers["validation"] = val
    grid, grid_cols = _grid(names, model.cfg.num_layers, val["mean"])
    pictures.heatmap(grid, os.path.join(out_dir, "attribution_heads.png"),
                     row_labels=[f"layer {l}" for l in range(grid.shape[0])], col_labels=grid_cols, center=True,
                     annotate=True, fmt="{:+.2f}",
                     title=f"mean direct attribution to the correct next token ({int(val['tokens'])} validation "
                           f"tokens; total {val['mean_centred_logit']:+.2f})")
    rest = [n for n in names if not n.startswith("L")]
    lines.append(f"  validation ({int(val['tokens'])} tokens): mean centred logit of the correct next token "
                 f"{val['mean_centred_logit']:+.2f} = " + ", ".join(
                     f"{n} {val['mean'][names.index(n)]:+.2f}" for n in rest) + " + layers:")
    lines.append(f"    strongest: {_top(names, val['mean'], top_k)}")
    lines += _neuron_view(val, out_dir, top_k)
    if indirect:
      lines += _indirect_view(val, out_dir, top_k)
  pictures.write_json(os.path.join(out_dir, "attribution.json"), numbers)
  return {"summary": "\n".join(lines), **numbers}
