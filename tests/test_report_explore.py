"""The report's interactive views: data, escaping, and headless Chromium driving them (Playwright).

The browser tests use Debian's Chromium (/usr/bin/chromium, installed by .ci/run) through Playwright's
`executable_path`: nothing is downloaded. They skip, with the reason, when either is missing.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_report import make_run

from headscreen.report.explore_data import quantise_lower, script_json
from headscreen.rundir.attention_file import (
    FILE,
    AttentionIndex,
    pattern_key,
    read_attention,
    write_attention,
)
from pipelines.report import report as render_report

T, ROWS, SPAN = 24, 2, 10
HOSTILE = "</script><img src=x onerror=alert(1)>"  # a token that would break a naively embedded page


def planted_pattern(kind: str, seed: int) -> torch.Tensor:
    """[row, q, k] causal pattern: induction (q - SPAN + 1), previous (q - 1) or bos (0) plus noise."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(ROWS, T, T, generator=g) * 0.2
    target = torch.zeros(ROWS, T, T)
    for q in range(T):
        k = {"induction": q - SPAN + 1 if q >= SPAN else 0, "previous": max(q - 1, 0), "bos": 0}[kind]
        target[:, q, k] = 3.0
    w = (noise + target).tril()
    return w / w.sum(-1, keepdim=True)


def write_planted_attention(run: Path) -> dict[str, torch.Tensor]:
    """attention.safetensors for test_report's run 'a': its circuit and BOS heads at the last step, the
    induction heads also at step 500; a hostile token in row 0 of each probe."""
    manifest = json.loads((run / "manifest.json").read_text())
    heads = {(1, 2): "induction", (2, 1): "induction", (0, 1): "previous", (2, 0): "bos", (2, 3): "bos"}
    index = AttentionIndex(tables_id=(manifest.get("tables") or {}).get("id"), rows=ROWS, probes={})
    tokens, patterns = {}, {}
    for pi, probe in enumerate(("retrieval", "repeated")):
        ids = torch.arange(ROWS * T).reshape(ROWS, T) % SPAN + 4
        tokens[probe] = ids
        text = [[f"w{int(i)}" for i in row] for row in ids]
        text[0][3] = HOSTILE
        index.probes[probe] = {"seq_len": T, "has_bos": False, "query_pos": [T - 1] * ROWS, "a_pos": [5] * ROWS,
                               "text": text}
        for step, chosen in ((1000, heads), (500, {h: k for h, k in heads.items() if k == "induction"})):
            for i, (head, kind) in enumerate(sorted(chosen.items())):
                key = pattern_key(probe, step, head)
                patterns[key] = planted_pattern(kind, seed=100 * pi + 10 * i + step)
                why = [f"{kind} ({probe}) at the last checkpoint"] if step == 1000 else [f"{kind} ({probe}) emerged"]
                index.entries.append({"probe": probe, "step": step, "layer": head[0], "head": head[1], "key": key,
                                      "why": why})
    write_attention(run / FILE, index, tokens, patterns)
    return read_attention(run / FILE)[1]


@pytest.fixture(scope="module")
def explore_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore")
    run = root / "tiny-a" / "run1"
    truth = make_run(run, "a", validated=True)
    stored = write_planted_attention(run)
    paths = render_report([run])
    return {"run": run, "html": paths["html"], "stored": stored, "selectivity": truth["selectivity"]}


def _payload(html: Path, slug: str = "tiny-a") -> dict:
    text = html.read_text()
    start = text.index(f'<script type="application/json" id="hs-data-{slug}">') + len(f'<script type="application/json" id="hs-data-{slug}">')
    return json.loads(text[start:text.index("</script>", start)])


def test_script_json_cannot_close_its_element():
    text = script_json({"t": [HOSTILE, "a&b", "<!--", "\u2028"]})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"t": [HOSTILE, "a&b", "<!--", "\u2028"]}


def test_quantised_lower_triangle_round_trips():
    pat = planted_pattern("induction", 0)[0]
    raw = np.frombuffer(base64.b64decode(quantise_lower(pat)), dtype=np.uint8)
    assert raw.size == T * (T + 1) // 2
    rows, cols = np.tril_indices(T)
    assert np.abs(raw / 255 - pat.numpy()[rows, cols]).max() <= 0.5 / 255 + 1e-7


def test_page_embeds_the_stored_patterns_and_every_checkpoints_selectivity(explore_run):
    html = explore_run["html"].read_text()
    assert html.count("</script>") == 2  # the data element and the one script: the hostile token did not close one
    assert HOSTILE not in html  # escaped, in the JSON and everywhere else
    data = _payload(explore_run["html"])
    entries = {(e["probe"], e["step"], e["layer"], e["head"]): e for e in data["attention"]["entries"]}
    assert len(entries) == 2 * (5 + 2)
    e = entries[("repeated", 1000, 1, 2)]
    stored = explore_run["stored"][pattern_key("repeated", 1000, (1, 2))]
    assert e["rows"][1] == quantise_lower(stored[1])
    assert data["attention"]["probes"]["retrieval"]["text"][0][3] == HOSTILE
    sel, truth = data["selectivity"], explore_run["selectivity"]
    assert sel["steps"] == [0, 250, 500, 750, 1000] and (sel["layers"], sel["heads"]) == (3, 4)
    want = truth[(truth.probe == "retrieval") & (truth["class"] == "induction") & (truth.step == 500)]
    got = sel["probes"]["retrieval"]["induction"][2]
    for r in want.itertuples():
        assert got[r.layer * 4 + r.head] == pytest.approx(r.selectivity, rel=5e-3)


def test_a_run_without_the_file_still_reports_and_says_why(tmp_path):
    run = tmp_path / "tiny-b" / "run1"
    make_run(run, "b", validated=False)
    paths = render_report([run], step=500)
    data = _payload(paths["html"], "tiny-b")
    assert data["attention"] is None and FILE in data["attention_notice"]
    assert data["step"] == 500  # the slider starts at the report's step
    assert data["selectivity"] is not None
    assert FILE in paths["html"].read_text()  # the notice is shown


# ---------------------------------------------------------------- headless Chromium

def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    return sync_playwright


needs_browser = pytest.mark.skipif(
    _chromium() is None or _playwright() is None,
    reason="needs Chromium (apt-get install -y chromium) and Playwright (pip install -e '.[dev]'); "
           "no browser is downloaded")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Page:
    """A page of the report in headless Chromium, recording console errors, page errors and requests."""

    def __init__(self, pw, html: Path, *, javascript: bool = True):
        self.browser = pw.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS, headless=True)
        self.context = self.browser.new_context(java_script_enabled=javascript, viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.errors, self.requests = [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.errors.append(f"dialog {d.message}"), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = html.resolve().as_uri()
        self.page.goto(self.url, wait_until="load")

    def foreign_requests(self) -> list[str]:
        return [u for u in self.requests if u != self.url and not u.startswith("data:")]

    def close(self):
        self.browser.close()


def _grid_values(page, cls: str) -> list[str]:
    return page.eval_on_selector_all(f'.hs-slider table[data-class="{cls}"] td', "tds => tds.map(t => t.dataset.v)")


def _drawn_pattern(page) -> np.ndarray:
    """The weights drawn on the viewer's canvas, read back from its pixels (red = 255 - round(255 w))."""
    got = page.evaluate("""() => {
        const c = document.querySelector('.hs-att-canvas'), d = c.dataset, T = +d.t, s = +d.cell;
        const img = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, out = [];
        for (let q = 0; q < T; q++) { const row = []; for (let k = 0; k < T; k++) {
          const x = +d.ml + k * s + Math.floor(s / 2), y = +d.mt + q * s + Math.floor(s / 2);
          row.push(255 - img[4 * (y * c.width + x)]); } out.push(row); }
        return out; }""")
    return np.array(got, dtype=float) / 255


@needs_browser
def test_chromium_slider_viewer_and_tables(explore_run, tmp_path):
    with _playwright()() as pw:
        p = Page(pw, explore_run["html"])
        try:
            page = p.page
            # the slider: its last checkpoint first; moving it to step 0 changes the induction grid to step 0's values
            assert page.text_content(".hs-sel-step").startswith("step 1000")
            last = _grid_values(page, "induction")
            page.fill(".hs-sel-slider", "0")
            first = _grid_values(page, "induction")
            assert first != last and page.text_content(".hs-sel-step").startswith("step 0")
            truth = explore_run["selectivity"]
            at0 = truth[(truth.probe == "retrieval") & (truth["class"] == "induction") & (truth.step == 0)]
            assert [float(v) for v in first] == pytest.approx(
                list(at0.sort_values(["layer", "head"])["selectivity"]), rel=5e-3)
            assert page.eval_on_selector_all(".hs-slider td.hs-hit", "x => x.length") < page.eval_on_selector_all(
                ".hs-slider td", "x => x.length")
            # the viewer: pick a head, checkpoint, probe and row; the canvas shows the stored pattern
            page.select_option(".hs-att-probe", "repeated")
            heads = page.eval_on_selector_all(".hs-att-head option", "o => o.map(x => x.value)")
            assert heads[:2] == ["L1H2", "L2H1"] and set(heads) == {"L1H2", "L2H1", "L0H1", "L2H0", "L2H3"}
            for head, step, row in (("L1H2", "500", "1"), ("L0H1", "1000", "0"), ("L2H3", "1000", "1")):
                page.select_option(".hs-att-head", head)
                page.select_option(".hs-att-step", step)
                page.select_option(".hs-att-row", row)
                layer, h = int(head[1]), int(head[3])
                stored = explore_run["stored"][pattern_key("repeated", int(step), (layer, h))][int(row)].float().numpy()
                drawn = _drawn_pattern(page)
                lower = np.tril(np.ones((T, T), dtype=bool))
                assert np.abs(drawn[lower] - stored[lower]).max() <= 0.5 / 255 + 1e-6, head
            # hover a cell: the tooltip names both tokens and the weight (the hostile token as plain text)
            page.select_option(".hs-att-probe", "retrieval")
            page.select_option(".hs-att-head", "L1H2")
            page.select_option(".hs-att-step", "1000")
            page.select_option(".hs-att-row", "0")
            box = page.eval_on_selector(".hs-att-canvas", "c => ({ml: +c.dataset.ml, mt: +c.dataset.mt, s: +c.dataset.cell})")
            page.hover(".hs-att-canvas", position={"x": box["ml"] + 3 * box["s"] + 1, "y": box["mt"] + 12 * box["s"] + 1})
            tip = page.text_content(".hs-tip")
            w = explore_run["stored"][pattern_key("retrieval", 1000, (1, 2))][0, 12, 3].item()
            assert "query) 12" in tip and "key) 3" in tip and json.dumps(HOSTILE) in tip and f"{w:.3f}"[:4] in tip
            page.locator(".hs-attention").screenshot(path=str(tmp_path / "viewer.png"))
            # a long table: filter and sort
            table = page.locator("table.hs-table").first
            n = table.locator("tbody tr").count()
            flt = page.locator(".hs-filter input").first
            flt.fill("L1H2")
            visible = table.locator("tbody tr:visible").count()
            assert 0 < visible < n
            assert p.errors == [] and p.foreign_requests() == []
        finally:
            p.close()
    assert (tmp_path / "viewer.png").read_bytes()[:4] == b"\x89PNG"


@needs_browser
def test_chromium_without_javascript_shows_the_static_report(explore_run):
    with _playwright()() as pw:
        p = Page(pw, explore_run["html"], javascript=False)
        try:
            page = p.page
            assert page.locator(".hs-js").first.is_hidden()
            assert page.locator(".hs-att-canvas").count() == 0
            assert page.locator("figure img").count() >= 8
            ok = page.eval_on_selector_all("figure img", "im => im.every(i => i.complete && i.naturalWidth > 0)")
            assert ok and p.errors == [] and p.foreign_requests() == []
        finally:
            p.close()



def test_notebook_run_view(explore_run, tmp_path):
    from headscreen.report.notebook import load_run_view

    view = load_run_view(explore_run["run"])
    summary = view._repr_html_()
    assert "L1H2, L2H1" in summary and "14 patterns of 5 heads" in summary and "top-1 drop" in summary
    assert view.circuits()["previous"] == [(0, 1)]
    assert torch.equal(view.pattern("L1H2", probe="repeated", step=500),
                       explore_run["stored"][pattern_key("repeated", 500, (1, 2))])
    shown = view.attention("L2H1", probe="repeated", step=500, row=1)
    frame = shown._repr_html_()
    assert frame.startswith("<iframe srcdoc=") and "<script>" not in frame  # the page is attribute-escaped
    page = shown.save(tmp_path / "viewer.html")
    if _chromium() is None or _playwright() is None:
        pytest.skip("the inline viewer's browser check needs Chromium and Playwright")
    with _playwright()() as pw:
        p = Page(pw, page)
        try:
            assert [p.page.input_value(f".hs-att-{k}") for k in ("probe", "head", "step", "row")] == [
                "repeated", "L2H1", "500", "1"]
            stored = explore_run["stored"][pattern_key("repeated", 500, (2, 1))][1].float().numpy()
            lower = np.tril(np.ones((T, T), dtype=bool))
            assert np.abs(_drawn_pattern(p.page)[lower] - stored[lower]).max() <= 0.5 / 255 + 1e-6
            assert p.errors == [] and p.foreign_requests() == []
        finally:
            p.close()
