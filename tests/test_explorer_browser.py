"""The attention explorer page in a real headless browser (Debian's chromium driven by Playwright's Python API).

Load the page from disk (no network), choose a view, layer and head, hover a query token, and read the weights the
key tokens show (their ``data-weight``): they must equal that row of the attention pattern recomputed from the
captured queries and keys with :func:`tfjax.layers.attention.attention_pattern`. Skips, saying why, only where no
browser can be started (.ci/run installs chromium and playwright).
"""

import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_explain import tiny_gpt_subject, tiny_translator_subject
from tfjax.explain import attention as attention_lib
from tfjax.explain.capture import run_with_cache
from tfjax.layers import masks as masks_lib
from tfjax.layers.attention import attention_pattern

BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _chromium():
  for name in ("chromium", "chromium-browser", "google-chrome"):
    path = shutil.which(name)
    if path:
      return path
  return None


@pytest.fixture(scope="module")
def browser():
  try:
    from playwright.sync_api import sync_playwright
  except ImportError:
    pytest.skip("playwright is not installed (pip install playwright; .ci/run installs it)")
  exe = os.environ.get("TFJAX_CHROMIUM") or _chromium()
  if exe is None:
    pytest.skip("no chromium browser found (apt-get install chromium; .ci/run installs it when root)")
  with sync_playwright() as p:
    # chromium aborts at launch (SIGTRAP) under a preloaded mimalloc, launch.sh's allocator on machines without
    # jemalloc: it runs with its own malloc
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    b = p.chromium.launch(executable_path=exe, args=BROWSER_FLAGS, env=env)
    yield b
    b.close()


def _hover_weights(page, view: int, layer: int, head: int, query: int) -> np.ndarray:
  page.select_option("#view", str(view))
  page.select_option("#layer", str(layer))
  page.select_option("#head", str(head))
  page.hover(f"#queries .query[data-index='{query}']")
  assert page.get_attribute(f"#queries .query[data-index='{query}']", "class").split().count("active") == 1
  keys = page.query_selector_all("#keys .key")
  assert all(k.get_attribute("data-query") == str(query) for k in keys)
  return np.array([float(k.get_attribute("data-weight")) for k in keys])


def test_gpt_explorer_hover_shows_the_pattern_row(browser, tmp_path):
  subject = tiny_gpt_subject()
  result = attention_lib.run(subject, str(tmp_path), text="abc cab bad")
  page_path = tmp_path / "attention_explorer.html"
  html = page_path.read_text()
  assert "http://" not in html and "https://" not in html  # nothing to fetch: offline
  ids = subject.encode("abc cab bad")
  _, cache = run_with_cache(subject.model, {"params": subject.params}, jnp.asarray(ids[None]), names=["attn/q",
                                                                                                      "attn/k"])
  causal = masks_lib.causal_mask(len(ids))
  page = browser.new_page()
  errors = []
  page.on("pageerror", lambda e: errors.append(str(e)))
  page.goto(page_path.as_uri())
  for layer, head, query in ((0, 0, 0), (1, 1, 6), (1, 0, len(ids) - 1)):
    want = np.asarray(attention_pattern(cache["q", layer], cache["k", layer], causal))[0, head, query]
    got = _hover_weights(page, 0, layer, head, query)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[query + 1:].sum() == 0 and abs(got.sum() - 1) < 1e-5  # the causal half is empty
  # the treescope heatmaps rendered (custom elements defined, no script errors)
  assert page.evaluate("customElements.get('treescope-container') !== undefined")
  assert not errors, errors
  assert result["views"][0]["pattern"].shape == (2, 2, len(ids), len(ids))
  page.close()


def test_translator_explorer_shows_cross_attention(browser, tmp_path):
  subject = tiny_translator_subject()
  attention_lib.run(subject, str(tmp_path), text="a dog runs", target="ein hund")
  src = subject.encode("a dog runs", source=True)
  tgt = subject.encode("ein hund")
  pad = 3
  src_p = np.concatenate([src, np.zeros(pad, np.int32)])
  valid = np.arange(len(src_p)) < len(src)
  _, cache = run_with_cache(subject.model, {"params": subject.params}, jnp.asarray(src_p[None]),
                            jnp.asarray(valid[None]), jnp.asarray(tgt[None]), names=["cross_attn/q", "cross_attn/k"])
  page = browser.new_page()
  page.goto((tmp_path / "attention_explorer.html").as_uri())
  names = [o.text_content() for o in page.query_selector_all("#view option")]
  assert names[2].startswith("cross-attention")
  cross_mask = masks_lib.padding_mask(jnp.ones((1, len(tgt)), bool), jnp.asarray(valid[None]))
  for layer, head, query in ((0, 1, 0), (1, 0, len(tgt) - 1)):
    want = np.asarray(attention_pattern(cache["cross_attn/q", layer, "decoder"], cache["cross_attn/k", layer,
                                                                                        "decoder"],
                                        cross_mask))[0, head, query]
    got = _hover_weights(page, 2, layer, head, query)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.all(got[len(src):] == 0)  # source padding gets nothing
  # padding keys are struck through
  pads = page.query_selector_all("#keys .key.pad")
  assert len(pads) == pad
  page.close()
