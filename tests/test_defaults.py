"""Probe defaults that fit the model: `headscreen screen <series>` with no config on all six architectures."""

from __future__ import annotations

import json

import pytest
import torch

from headscreen.probes.suite import ProbeSuite
from headscreen.testing import ARCHITECTURES, save_tiny_series, save_word_tokenizer
from pipelines.cli import main

torch.set_num_threads(1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_screen_without_config_fits_the_model(arch, tmp_path):
    # context 40 (< 256) and vocabulary 300 (< 10000): the published defaults fit neither
    root = save_tiny_series(tmp_path / arch, arch, [0, 5], n_ctx=40, vocab=300)
    out = tmp_path / "run"
    assert main(["--threads", "1", "screen", str(root), "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    probes = m["config"]["probes"]
    assert probes["seq_len"] == 40  # min(256, n_ctx)
    assert probes["token_range"] == [2, 300]  # ids 0, 1 are <bos>/<eos>
    assert probes["bos_id"] is None  # the word tokenizer does not prepend its BOS
    assert probes["repeated_span"] == 20
    assert set(m["probe_defaults"]) == {"seq_len", "token_range", "bos_id", "repeated_span", "dtype"}
    assert m["probe_defaults"]["dtype"].startswith("auto: float32") and m["device"]["param_dtype"] == "float32"
    assert m["probes"]["retrieval"]["seq_len"] == 40 and m["probes"]["repeated"]["seq_len"] == 40
    assert (out / "selectivity.parquet").exists()


def test_a_config_still_overrides(tmp_path):
    root = save_tiny_series(tmp_path / "s", "gpt2", [0, 5], n_ctx=40, vocab=300)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: c\nsource: {kind: local, local_path: x}\n"
                   "probes: {seq_len: 24, bos_id: 0, n_retrieval: 8, pair_range: [2, 10]}\n")
    out = tmp_path / "run"
    assert main(["--threads", "1", "screen", str(root), "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["probes"]["seq_len"] == 24 and m["config"]["probes"]["bos_id"] == 0
    assert m["config"]["probes"]["repeated_span"] == 11  # (24 - 1 BOS) // 2, from the configured seq_len
    assert set(m["probe_defaults"]) == {"token_range", "repeated_span", "dtype"}  # dtype: auto


def test_defaults_for_natural_vocabularies_and_bos_tokenizers(tmp_path):
    from tokenizers import processors

    from headscreen.series import load_tokenizer

    suite = ProbeSuite()
    assert suite.auto_fields() == ["seq_len", "token_range", "bos_id", "repeated_span"]
    big, why = suite.for_model(n_ctx=2048, d_vocab=50304, hf_config={"bos_token_id": 0, "eos_token_id": 50256})
    assert (big.seq_len, big.token_range, big.bos_id, big.repeated_span) == (256, (100, 10000), None, 50)
    assert "published" in why["token_range"]
    # a tokenizer that starts every text with its BOS (as Llama's does): the probes get that BOS
    d = save_word_tokenizer(tmp_path / "tok", vocab=300)
    tok = load_tokenizer(d)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    fitted, _ = suite.for_model(n_ctx=64, d_vocab=300, tokenizer=tok)
    assert fitted.bos_id == 0 and fitted.repeated_span == 31 and fitted.token_range == (2, 300)
    # specials at the top of the vocabulary are cut off too
    top, _ = suite.for_model(n_ctx=64, d_vocab=300, hf_config={"eos_token_id": 299, "pad_token_id": 298})
    assert top.token_range == (0, 298)
    with pytest.raises(ValueError, match="seq_len='long'"):
        ProbeSuite(seq_len="long")
    assert ProbeSuite(seq_len=32).seq_len == 32 and ProbeSuite(seq_len=32).auto_fields() == ["token_range", "bos_id",
                                                                                              "repeated_span"]
