"""The 51M synthetic recipe (model_configs/synthetic-51m.yaml) and training on a `datasets` text corpus."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from headscreen.config import load_config
from headscreen.synthetic import TrainConfig, build_model, load_tokenizer, train_series
from headscreen.synthetic import train as train_mod
from headscreen.synthetic.stories import story_text

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def write_story_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    """`n` grammar stories as a JSON-lines corpus (column `text`)."""
    stories = story_text(n, seed=seed).replace(" <eos>", "").strip().split("\n\n")
    path.write_text("".join(json.dumps({"text": s, "source": "grammar"}) + "\n" for s in stories), encoding="utf-8")
    return path


def recipe() -> TrainConfig:
    return TrainConfig.from_dict(load_config("synthetic-51m").section("train"))


def test_the_recipe_is_the_source_studys_ts51m():
    cfg = recipe()
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads) == (8, 512, 16)
    assert (cfg.lr, cfg.weight_decay, cfg.betas[1], cfg.steps) == (1e-3, 0.5, 0.95, 10_000)
    steps = cfg.checkpoint_steps()
    assert steps == tuple(range(0, 10_001, 200)) and len(steps) == 51
    assert cfg.corpus == "roneneldan/TinyStories" and cfg.seed == 42 and 0 < cfg.story_fraction < 1
    assert "seeds\n# 42 / 123 / 149 / 256" in (REPO / "model_configs/synthetic-51m.yaml").read_text()


def test_the_recipe_builds_51m_parameters():
    cfg = recipe()
    with torch.device("meta"):  # shapes only; the training test below builds and saves the real one
        model = build_model(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 51_000_000) <= 2_000_000, n
    # the independent count: untied embeddings and unembedding, then 8 GPT-NeoX blocks with biases
    d, f, v = cfg.d_model, cfg.d_mlp, cfg.vocab_size
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
    assert n == 2 * v * d + cfg.n_layers * block + 2 * d


def test_the_51m_model_trains_two_steps_on_a_local_jsonl_corpus(tmp_path):
    """The recipe's model (51M parameters) on a JSON-lines corpus the test writes; a short context and
    batch keep it quick. The BPE tokenizer is trained on the corpus and saved with the series."""
    from pipelines.train import train

    corpus = write_story_jsonl(tmp_path / "stories.jsonl", 300)
    out = train("synthetic-51m", tmp_path / "s51m", corpus=corpus, device="cpu", progress=False,
                overrides={"steps": 2, "ctx": 24, "batch_size": 4, "eval_batch_size": 2, "checkpoint_every": 2,
                           "warmup": 1, "max_span": 4, "tokenizer_docs": 300})
    series = json.loads((out / "series.json").read_text())
    assert series["complete"] and [c["step"] for c in series["checkpoints"]] == [0, 2]
    assert series["train_config"]["corpus"] == str(corpus.resolve()) and series["train_config"]["d_model"] == 512
    assert series["device"]["device"] == "cpu"
    losses = [c["train_loss"] for c in series["checkpoints"]]
    assert all(torch.isfinite(torch.tensor(losses)))
    # the saved checkpoint is the 51M model
    from safetensors import safe_open

    with safe_open(out / "step000002" / "model.safetensors", framework="pt") as f:
        n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert abs(n - 51_000_000) <= 2_000_000
    # the corpus stream advanced: checkpoint 2's batch starts past checkpoint 0's
    assert series["checkpoints"][0]["corpus_position"] == [0, 0]
    assert series["checkpoints"][1]["corpus_position"] > [0, 0]
    tok = load_tokenizer(out)
    ids = tok("Lily had a ball .", add_special_tokens=False)["input_ids"]
    assert tok.bos_token_id == 0 and tok.eos_token_id == 1 and max(ids) < 25_216
    assert tok.decode(ids) == "Lily had a ball ."


SMALL_TEXT = dict(architecture="llama", n_layers=1, d_model=32, n_heads=2, ctx=24, vocab_size=320, batch_size=4,
                  steps=8, lr=3e-3, warmup=2, log_checkpoints_until=0, checkpoint_every=2, eval_batch_size=2,
                  story_fraction=0.75, min_span=2, max_span=4, scattered_fraction=1.0, tokenizer_docs=200, threads=1)


def test_text_corpus_series_resumes_bitwise_and_reads_the_stream_in_order(tmp_path, monkeypatch):
    from headscreen.synthetic.text import prepare_tokenizer

    corpus = write_story_jsonl(tmp_path / "stories.jsonl", 400)
    cfg = TrainConfig(**SMALL_TEXT, corpus=str(corpus))
    a = train_series(cfg, tmp_path / "a", progress=False)
    steps = [c["step"] for c in json.loads((a / "series.json").read_text())["checkpoints"]]
    assert steps == [0, 2, 4, 6, 8]

    def files(root: Path) -> dict[int, bytes]:
        return {s: (root / f"step{s:06d}" / "model.safetensors").read_bytes() for s in steps}

    original = train_mod._save_checkpoint

    def crash_at_6(model, out, step):
        if step == 6:
            raise KeyboardInterrupt
        original(model, out, step)

    monkeypatch.setattr(train_mod, "_save_checkpoint", crash_at_6)
    with pytest.raises(KeyboardInterrupt):
        train_series(cfg, tmp_path / "b", progress=False)
    monkeypatch.setattr(train_mod, "_save_checkpoint", original)
    b = train_series(cfg, tmp_path / "b", progress=False)
    assert files(b) == files(a)
    meta_a, meta_b = (json.loads((r / "series.json").read_text()) for r in (a, b))
    assert [c["corpus_position"] for c in meta_a["checkpoints"]] == [c["corpus_position"] for c in meta_b["checkpoints"]]
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    # the series boots in a TransformerBridge with its BPE tokenizer, as the screen boots it
    from headscreen.series.boot import boot_bridge

    bridge = boot_bridge(a / "step000008", a)
    text = "Lily had a red ball ."
    ids = bridge.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == prepare_tokenizer(cfg, a, resume=True).encode(text, add_special_tokens=False).ids
    assert bridge.cfg.d_vocab == cfg.vocab_size and bridge.tokenizer.bos_token_id == 0


def test_text_rows_of_a_batch_are_the_packed_corpus(tmp_path):
    from headscreen.synthetic.corpus import SyntheticCorpus
    from headscreen.synthetic.text import CorpusText, prepare_tokenizer

    corpus = write_story_jsonl(tmp_path / "stories.jsonl", 200)
    cfg = TrainConfig(**{**SMALL_TEXT, "story_fraction": 1.0}, corpus=str(corpus))
    tok = prepare_tokenizer(cfg)
    batch = SyntheticCorpus(cfg, text=CorpusText(cfg, tok)).batch(0)  # every row a text row
    docs = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    stream = [t for d in docs[:40] for t in [*tok.encode(d, add_special_tokens=False).ids, 1]]
    assert (batch[:, 0] == 0).all()
    assert batch[:, 1:].reshape(-1).tolist() == stream[: cfg.batch_size * (cfg.ctx - 1)]


def test_corpus_config_errors_name_the_field(tmp_path):
    from headscreen.config import ConfigError

    with pytest.raises(ConfigError, match="'vocab_size'.*BPE"):
        TrainConfig(corpus="x.jsonl", vocab_size=128)
    with pytest.raises(ConfigError, match="'corpus' must be a string or null"):
        TrainConfig.from_dict({"corpus": 3})
    with pytest.raises(ConfigError, match="'text_column'"):
        TrainConfig(text_column=" ")


def test_cli_train_with_a_corpus_without_the_text_column_fails_in_one_line(tmp_path, capsys):
    from pipelines.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"story": "a b c", "id": 1}\n', encoding="utf-8")
    rc = main(["--threads", "1", "train", "--config", "synthetic-51m", "--corpus", str(bad), "--out",
               str(tmp_path / "s"), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no column 'text'" in err[0] and "['id', 'story']" in err[0]


def test_a_series_written_before_the_corpus_keys_is_still_the_same_recipe(tmp_path):
    """series.json files written before `corpus` & co. existed lack those keys: they count at their defaults."""
    cfg = TrainConfig(n_layers=1, d_model=16, n_heads=2, ctx=16, batch_size=2, steps=2, checkpoint_every=2,
                      log_checkpoints_until=0, eval_batch_size=2, min_span=2, threads=1)
    out = train_series(cfg, tmp_path / "old", progress=False)
    meta = json.loads((out / "series.json").read_text())
    for key in ("corpus", "corpus_split", "text_column", "tokenizer", "tokenizer_docs"):
        del meta["train_config"][key]
    (out / "series.json").write_text(json.dumps(meta))
    assert train_series(cfg, out, progress=False) == out  # complete and the same recipe: nothing to do
    with pytest.raises(FileExistsError, match=r"\(corpus: None -> 'x.jsonl'; vocab_size: 128 -> 300\)"):
        train_series(TrainConfig(**{**cfg.to_dict(), "betas": cfg.betas, "corpus": "x.jsonl", "vocab_size": 300}),
                     out, progress=False)
