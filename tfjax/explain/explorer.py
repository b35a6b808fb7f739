"""The attention explorer: one self-contained HTML page (no network, no CDN) to look at attention patterns by hand.

Choose the attention (GPT/BERT self-attention; for the translator, encoder self-, decoder self- and cross-attention),
the layer and the head; hover a query token and the key tokens light up with the weight it gives each (the row of the
attention pattern), the number shown on each key. Padding keys are struck through and get no weight.

Two renderers share the page:

* the hover view is a few lines of hand-written JavaScript over the pattern embedded as JSON: treescope (the JAX
  ecosystem's array renderer) draws arrays as heatmaps with per-cell tooltips, sliders and axis labels, but has no
  "hover a token, colour the other tokens by one row" interaction, which is the point of this view;
* below it, every view's full pattern ``[layer, head, query, key]`` is drawn by ``treescope.render_array`` (layer
  and head sliders, token labels on both axes, masked entries shown as masked), rendered uncompressed so that any
  browser shows it without network access.

Each key token carries its weight in a ``data-weight`` attribute (the exact float32 value written with 7
significant digits), which is what ``tests/test_explorer_browser.py`` reads back.
"""

from __future__ import annotations

import dataclasses
import html
import json
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class AttentionView:
  """One attention of the page.

  Attributes:
    name: e.g. ``"self-attention"``, ``"cross-attention"``.
    pattern: ``[L, H, T, S]`` attention patterns (rows sum to 1 over the visible keys, 0 elsewhere).
    query_labels: ``T`` token labels of the queries; key_labels: ``S`` labels of the keys.
    valid: ``[T, S]`` bool, True where a query may attend to a key (the causal triangle, padding).
    query_valid, key_valid: ``[T]`` / ``[S]`` bool, False for padding tokens.
  """
  name: str
  pattern: np.ndarray
  query_labels: Sequence[str]
  key_labels: Sequence[str]
  valid: np.ndarray
  query_valid: np.ndarray
  key_valid: np.ndarray

  def __post_init__(self):
    l, h, t, s = np.shape(self.pattern)
    if (len(self.query_labels), len(self.key_labels)) != (t, s):
      raise ValueError(f"view {self.name!r}: pattern [L, H, T, S] = {np.shape(self.pattern)} but "
                       f"{len(self.query_labels)} query and {len(self.key_labels)} key labels")
    if np.shape(self.valid) != (t, s):
      raise ValueError(f"view {self.name!r}: valid must be [T, S] = {(t, s)}, got {np.shape(self.valid)}")


def _treescope_html(view: AttentionView) -> str:
  import treescope
  pattern = np.asarray(view.pattern, np.float32)
  figure = treescope.render_array(
      pattern, sliders=[0, 1], rows=[2], columns=[3], vmin=0.0, vmax=1.0, trim_outliers=False,
      valid_mask=np.broadcast_to(np.asarray(view.valid, bool), pattern.shape),
      axis_labels={0: "layer", 1: "head", 2: "query", 3: "key"},
      axis_item_labels={2: [f"{i}:{t}" for i, t in enumerate(view.query_labels)],
                        3: [f"{i}:{t}" for i, t in enumerate(view.key_labels)]},
      pixels_per_cell=max(4, min(14, 360 // max(pattern.shape[2:]))))
  return treescope.render_to_html(figure, compressed=False)


_STYLE = """
body { font-family: sans-serif; margin: 1.2em; color: #222; }
.controls label { margin-right: 1em; }
.row { margin: 0.6em 0; line-height: 2.4em; }
.row .what { display: inline-block; width: 6em; color: #666; font-size: 0.85em; }
.tok { display: inline-block; position: relative; padding: 0 3px; margin: 1px; border: 1px solid #ddd;
       border-radius: 3px; font-family: monospace; white-space: pre; cursor: default; line-height: 1.5em; }
.tok.pad { color: #aaa; text-decoration: line-through; }
.query.active { outline: 2px solid #d62728; }
.tok .w { position: absolute; left: 0; right: 0; top: 1.55em; font-size: 0.6em; color: #555; text-align: center; }
.help { color: #666; font-size: 0.85em; }
h2 { font-size: 1.05em; margin-top: 2em; }
"""

_SCRIPT = """
(function () {
  const data = JSON.parse(document.getElementById('explorer-data').textContent);
  const viewSel = document.getElementById('view'), layerSel = document.getElementById('layer'),
        headSel = document.getElementById('head');
  const queriesDiv = document.getElementById('queries'), keysDiv = document.getElementById('keys');
  let active = null;
  function view() { return data.views[+viewSel.value]; }
  function options(sel, n, prefix) {
    const keep = Math.min(+sel.value || 0, n - 1);
    sel.innerHTML = '';
    for (let i = 0; i < n; i++) { const o = document.createElement('option'); o.value = i; o.textContent = prefix + i;
                                  sel.appendChild(o); }
    sel.value = keep;
  }
  function token(label, i, cls, valid) {
    const s = document.createElement('span');
    s.className = 'tok ' + cls + (valid ? '' : ' pad');
    s.dataset.index = i; s.textContent = label;
    return s;
  }
  function build() {
    const v = view();
    options(layerSel, v.pattern.length, 'layer '); options(headSel, v.pattern[0].length, 'head ');
    queriesDiv.innerHTML = ''; keysDiv.innerHTML = '';
    v.query_labels.forEach((t, i) => {
      const s = token(t, i, 'query', v.query_valid[i]);
      s.addEventListener('mouseenter', () => show(i));
      queriesDiv.appendChild(s);
    });
    v.key_labels.forEach((t, j) => {
      const s = token(t, j, 'key', v.key_valid[j]);
      const w = document.createElement('span'); w.className = 'w'; s.appendChild(w);
      keysDiv.appendChild(s);
    });
    show(active === null ? 0 : Math.min(active, v.query_labels.length - 1));
  }
  function show(i) {
    active = i;
    const v = view(), row = v.pattern[+layerSel.value][+headSel.value][i];
    queriesDiv.querySelectorAll('.query').forEach(q => q.classList.toggle('active', +q.dataset.index === i));
    document.getElementById('status').textContent =
        v.name + ', layer ' + layerSel.value + ', head ' + headSel.value + ': query ' + i + ' ' +
        JSON.stringify(v.query_labels[i]) + ' attends to';
    keysDiv.querySelectorAll('.key').forEach((k, j) => {
      const w = row[j];
      k.dataset.weight = String(w);
      k.dataset.query = String(i);
      k.style.background = 'rgba(31, 119, 180, ' + Math.min(1, w).toFixed(4) + ')';
      k.style.color = w > 0.55 ? 'white' : '';
      k.querySelector('.w').textContent = w >= 0.005 ? w.toFixed(2) : '';
      k.title = 'weight ' + w;
    });
  }
  viewSel.addEventListener('change', () => { active = 0; build(); });
  layerSel.addEventListener('change', () => show(active));
  headSel.addEventListener('change', () => show(active));
  build();
})();
"""


def _rounded(pattern: np.ndarray) -> list:
  """The pattern as nested lists of floats with 7 significant digits (the JSON stays small and exact to ~1e-7)."""
  return np.vectorize(lambda x: float(f"{x:.7g}"), otypes=[float])(np.asarray(pattern, np.float32)).tolist()


def explorer_html(views: Sequence[AttentionView], *, title: str, subtitle: str = "", treescope: bool = True) -> str:
  """The whole page (a string) for ``views``. See the module docstring."""
  if not views:
    raise ValueError("the explorer needs at least one attention view")
  data = {"views": [{"name": v.name, "pattern": _rounded(v.pattern), "query_labels": list(v.query_labels),
                     "key_labels": list(v.key_labels), "query_valid": [bool(x) for x in v.query_valid],
                     "key_valid": [bool(x) for x in v.key_valid]} for v in views]}
  payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
  view_options = "".join(f'<option value="{i}">{html.escape(v.name)}</option>' for i, v in enumerate(views))
  parts = [
      "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
      f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
      f'<p class="help">{html.escape(subtitle)} Hover a query token: each key token is coloured by the weight the '
      "query gives it (one row of the attention pattern, summing to 1 over the visible keys). Struck-through tokens are "
      "padding.</p>",
      '<div class="controls">', f'<label>attention <select id="view">{view_options}</select></label>',
      '<label><select id="layer"></select></label><label><select id="head"></select></label></div>',
      '<p id="status"></p>',
      '<div class="row"><span class="what">queries</span><span id="queries"></span></div>',
      '<div class="row"><span class="what">keys</span><span id="keys"></span></div>',
      f'<script type="application/json" id="explorer-data">{payload}</script>', f"<script>{_SCRIPT}</script>",
  ]
  if treescope:
    for v in views:
      parts.append(f"<h2>{html.escape(v.name)}: every layer and head (treescope; move the sliders, hover a cell)</h2>")
      parts.append(f'<div class="treescope">{_treescope_html(v)}</div>')
  parts.append("</body></html>")
  return "\n".join(parts)


def write_explorer(path: str, views: Sequence[AttentionView], *, title: str, subtitle: str = "",
                   treescope: bool = True) -> str:
  """Writes :func:`explorer_html` to ``path``; returns the path."""
  with open(path, "w", encoding="utf-8") as f:
    f.write(explorer_html(views, title=title, subtitle=subtitle, treescope=treescope))
  return str(path)
