"""Checkpoint series: lazy attention reading for six architectures, step parsing, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from headscreen.series import (
    SUPPORTED,
    CheckpointNotFound,
    CorruptCheckpoint,
    HubSeries,
    HubUnavailable,
    LocalSeries,
    NonFiniteWeights,
    NoWeightsError,
    PickleRefused,
    ShapeMismatch,
    UnsupportedArchitecture,
    parse_step,
    parse_tokens,
    revisions,
)
from headscreen.testing import ARCHITECTURES, build_tiny_model, save_tiny_model, save_tiny_series

torch.set_num_threads(1)
STEPS = [0, 10, 20]


@pytest.fixture(scope="module")
def series_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("series")
    for arch in ARCHITECTURES:
        save_tiny_series(root / arch, arch, STEPS)
    return root


def _o_proj(hf, arch: str, layer: int) -> torch.nn.Parameter:
    if arch == "gpt2":
        return hf.transformer.h[layer].attn.c_proj.weight  # Conv1D [in, out]
    if arch == "gpt_neox":
        return hf.gpt_neox.layers[layer].attention.dense.weight  # [out, in]
    return hf.model.layers[layer].self_attn.o_proj.weight  # [out, in]


def test_supported_architectures_cover_the_six():
    assert set(SUPPORTED) == set(ARCHITECTURES) | {"headscreen-grok"}  # + the toy grokking models


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_head_weights_equal_bridge_and_read_only_attention(series_root, arch):
    series = LocalSeries(series_root / arch)
    assert series.steps == STEPS
    ckpt = series.checkpoints[-1]
    src = series.tensor_source(ckpt)
    from headscreen.series import read_head_weights

    hw = read_head_weights(src, series.geometry(ckpt))
    # only attention tensors were read, and every attention weight was read
    assert src.keys_read, "nothing was read"
    assert all(("attn" in k) or ("attention" in k) for k in src.keys_read), src.keys_read
    n_attention_weights = sum(1 for k in src.keys() if ("attn" in k or "attention" in k) and "norm" not in k)
    assert len(set(src.keys_read)) == n_attention_weights
    assert all("mlp" not in k and "embed" not in k for k in src.keys_read)

    bridge = series.boot(ckpt)
    for name in ("W_Q", "W_K", "W_V", "W_O"):
        ours, theirs = getattr(hw, name), getattr(bridge, name)
        assert ours.shape == theirs.shape, name
        assert torch.equal(ours, theirs.detach()), f"{arch} {name} differs"
    if arch in ("llama", "olmo", "olmo2", "olmoe"):
        assert hw.n_kv_heads == hw.n_heads // 2  # GQA, not expanded
    if hw.b_Q is not None:
        assert torch.equal(hw.b_Q, bridge.b_Q.detach())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_zeroing_o_proj_slice_equals_zeroing_hook_z(series_root, arch):
    from transformers import AutoModelForCausalLM

    series = LocalSeries(series_root / arch)
    ckpt = series.checkpoints[-1]
    bridge = series.boot(ckpt)
    hf = AutoModelForCausalLM.from_pretrained(str(ckpt.path), attn_implementation="eager").eval()
    layer, head, dh = 1, 2, bridge.cfg.d_head
    toks = torch.randint(2, 500, (2, 12), generator=torch.Generator().manual_seed(0))

    def zero_head(z, hook):
        z[:, :, head, :] = 0.0
        return z

    with torch.no_grad():
        ours = bridge.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero_head)])
        clean = bridge(toks)
        w = _o_proj(hf, arch, layer)
        if arch == "gpt2":
            w[head * dh:(head + 1) * dh, :] = 0.0
        else:
            w[:, head * dh:(head + 1) * dh] = 0.0
        theirs = hf(toks).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    assert (ours - clean).abs().max().item() > 1e-3  # the ablation did something


@pytest.mark.parametrize(
    "name, step, tokens",
    [
        ("step100", 100, None),
        ("step_000100", 100, None),
        ("step-100", 100, None),
        ("checkpoint-100", 100, None),
        ("checkpoint_100", 100, None),
        ("global_step100", 100, None),
        ("stage1-step100-tokens1B", 100, 10**9),
        ("step20000-tokens84B", 20000, 84 * 10**9),
        ("100", 100, None),
        ("final", None, None),
        ("stepwise", None, None),
    ],
)
def test_step_parsing(name, step, tokens):
    assert parse_step(name) == step
    assert parse_tokens(name) == tokens


def test_pythia_schedule_has_154_revisions():
    from headscreen.config import config_series, load_config

    s = config_series(load_config("pythia-1b"))
    names = [c.name for c in s]
    assert len(names) == 154
    assert names[:12] == ["step0", "step1", "step2", "step4", "step8", "step16", "step32", "step64", "step128",
                          "step256", "step512", "step1000"]
    assert names[-1] == "step143000"
    assert s.checkpoints[-1].tokens == 143000 * 2097152


def test_olmo_revision_names_round_tokens():
    revs = revisions({"steps": [1000, 20000]}, "step{step}-tokens{tokens_b}B", 4194304)
    assert [r.revision for r in revs] == ["step1000-tokens4B", "step20000-tokens84B"]
    revs2 = revisions({"steps": [5]}, "stage1-step{step}-tokens{tokens_b}B", 4 * 10**9)
    assert revs2[0].revision == "stage1-step5-tokens20B"


def test_series_json_manifest_wins_over_folder_names(tmp_path):
    root = save_tiny_series(tmp_path / "s", "gpt_neox", [1, 2], folder="ck{step}")
    (root / "series.json").write_text(json.dumps({"checkpoints": [
        {"step": 100, "tokens": 1000, "path": "ck1", "train_loss": 4.0},
        {"step": 200, "tokens": 2000, "path": "ck2", "train_loss": 3.0},
    ]}))
    s = LocalSeries(root)
    assert s.steps == [100, 200]
    assert s.checkpoints[1].tokens == 2000 and s.checkpoints[1].meta["train_loss"] == 3.0
    assert s.tokenizer_dir() == root.resolve()


def test_no_hub_call_for_local_path(series_root, monkeypatch):
    import socket

    import huggingface_hub

    def refuse(*a, **k):
        raise AssertionError("network/hub access attempted for a local series")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    s = LocalSeries(series_root / "llama")
    s.head_weights(s.checkpoints[0])
    bridge = s.boot(s.checkpoints[0])
    assert bridge(torch.tensor([[0, 5, 6]])).shape[-1] == 512


def test_hub_series_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after import: still honored
    s = HubSeries("EleutherAI/pythia-160m", revisions({"steps": [0, 1000]}, "step{step}"), cache_dir=tmp_path)
    with pytest.raises(HubUnavailable, match="EleutherAI/pythia-160m at revision 'step0'.*local"):
        s.head_weights(s.checkpoints[0])


def test_tokenizer_less_checkpoint_boots(tmp_path):
    d = save_tiny_model(tmp_path / "m", "gpt_neox", with_tokenizer=False)
    s = LocalSeries(d)
    assert s.tokenizer_dir() is None
    bridge = s.boot(s.checkpoints[0])
    assert bridge.tokenizer is None
    assert bridge(torch.tensor([[1, 2, 3]])).shape == (1, 3, 512)


# --- bad input ------------------------------------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(CheckpointNotFound, match="does not exist"):
        LocalSeries(tmp_path / "nope")


def test_folder_without_weights(tmp_path):
    d = tmp_path / "s" / "step10"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    s = LocalSeries(tmp_path / "s")
    with pytest.raises(NoWeightsError, match="step10"):
        s.head_weights(s.checkpoints[0])


def test_unnamed_folder_is_refused(tmp_path):
    save_tiny_model(tmp_path / "s" / "final", "gpt2", with_tokenizer=False)
    save_tiny_model(tmp_path / "s" / "step5", "gpt2", with_tokenizer=False)
    with pytest.raises(CheckpointNotFound, match="'final'"):
        LocalSeries(tmp_path / "s")


def test_unknown_architecture_lists_supported(tmp_path):
    d = save_tiny_model(tmp_path / "s" / "step1", "gpt2", with_tokenizer=False)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="mamba", architectures=["MambaForCausalLM"])
    (d / "config.json").write_text(json.dumps(cfg))
    s = LocalSeries(tmp_path / "s")
    with pytest.raises(UnsupportedArchitecture, match="gpt_neox"):
        s.head_weights(s.checkpoints[0])


def test_shape_change_within_series(tmp_path):
    save_tiny_model(tmp_path / "s" / "step1", "llama", with_tokenizer=False)
    save_tiny_model(tmp_path / "s" / "step2", "llama", with_tokenizer=False, d_model=32)
    s = LocalSeries(tmp_path / "s")
    s.head_weights(s.checkpoints[0])
    with pytest.raises(ShapeMismatch, match=r"step 2 .*W_K has shape"):
        s.head_weights(s.checkpoints[1])


def test_nan_weights_named(tmp_path):
    model = build_tiny_model("gpt_neox")
    with torch.no_grad():
        model.gpt_neox.layers[1].attention.dense.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "s" / "step3")
    s = LocalSeries(tmp_path / "s")
    with pytest.raises(NonFiniteWeights, match=r"step3.*layer 1 W_O"):
        s.head_weights(s.checkpoints[0])


def test_truncated_safetensors(tmp_path):
    d = save_tiny_model(tmp_path / "s" / "step7", "gpt2", with_tokenizer=False)
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    s = LocalSeries(tmp_path / "s")
    with pytest.raises(CorruptCheckpoint, match=r"step7.*truncated"):
        s.head_weights(s.checkpoints[0])


def test_pickle_refused_then_loaded_weights_only(tmp_path):
    model = build_tiny_model("gpt_neox")
    d = tmp_path / "s" / "step4"
    d.mkdir(parents=True)
    model.config.save_pretrained(d)
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    s = LocalSeries(tmp_path / "s")
    with pytest.raises(PickleRefused, match="--allow-pickle"):
        s.head_weights(s.checkpoints[0])
    s2 = LocalSeries(tmp_path / "s", allow_pickle=True)
    hw = s2.head_weights(s2.checkpoints[0])
    ref = model.gpt_neox.layers[0].attention.dense.weight.detach()
    assert torch.equal(hw.W_O[0], ref.reshape(64, 4, 16).permute(1, 2, 0))


def test_sharded_checkpoint(tmp_path):
    model = build_tiny_model("llama")
    d = tmp_path / "s" / "step9"
    model.save_pretrained(d, max_shard_size="20KB")
    assert (d / "model.safetensors.index.json").exists()
    s = LocalSeries(tmp_path / "s")
    hw = s.head_weights(s.checkpoints[0])
    q = model.model.layers[1].self_attn.q_proj.weight.detach()
    assert torch.equal(hw.W_Q[1], q.reshape(4, 16, 64).transpose(1, 2))
