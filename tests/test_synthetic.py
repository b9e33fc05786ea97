"""The embedded training pipeline: corpus, tokenizer, config validation, training, loading."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from headscreen.config import load_config  # noqa: E402
from headscreen.synthetic import (  # noqa: E402
    ConfigError,
    RepeatBatch,
    SyntheticCorpus,
    TrainConfig,
    Vocab,
    build_model,
    is_attn_only,
    load_tokenizer,
    save_tokenizer,
    train_series,
)
from headscreen.synthetic import train as train_mod  # noqa: E402
from headscreen.synthetic.diagnostics import copying_diagnostics, phase_change_step  # noqa: E402
from headscreen.synthetic.stories import GRAMMAR_WORDS  # noqa: E402
from headscreen.synthetic.tokenizer import BOS_ID, EOS_ID  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(
    n_layers=2, d_model=32, n_heads=2, ctx=32, batch_size=8, steps=40, lr=3e-3, warmup=5,
    log_checkpoints_until=4, checkpoint_every=10, eval_batch_size=8, story_fraction=0.25, threads=1,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small_series(tmp_path_factory) -> tuple[TrainConfig, Path]:
    cfg = TrainConfig(**SMALL)
    out = train_series(cfg, tmp_path_factory.mktemp("series") / "small", progress=False)
    return cfg, out


@pytest.fixture(scope="module")
def small_llama_series(tmp_path_factory) -> tuple[TrainConfig, Path]:
    cfg = TrainConfig(**{**SMALL, "architecture": "llama"})
    out = train_series(cfg, tmp_path_factory.mktemp("series") / "small-llama", progress=False)
    return cfg, out


# --- corpus -------------------------------------------------------------------------------------
def test_corpus_is_deterministic_under_a_seed():
    cfg = TrainConfig(**SMALL)
    a, b = SyntheticCorpus(cfg), SyntheticCorpus(cfg)
    assert torch.equal(a.batch(7), b.batch(7))
    assert not torch.equal(a.batch(7), a.batch(8))
    assert not torch.equal(a.batch(7), SyntheticCorpus(TrainConfig(**{**SMALL, "seed": 1})).batch(7))
    assert torch.equal(a.eval_repeats().tokens, b.eval_repeats().tokens)
    assert torch.equal(a.eval_stories(), b.eval_stories())


def test_repeat_sequences_follow_the_recipe():
    cfg = TrainConfig(**{**SMALL, "ctx": 64, "story_fraction": 0.0, "batch_size": 64})
    corpus = SyntheticCorpus(cfg)
    batch = corpus.repeats(np.random.default_rng(0), 64)
    assert isinstance(batch, RepeatBatch)
    toks, n = batch.tokens, batch.span_len
    assert toks.shape == (64, 64) and toks.dtype == torch.long
    assert (toks[:, 0] == BOS_ID).all() and (toks[:, 1:] >= 4).all()  # no specials after BOS
    assert n.min() >= cfg.min_span and n.max() <= cfg.span_max
    assert len(set(n.tolist())) > 5  # varying offsets, never a fixed period
    for row, k in zip(toks, n.tolist(), strict=True):
        span = row[1 : 1 + k]
        assert torch.equal(span, row[1 + k : 1 + 2 * k])
        assert len(set(span.tolist())) == k  # distinct: one earlier occurrence per token
    assert torch.equal(corpus.batch(3), SyntheticCorpus(cfg).batch(3))


def test_story_share_and_story_tokens():
    vocab = Vocab.build(128)
    grammar_ids = set(vocab.encode(list(GRAMMAR_WORDS))) | {EOS_ID}
    all_stories = SyntheticCorpus(TrainConfig(**{**SMALL, "story_fraction": 1.0})).batch(0)
    assert (all_stories[:, 0] == BOS_ID).all()
    assert set(all_stories[:, 1:].flatten().tolist()) <= grammar_ids
    # names recur within a story: some name appears at least twice in every row
    names = set(vocab.encode(["Lily", "Tom", "Mia", "Ben", "Sara", "Max", "Anna", "Sam", "Zoe", "Leo"]))
    for row in all_stories.tolist():
        assert max(row.count(i) for i in names) >= 2
    cfg = TrainConfig(**{**SMALL, "story_fraction": 0.5, "batch_size": 64})
    rows = torch.cat([SyntheticCorpus(cfg).batch(s) for s in range(4)])
    is_story = torch.tensor([set(r[1:].tolist()) <= grammar_ids for r in rows])
    assert 0.35 < is_story.float().mean() < 0.65


# --- tokenizer ----------------------------------------------------------------------------------
def test_story_text_is_seeded_and_tokenizes_like_the_training_stories(tmp_path):
    from headscreen.synthetic.stories import story_text

    text = story_text(5, seed=3)
    assert text == story_text(5, seed=3) != story_text(5, seed=4)
    docs = [d for d in text.split("\n\n") if d.strip()]
    assert len(docs) == 5 and all(d.split()[-1] == "<eos>" for d in docs)
    vocab = Vocab.build(128)
    tok = load_tokenizer(save_tokenizer(vocab, tmp_path))
    ids = tok(docs[0], add_special_tokens=False)["input_ids"]
    assert ids[-1] == EOS_ID and ids[:-1] == vocab.encode(docs[0].split()[:-1])
    with pytest.raises(ValueError, match="n_stories"):
        story_text(0)


def test_tokenizer_saved_and_reloaded(tmp_path):
    vocab = Vocab.build(128)
    assert vocab.size == 128 and vocab.words[:4] == ("<bos>", "<eos>", "<pad>", "<unk>")
    save_tokenizer(vocab, tmp_path / "a")
    save_tokenizer(Vocab.build(128), tmp_path / "b")
    assert (tmp_path / "a/tokenizer.json").read_bytes() == (tmp_path / "b/tokenizer.json").read_bytes()
    tok = load_tokenizer(tmp_path / "a")
    assert len(tok) == 128 and tok.bos_token_id == BOS_ID and tok.eos_token_id == EOS_ID
    ids = SyntheticCorpus(TrainConfig(**{**SMALL, "story_fraction": 1.0})).batch(0)[0].tolist()
    text = " ".join(vocab.words[i] for i in ids)
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    assert tok.decode(ids) == text
    with pytest.raises(ValueError, match="vocab_size"):
        Vocab.build(20)


# --- config -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"d_modle": 64}, "d_modle"),
        ({"architecture": "gpt2"}, "architecture"),
        ({"d_model": 100, "n_heads": 3}, "d_model"),
        ({"steps": 0}, "steps"),
        ({"steps": "2000"}, "steps"),
        ({"attn_only": "yes"}, "attn_only"),
        ({"betas": [0.9]}, "betas"),
        ({"lr": 2.0}, "lr"),
        ({"story_fraction": 1.5}, "story_fraction"),
        ({"vocab_size": 50}, "vocab_size"),
        ({"max_span": 80}, "max_span"),
        ({"architecture": "llama", "rotary_fraction": 0.25}, "rotary_fraction"),
        ({"distinct_filler": True, "min_span": 2}, "distinct_filler"),  # 124 content ids < 128 - 1 - 2 slots
        ({"distinct_filler": 1, "vocab_size": 256}, "distinct_filler"),
    ],
)
def test_bad_config_values_name_the_field(bad, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        TrainConfig.from_dict(bad)


def test_config_round_trip_and_schedule():
    cfg = TrainConfig.from_dict({"betas": [0.9, 0.95], "weight_decay": 0, "grad_clip": None})
    assert cfg.betas == (0.9, 0.95) and isinstance(cfg.weight_decay, float) and cfg.grad_clip is None
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    steps = TrainConfig().checkpoint_steps()
    assert steps[:7] == (0, 1, 2, 4, 8, 16, 32) and steps[-1] == 2000
    assert all(b - a == 40 for a, b in zip(steps[7:], steps[8:], strict=False)) and len(steps) >= 40
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        TrainConfig.from_dict({"stpes": 10})


def test_from_yaml_names_the_file_and_field(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("name: m\nsource: {kind: synthetic}\ntrain: {n_heads: 0}\n")
    with pytest.raises(ConfigError, match=r"m\.yaml \[train\].*'n_heads'"):
        TrainConfig.from_yaml(path)
    path.write_text("name: m\n")
    with pytest.raises(ConfigError, match="train"):
        TrainConfig.from_yaml(path)


@pytest.mark.parametrize("name", ["synthetic-tiny", "synthetic-deep"])
def test_model_config_yamls_parse(name):
    import yaml

    doc = yaml.safe_load((REPO / "model_configs" / f"{name}.yaml").read_text())
    assert doc["name"] == name and doc["source"]["kind"] == "synthetic"
    cfg = TrainConfig.from_yaml(REPO / "model_configs" / f"{name}.yaml")
    assert cfg == TrainConfig.from_dict(doc["train"]) and len(cfg.checkpoint_steps()) >= 40
    if name == "synthetic-tiny":
        assert (cfg.n_layers, cfg.ctx, cfg.attn_only) == (2, 128, True) and 100 <= cfg.vocab_size <= 160
    else:
        assert cfg.n_layers >= 4
    text_file = (doc.get("probes") or {}).get("text_file")
    if text_file:  # a story text probe: the committed file is story_text(n, seed=0), beside the config
        from headscreen.synthetic.stories import story_text
        from pipelines.screen import ScreenSettings

        text = (REPO / "model_configs" / text_file).read_text(encoding="utf-8")
        assert text == story_text(text.count("<eos>"), seed=0)
        resolved = ScreenSettings.from_config(load_config(name)).probes.text_file
        assert Path(resolved).is_absolute() and Path(resolved).read_text(encoding="utf-8") == text


# --- model --------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_attention_only_mlps_output_exactly_zero(arch):
    torch.manual_seed(0)
    model = build_model(TrainConfig(**{**SMALL, "architecture": arch}))
    assert is_attn_only(model)
    from headscreen.synthetic.model import mlp_modules

    x = torch.randn(2, 5, 32)
    for mlp, norm, _ in mlp_modules(model):
        assert not mlp(norm(x)).any()
        assert not any(p.requires_grad for p in (*mlp.parameters(), *norm.parameters()))
    full = build_model(TrainConfig(**{**SMALL, "architecture": arch, "attn_only": False}))
    assert not is_attn_only(full)


# --- training -----------------------------------------------------------------------------------
def test_series_is_well_formed_and_lowers_the_loss(small_series):
    cfg, out = small_series
    meta = json.loads((out / "series.json").read_text())
    assert meta["format"] == "headscreen-series/1" and meta["seed"] == cfg.seed and meta["complete"]
    assert TrainConfig.from_dict(meta["train_config"]) == cfg
    cks = meta["checkpoints"]
    assert [c["step"] for c in cks] == list(cfg.checkpoint_steps()) == [0, 1, 2, 4, 10, 20, 30, 40]
    for c in cks:
        assert c["path"] == f"step{c['step']:06d}" and c["tokens"] == c["step"] * cfg.batch_size * cfg.ctx
        assert (out / c["path"] / "config.json").is_file() and (out / c["path"] / "model.safetensors").is_file()
        assert {"loss_first", "loss_second", "induction", "bos"} <= set(c["diagnostics"])
        assert len(c["diagnostics"]["induction"]) == cfg.n_layers
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("step")) == [c["path"] for c in cks]
    assert (out / "tokenizer.json").is_file() and not (out / "resume.safetensors").exists()
    assert cks[0]["train_loss"] == pytest.approx(torch.log(torch.tensor(128.0)).item(), abs=0.15)
    assert cks[-1]["train_loss"] < cks[0]["train_loss"] - 0.3


@pytest.mark.parametrize("fixture", ["small_series", "small_llama_series"])
def test_checkpoint_boots_in_bridge_and_matches_hf_logits(fixture, request):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    cfg, out = request.getfixturevalue(fixture)
    tok = load_tokenizer(out)
    ckpt = out / "step000040"
    hf = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    assert is_attn_only(hf)
    bridge = TransformerBridge.boot_transformers(str(ckpt), device="cpu", tokenizer=tok)
    tokens = SyntheticCorpus(cfg).eval_repeats(4).tokens
    with torch.no_grad():
        ref = hf(tokens).logits
        logits, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("mlp_out"))
    assert torch.allclose(logits, ref, atol=1e-5), (logits - ref).abs().max()
    assert ref.std() > 0.1  # trained logits, not a constant
    assert all(not v.any() for v in cache.values()) and len(cache) == cfg.n_layers


def test_same_seed_gives_bitwise_identical_checkpoints_and_resume_is_exact(tmp_path, monkeypatch):
    cfg = TrainConfig(**{**SMALL, "architecture": "llama", "steps": 12, "checkpoint_every": 4})
    a = train_series(cfg, tmp_path / "a", progress=False)
    b = train_series(cfg, tmp_path / "b", progress=False)
    steps = [c["step"] for c in json.loads((a / "series.json").read_text())["checkpoints"]]
    assert steps == [0, 1, 2, 4, 8, 12]

    def files(root: Path) -> dict[str, bytes]:
        return {f"{s:06d}": (root / f"step{s:06d}" / "model.safetensors").read_bytes() for s in steps}

    assert files(a) == files(b)
    assert files(a)["000000"] != files(a)["000012"]

    # interrupt a third run after checkpoint 4, then resume it: same bytes as uninterrupted
    original = train_mod._save_checkpoint

    def crash_at_8(model, out, step):
        if step == 8:
            raise KeyboardInterrupt
        original(model, out, step)

    monkeypatch.setattr(train_mod, "_save_checkpoint", crash_at_8)
    with pytest.raises(KeyboardInterrupt):
        train_series(cfg, tmp_path / "c", progress=False)
    assert (tmp_path / "c/resume.safetensors").is_file() and not (tmp_path / "c/step000008").exists()
    monkeypatch.setattr(train_mod, "_save_checkpoint", original)
    c = train_series(cfg, tmp_path / "c", progress=False)
    assert files(c) == files(a)
    meta_c, meta_a = (json.loads((r / "series.json").read_text()) for r in (c, a))
    assert [x["train_loss"] for x in meta_c["checkpoints"]] == [x["train_loss"] for x in meta_a["checkpoints"]]


def test_out_dir_protection(tmp_path, small_series):
    cfg, out = small_series
    stamp = (out / "series.json").stat().st_mtime_ns
    assert train_series(cfg, out, progress=False) == out  # complete series of the same config: no-op
    assert (out / "series.json").stat().st_mtime_ns == stamp

    other = TrainConfig(**{**SMALL, "steps": 4})
    target = tmp_path / "t"
    train_series(other, target, progress=False)
    with pytest.raises(FileExistsError, match="steps"):
        train_series(TrainConfig(**{**SMALL, "steps": 2}), target, progress=False)
    assert (target / "step000004").is_dir()  # refused: nothing lost
    train_series(TrainConfig(**{**SMALL, "steps": 2}), target, progress=False, overwrite=True)
    assert not (target / "step000004").exists() and (target / "step000002").is_dir()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a headscreen series"):
        train_series(other, foreign, progress=False, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"


# --- diagnostics --------------------------------------------------------------------------------
def test_diagnostics_find_a_planted_induction_pattern():
    """A fake model whose layer-1 head 0 attends exactly to q - n + 1 scores 1.0; others score low."""
    cfg = TrainConfig(**{**SMALL, "ctx": 32})
    corpus = SyntheticCorpus(cfg)
    reps, stories = corpus.eval_repeats(6), corpus.eval_stories(6)

    class Fake(torch.nn.Module):
        def forward(self, tokens, output_attentions=True):
            b, t = tokens.shape
            uniform = (torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1)[:, None]).expand(b, 2, t, t)
            planted = uniform.clone()
            if tokens is reps.tokens:
                for i, n in enumerate(reps.span_len.tolist()):
                    q = torch.arange(n + 1, 2 * n + 1)
                    planted[i, 0, q] = 0.0
                    planted[i, 0, q, q - n + 1] = 1.0
            return SimpleNamespace(logits=torch.zeros(b, t, cfg.vocab_size), attentions=(uniform, planted))

    diag = copying_diagnostics(Fake(), reps, stories)
    assert diag["induction"][1][0] == pytest.approx(1.0)
    assert diag["induction"][1][1] < 0.2 and diag["induction"][0][0] < 0.2
    assert diag["loss_first"] == pytest.approx(diag["loss_second"])  # constant logits: no copying
    assert phase_change_step([{"step": 5, "diagnostics": diag}]) == 5
    assert phase_change_step([{"step": 5, "diagnostics": {**diag, "induction": [[0.1], [0.2]]}}]) is None


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_sdpa_training_kernel_matches_eager_and_diagnostics_get_patterns(arch):
    from headscreen.synthetic.model import attention_kernel

    cfg = TrainConfig(**{**SMALL, "architecture": arch, "ctx": 32})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert model.config._attn_implementation == "sdpa"
    x = SyntheticCorpus(cfg).batch(0)
    fused = model(input_ids=x).logits
    with attention_kernel(model, "eager"):
        out = model(input_ids=x, output_attentions=True)
        assert len(out.attentions) == cfg.n_layers and out.attentions[0].shape[-1] == cfg.ctx
    assert model.config._attn_implementation == "sdpa"  # restored
    assert torch.allclose(out.logits, fused, atol=1e-5)
    with pytest.raises(ConfigError, match="'attention' = 'flash'"):
        TrainConfig(**{**SMALL, "attention": "flash"})


def test_scattered_repeats_keep_a_unique_induction_target():
    cfg = TrainConfig(**{**SMALL, "ctx": 64, "min_span": 2, "scattered_fraction": 1.0})
    corpus = SyntheticCorpus(cfg)
    rng = np.random.default_rng(0)
    batch = corpus.repeats(rng, 200, scattered_fraction=1.0)
    starts = []
    for row, n in zip(batch.tokens.numpy(), batch.span_len.tolist(), strict=True):
        assert row[0] == BOS_ID and BOS_ID not in row[1:]
        # some second copy s2: n distinct tokens, an earlier copy at s1, and each of its tokens exactly
        # once before s2 (so the induction target of every second-copy token is unique)
        hits = [
            s1
            for s2 in range(1 + n, len(row) - n + 1)
            if len(set(row[s2 : s2 + n].tolist())) == n
            and all((row[1:s2] == t).sum() == 1 for t in row[s2 : s2 + n])
            for s1 in range(1, s2 - n + 1)
            if (row[s1 : s1 + n] == row[s2 : s2 + n]).all()
        ]
        assert hits, f"no clean repeat of length {n} in {row.tolist()}"
        starts.append(hits[0])
    assert len(set(starts)) > 10 and max(starts) > 10  # the first copy starts anywhere, not at 1
    # a share of 0 leaves the canonical layout (and the random stream) untouched
    plain = corpus.repeats(np.random.default_rng(1), 8)
    for row, n in zip(plain.tokens.numpy(), plain.span_len.tolist(), strict=True):
        assert (row[1 : 1 + n] == row[1 + n : 1 + 2 * n]).all()


@pytest.mark.parametrize("scattered", [0.0, 1.0])
def test_distinct_filler_leaves_only_the_planted_repeats(scattered):
    cfg = TrainConfig(**{**SMALL, "ctx": 64, "min_span": 2, "vocab_size": 96, "distinct_filler": True,
                         "scattered_fraction": scattered})
    corpus = SyntheticCorpus(cfg)
    batch = corpus.repeats(np.random.default_rng(0), 200, scattered_fraction=scattered)
    seen_filler = np.zeros(cfg.vocab_size, dtype=int)
    for row, n in zip(batch.tokens.numpy(), batch.span_len.tolist(), strict=True):
        assert row[0] == BOS_ID and row[1:].min() >= 4  # content ids only after BOS
        ids, counts = np.unique(row[1:], return_counts=True)
        twice = set(ids[counts == 2].tolist())
        assert counts.max() == 2 and len(twice) == n  # exactly the n span tokens occur twice
        starts = [i for i in range(1, len(row)) if row[i] in twice]
        first, second = starts[:n], starts[n:]
        assert (row[first] == row[second]).all() and first == list(range(first[0], first[0] + n))
        np.add.at(seen_filler, ids[counts == 1], 1)
    # the filler is Zipf-weighted: the most frequent filler id is seen far more often than the rarest
    used = seen_filler[4:]
    assert used.max() > 2 * used.min()
    if scattered == 0.0:
        assert all((r[1:1 + n] == r[1 + n:1 + 2 * n]).all()
                   for r, n in zip(batch.tokens.numpy(), batch.span_len.tolist(), strict=True))


def test_llama_head_dim_apart_from_d_model(tmp_path):
    from headscreen.series import LocalSeries

    cfg = TrainConfig(**{**SMALL, "architecture": "llama", "n_heads": 4, "head_dim": 16, "steps": 2,
                         "log_checkpoints_until": 1, "checkpoint_every": 2})
    assert cfg.d_head == 16 and cfg.d_model // cfg.n_heads == 8
    out = train_series(cfg, tmp_path / "s", progress=False)
    series = LocalSeries(out)
    hw = series.head_weights(series.checkpoints[-1])
    assert tuple(hw.W_Q.shape) == (2, 4, 32, 16) and tuple(hw.W_O.shape) == (2, 4, 16, 32)
    bridge = series.boot(series.checkpoints[-1])
    assert bridge.cfg.d_head == 16 and torch.equal(bridge.W_Q.detach(), hw.W_Q)
    with pytest.raises(ConfigError, match="'head_dim' = 16.*only llama"):
        TrainConfig(**{**SMALL, "architecture": "gpt_neox", "head_dim": 16})
    with pytest.raises(ConfigError, match="'head_dim' = 7"):
        TrainConfig(**{**SMALL, "architecture": "llama", "head_dim": 7})
