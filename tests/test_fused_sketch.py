"""The fused CountSketch pass (headscreen/spectral/fused.py) and the copy-free lazy read that feeds it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from headscreen.series import HeadWeights, LayeredHeadWeights, LocalSeries
from headscreen.spectral import CountSketch, HeadSketcher, SpectralConfig
from headscreen.testing import ARCHITECTURES, save_tiny_series

NAMES = ("W_Q", "W_K", "W_V", "W_O")
CFG = SpectralConfig(window=3, sketch_dim=40, block_size=300)


def _weights(g: torch.Generator, n_layers=2, n_heads=6, n_kv=3, d_model=24, d_head=6) -> HeadWeights:
    shapes = {"W_Q": (n_layers, n_heads, d_model, d_head), "W_K": (n_layers, n_kv, d_model, d_head),
              "W_V": (n_layers, n_kv, d_model, d_head), "W_O": (n_layers, n_heads, d_head, d_model)}
    return HeadWeights(**{k: torch.randn(s, generator=g) for k, s in shapes.items()})


def _series(n=4, seed=0) -> list[HeadWeights]:
    g = torch.Generator().manual_seed(seed)
    base, out = _weights(g), []
    for _ in range(n):
        out.append(base)
        base = HeadWeights(**{k: getattr(base, k) + 0.05 * torch.randn(getattr(base, k).shape, generator=g)
                              for k in NAMES})
    return out


def _cast(hw: HeadWeights, dtype) -> HeadWeights:
    return HeadWeights(**{k: getattr(hw, k).to(dtype) for k in NAMES})


def _transposed_storage(hw: HeadWeights) -> HeadWeights:
    """The same values held column-major per head (strided views, like the lazy reader's)."""
    return HeadWeights(**{k: getattr(hw, k).transpose(-1, -2).contiguous().transpose(-1, -2) for k in NAMES})


def _run(feed, cfg=CFG, **kw):
    hs = HeadSketcher(cfg)
    return hs, [hs.update(w, 10 * i, **kw) for i, w in enumerate(feed)]


def _same(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.sketch, y.sketch)
        torch.testing.assert_close(x.update_norm, y.update_norm, rtol=0, atol=0, equal_nan=True)


def test_signed_bins_are_the_countsketch_hashes():
    sk = CountSketch(1000, 30, seed=5, block_size=256)
    bins = torch.from_numpy(sk.signed_bins()).long()
    h = torch.cat([sk.hashes(b)[0] for b in range(sk.n_blocks)])
    sign = torch.cat([sk.hashes(b)[1] for b in range(sk.n_blocks)])
    assert bins.shape == (1000,) and torch.equal(bins, 2 * h + (sign < 0).long())


def _close(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.sketch, y.sketch, rtol=1e-13, atol=1e-13 * x.sketch.abs().max().item())
        torch.testing.assert_close(x.update_norm, y.update_norm, rtol=1e-14, atol=0, equal_nan=True)


def test_records_depend_on_the_element_order_only():
    # the float64 sums run in memory order: the same order (any stored dtype, HeadWeights or the [L, H, P]
    # head vectors) gives the same bits; a strided layout agrees to rounding (bf16 rounding applied first)
    hws = [_cast(_cast(h, torch.bfloat16), torch.float32) for h in _series()]
    _, ref = _run(hws)
    _same(ref, _run([_cast(h, torch.bfloat16) for h in hws])[1])
    _same(ref, _run([h.head_vectors() for h in hws])[1])
    _same(ref, _run([h.head_vectors(torch.bfloat16) for h in hws])[1])
    strided = _run([_transposed_storage(h) for h in hws])[1]
    _close(ref, strided)
    _same(strided, _run([_transposed_storage(_cast(h, torch.bfloat16)) for h in hws])[1])
    # and they are S θ_t and ‖θ_t − θ_(t−1)‖ computed densely in float64 (S from the projector's matrix)
    hs, recs = _run(hws)
    s = hs.projector.matrix().double()
    vec = [h.head_vectors(torch.float64) for h in hws]
    for t, rec in enumerate(recs):
        torch.testing.assert_close(rec.sketch, vec[t] @ s.T, rtol=1e-12, atol=1e-12)
        if t:
            torch.testing.assert_close(rec.update_norm, (vec[t] - vec[t - 1]).norm(dim=-1), rtol=1e-12, atol=0)


def test_retained_weights_are_not_copied_and_give_the_same_records():
    hws = [_cast(h, torch.float16) for h in _series()]
    _, ref = _run([_cast(h, torch.float16) for h in _series()])
    hs, got = _run(hws, retain=True)
    _same(ref, got)
    held = {t.untyped_storage().data_ptr() for ts, _ in hs._pass.prev for t in ts}
    assert held == {getattr(hws[-1], k).untyped_storage().data_ptr() for k in NAMES}
    copied, _ = _run(hws)  # without retain, θ_(t−1) is the sketcher's own copy
    assert not held & {t.untyped_storage().data_ptr() for ts, _ in copied._pass.prev for t in ts}


def test_a_nan_checkpoint_raises_and_leaves_the_state_unchanged():
    hws = _series(n=3)
    bad = HeadWeights(**{k: getattr(hws[2], k).clone() for k in NAMES})
    bad.W_K[1, 1, 3, 2] = float("nan")  # K/V head 1 of layer 1 serves query heads 2 and 3
    hs = HeadSketcher(CFG)
    hs.update(hws[0], 0)
    hs.update(hws[1], 10)
    with pytest.raises(ValueError, match=r"step 20: NaN/inf weights in layer 1 head 2"):
        hs.update(bad, 20)
    _, ref = _run(hws)
    _same([ref[2]], [hs.update(hws[2], 20)])


def test_prime_without_a_sketch_projects_theta_in_float64():
    hws = _series(n=3)
    _, ref = _run(hws)
    hs = HeadSketcher(CFG)
    hs.prime(hws[1], 10)
    rec = hs.update(hws[2], 20)
    assert torch.equal(rec.update_norm, ref[2].update_norm)
    torch.testing.assert_close(rec.sketch, ref[2].sketch, rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def series_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused")
    for arch in ARCHITECTURES:
        save_tiny_series(root / arch, arch, [0, 10, 20])
    return root


def _mapped_files(t: torch.Tensor) -> set[str]:
    """The files of this process's memory maps that hold t's storage (from /proc/self/maps)."""
    ptr, end = t.untyped_storage().data_ptr(), t.untyped_storage().data_ptr() + t.untyped_storage().nbytes()
    out = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= ptr and end <= hi and len(fields) == 6:
            out.add(fields[5])
    return out


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lazy_read_as_stored_maps_the_files_and_sketches_like_the_copy(series_root, arch):
    series = LocalSeries(series_root / arch)
    views = [series.head_weights(c, dtype=None) for c in series.checkpoints]
    copies = [series.head_weights(c) for c in series.checkpoints]  # float32, contiguous
    for v, c, ck in zip(views, copies, series.checkpoints, strict=True):
        assert isinstance(v, LayeredHeadWeights) and v.n_layers == c.n_layers and v.shapes() == c.shapes()
        for layer, lw in enumerate(v.layers):
            for k in NAMES:
                assert torch.equal(getattr(lw, k)[0].float(), getattr(c, k)[layer]), (arch, layer, k)
                if sys.platform == "linux":  # the tensors are views of the checkpoint file's map: nothing was copied
                    assert _mapped_files(getattr(lw, k)) == {str(ck.path / "model.safetensors")}, (arch, k)
    _close(_run(copies)[1], _run(views, retain=True)[1])
    # the layered record's fields stack its layers (a copy made once): what a non-fused reader gets
    assert all(torch.equal(getattr(views[0], k).float(), getattr(copies[0], k)) for k in NAMES)
    assert views[0].W_Q is views[0].W_Q
    import pickle

    assert len(pickle.dumps(series)) < 100_000  # nothing read travels to worker processes


def _stack_keeping_layout(views: list[torch.Tensor]) -> torch.Tensor:
    """[L, ...] copies of per-layer views, each layer with the view's own strides (one buffer)."""
    v = views[0]
    n = v.untyped_storage().nbytes() // v.element_size()
    base = torch.empty(len(views) * n, dtype=v.dtype)
    out = base.as_strided((len(views), *v.shape), (n, *v.stride()), v.storage_offset())
    for i, t in enumerate(views):
        out[i] = t
    return out


def test_mapped_records_equal_the_stacked_ones_bit_for_bit(series_root):
    # the fused pass walks each layer of a mapped record in the memory order a stacked record has
    series = LocalSeries(series_root / "gpt_neox")
    views = [series.head_weights(c, dtype=None) for c in series.checkpoints]
    stacked = [HeadWeights(**{k: _stack_keeping_layout([getattr(lw, k)[0] for lw in v.layers]) for k in NAMES})
               for v in views]
    assert not stacked[0].W_Q.is_contiguous()  # NeoX: the fused QKV rows, kept strided
    _same(_run(stacked)[1], _run(views, retain=True)[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_finite_half_precision_value_is_read_exactly(dtype):
    # all 65,536 bit patterns: the finite ones as one head vector (its first sketch is S θ in float64),
    # the others (Inf/NaN) each make the update raise
    vals = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    finite = vals[torch.isfinite(vals)]
    hs = HeadSketcher(SpectralConfig(window=3, sketch_dim=16, block_size=4096))
    rec = hs.update(finite.view(1, 1, -1), 0)
    s = hs.projector.matrix().double()
    x = finite.double()
    terms = (s.abs() * x.abs()).sum(-1).max().item()
    torch.testing.assert_close(rec.sketch[0, 0], s @ x, rtol=0, atol=1e-15 * terms)
    for bad in vals[~torch.isfinite(vals)][:: 97]:
        with pytest.raises(ValueError, match="NaN/inf weights"):
            HeadSketcher(SpectralConfig(window=3, sketch_dim=16)).update(bad.view(1, 1, 1).expand(1, 1, 4), 0)


def test_the_integer_fp16_path_gives_the_same_records(tmp_path):
    """A process whose kernels are compiled for a generic CPU (NUMBA_CPU_NAME: no fp16 instruction, so the
    integer conversion) reads every finite fp16 value exactly, raises for every Inf/NaN pattern tried, and writes
    the records of an fp16 series: they are this process's bit for bit (here the CPU's conversion, where it has
    one)."""
    import os
    import subprocess

    from headscreen.spectral import fused

    code = f"""
import numpy as np, torch
from headscreen.spectral import HeadSketcher, SpectralConfig, fused
from tests.test_fused_sketch import _cast, _series, test_every_finite_half_precision_value_is_read_exactly
assert not fused.HARDWARE_HALF
test_every_finite_half_precision_value_is_read_exactly(torch.float16)
hs = HeadSketcher(SpectralConfig(window=3, sketch_dim=40, block_size=300))
recs = [hs.update(_cast(w, torch.float16), 10 * i) for i, w in enumerate(_series())]
bad = _cast(_series()[0], torch.float16)
bad.W_V[0, 1, 2, 3] = float("inf")
try:
    hs.update(bad, 100)
    raise SystemExit("no error for an Inf weight")
except ValueError as e:
    assert "NaN/inf weights in layer 0 head" in str(e), e
np.savez({str(tmp_path / "r.npz")!r}, sketch=np.stack([r.sketch.numpy() for r in recs]),
         norm=np.stack([r.update_norm.numpy() for r in recs]))
"""
    env = os.environ | {"NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(tmp_path / "cache"),
                        "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    other = np.load(tmp_path / "r.npz")
    hs = HeadSketcher(CFG)
    recs = [hs.update(_cast(w, torch.float16), 10 * i) for i, w in enumerate(_series())]
    assert np.array_equal(np.stack([r.sketch.numpy() for r in recs]), other["sketch"])
    assert np.array_equal(np.stack([r.update_norm.numpy() for r in recs]), other["norm"], equal_nan=True)
    print("this process converts fp16 by", "the CPU" if fused.HARDWARE_HALF else "integer ops")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gqa", [False, True])
def test_the_kernel_sums_each_head_in_its_element_order(gqa, dtype):
    """The fused pass walks LANES heads side by side, 4 columns at a time where a row allows (the rest of a row
    one column at a time); each head's bins and ‖δ‖² must still be its own serial float64 sums in column
    order: checked bit for bit against a plain Python loop, on 6 heads (a full block and a padded one), rows
    of 42 (4-column steps and a tail of 2), and K/V parts shared by pairs of query heads."""
    from headscreen.spectral import fused

    g = torch.Generator().manual_seed(3)
    kw = dict(n_layers=2, n_heads=6, n_kv=3 if gqa else 6, d_model=42, d_head=16)
    assert 6 % fused.LANES and 42 % 4
    cur, prev = _cast(_weights(g, **kw), dtype), _cast(_weights(g, **kw), dtype)
    bins = np.random.default_rng(0).integers(0, 2 * 7, 4 * 42 * 16).astype(np.uint32)
    out, sq, finite = fused.fused_update(fused.head_parts(cur), fused.head_parts(prev), bins, 6, 7)
    delta = (cur.head_vectors(torch.float64) - prev.head_vectors(torch.float64)).numpy()  # [L, H, P], column order
    for layer in range(2):
        for h in range(6):
            acc, s = [0.0] * 14, 0.0
            for col, x in enumerate(delta[layer, h].tolist()):
                acc[int(bins[col])] += x
                s += x * x
            assert out[layer, h].tolist() == [acc[2 * j] - acc[2 * j + 1] for j in range(7)]
            assert sq[layer, h].item() == s
    assert bool(finite.all())


@pytest.mark.parametrize("layout", ["contiguous", "strided", "vectors"])
def test_records_are_bit_identical_at_every_thread_count(layout, monkeypatch):
    """The fused pass splits each layer's heads (K/V groups) across threads (fused.pass_threads follows torch's
    thread count); each head's float64 sums keep the serial element order, so the records are the same bits."""
    import numba

    from headscreen.spectral import fused

    hws = [_cast(h, torch.bfloat16) for h in _series()]
    feed = {"contiguous": hws, "strided": [_transposed_storage(h) for h in hws],
            "vectors": [h.head_vectors(torch.float32) for h in hws]}[layout]
    calls = []
    for name in ("_scatter_part", "_scatter_part_threads"):
        kernel = getattr(fused, name)
        monkeypatch.setattr(fused, name, lambda *a, _k=kernel, _n=name: (calls.append(_n), _k(*a))[1])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, one = _run(feed)
        assert set(calls) == {"_scatter_part"}
        for n in range(2, min(4, numba.config.NUMBA_NUM_THREADS) + 1):
            calls.clear()
            torch.set_num_threads(n)
            _same(one, _run(feed)[1])
            assert set(calls) == {"_scatter_part_threads"}  # the threaded kernel ran
    finally:
        torch.set_num_threads(before)


def test_mapped_records_are_bit_identical_at_every_thread_count(series_root):
    # the as-stored read of a GQA model (llama: 4 heads over 2 K/V groups), its layers walked one call each
    import numba

    series = LocalSeries(series_root / "llama")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run([series.head_weights(c, dtype=None) for c in series.checkpoints], retain=True)[1]
        for n in range(2, min(4, numba.config.NUMBA_NUM_THREADS) + 1):
            torch.set_num_threads(n)
            _same(one, _run([series.head_weights(c, dtype=None) for c in series.checkpoints], retain=True)[1])
    finally:
        torch.set_num_threads(before)


def _plant_nan(folder: Path, key_part: str) -> str:
    """Set one value of the first tensor whose name contains key_part to NaN (in place); returns its name."""
    from safetensors.torch import load_file, save_file

    f = next(folder.glob("*.safetensors"))
    tensors = load_file(f)
    key = next(k for k in sorted(tensors) if key_part in k)
    tensors[key].view(-1)[3] = float("nan")
    save_file(tensors, f, metadata={"format": "pt"})
    return key


@pytest.mark.parametrize("kind", ["countsketch", "gaussian"])
def test_an_unchecked_read_is_checked_by_the_sketch_with_the_readers_message(tmp_path, kind):
    """head_weights(dtype=None, check=False) skips the separate NaN/Inf pass over the weight matrices;
    the sketcher (the fused pass on its sums, the Gaussian pass before it reads) raises the reader's own
    NonFiniteWeights naming the checkpoint, layer and part, and leaves its state as it was."""
    from headscreen.series import NonFiniteWeights

    save_tiny_series(tmp_path / "s", "gpt_neox", [0, 10, 20])
    _plant_nan(tmp_path / "s" / "step10", "layers.1.attention.dense.weight")
    series = LocalSeries(tmp_path / "s")
    bad = series.checkpoints[1]
    with pytest.raises(NonFiniteWeights) as checked:  # the checked read refuses it
        series.head_weights(bad, dtype=None)
    hw = series.head_weights(bad, dtype=None, check=False)  # the unchecked read does not
    assert not hw.checked
    cfg = SpectralConfig(window=3, sketch_dim=16, sketch_kind=kind)
    sk = HeadSketcher(cfg)
    sk.update(series.head_weights(series.checkpoints[0], dtype=None, check=False), 0, retain=True)
    with pytest.raises(NonFiniteWeights) as unchecked:
        sk.update(hw, 10, retain=True)
    assert str(unchecked.value) == str(checked.value) and "layer 1 W_O" in str(unchecked.value)
    # nothing changed: the next good checkpoint's update is the one from step 0
    after = sk.update(series.head_weights(series.checkpoints[2], dtype=None, check=False), 20, retain=True)
    ref = HeadSketcher(cfg)
    ref.update(series.head_weights(series.checkpoints[0], dtype=None), 0)
    want = ref.update(series.head_weights(series.checkpoints[2], dtype=None), 20)
    assert torch.equal(after.sketch, want.sketch) and torch.equal(after.update_norm, want.update_norm)
    with pytest.raises(NonFiniteWeights):  # stacking the unchecked record checks it too
        series.head_weights(bad, dtype=None, check=False).head_vectors()


def test_an_unchecked_read_still_checks_the_biases(tmp_path):
    from headscreen.series import NonFiniteWeights

    save_tiny_series(tmp_path / "s", "gpt_neox", [0])
    _plant_nan(tmp_path / "s" / "step0", "layers.0.attention.query_key_value.bias")
    series = LocalSeries(tmp_path / "s")
    with pytest.raises(NonFiniteWeights, match=r"step0.*layer 0 b_"):
        series.head_weights(series.checkpoints[0], dtype=None, check=False)
    with pytest.raises(ValueError, match="as-stored read"):
        series.head_weights(series.checkpoints[0], check=False)


def test_a_screen_chunk_skips_the_nan_checkpoint_itself_and_never_the_one_after(tmp_path):
    """The screen reads the weights unchecked and lets the sketch find NaN/Inf. With --skip-bad the bad
    checkpoint is the one recorded as skipped (the next one is sketched from the last good one); a chunk
    that starts right after the bad checkpoint does not record its own first checkpoint as skipped because
    θ_{t−1} is bad: that error stays θ_{t−1}'s, as before the read was unchecked."""
    from headscreen.series import NonFiniteWeights
    from pipelines.screen import ScreenSettings
    from pipelines.screen_chunks import Chunk, screen_chunk

    save_tiny_series(tmp_path / "s", "gpt_neox", [0, 10, 20, 30])
    _plant_nan(tmp_path / "s" / "step10", "layers.0.attention.dense.weight")
    series = LocalSeries(tmp_path / "s")
    settings = ScreenSettings(spectral=SpectralConfig(window=3, sketch_dim=16))
    kept, sketch_only = [0, 1, 2, 3], {i: (True, False) for i in range(4)}
    out = screen_chunk(series, settings, kept, Chunk(0, 4, sketch_only), skip_bad=True, device="cpu")["records"]
    assert [r["status"] for r in out] == ["ok", "skipped", "ok", "ok"]
    assert "step10" in out[1]["reason"] and "layer 0 W_O" in out[1]["reason"] and out[2]["prev"] == 0
    stopped = screen_chunk(series, settings, kept, Chunk(0, 4, sketch_only), skip_bad=False, device="cpu")["records"]
    assert [r["status"] for r in stopped] == ["ok", "error"] and isinstance(stopped[1]["error"], NonFiniteWeights)
    with pytest.raises(NonFiniteWeights, match="step10"):  # θ_{t−1} of the chunk [2, 4) is the bad checkpoint
        screen_chunk(series, settings, kept, Chunk(2, 4, {2: (True, False), 3: (True, False)}), skip_bad=True,
                     device="cpu")
