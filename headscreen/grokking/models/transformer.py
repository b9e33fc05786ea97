"""The grokking models: one small decoder-only transformer class, its presets, and the published encoder.

- `curv`: 2 layers, pre-norm (LayerNorm before attention, before the MLP and before the unembedding),
  d_model 128, 4 heads of 32, d_mlp 256, GELU, trained biases.
- `nanda`: 1 layer, no LayerNorm, d_model 128, 4 heads of 32, d_mlp 512, ReLU, every bias frozen at 0.
- `published`: the published study's bidirectional encoder read at position 0 (`arch: encoder`,
  headscreen/grokking/models/encoder.py; the fields below describe the decoder only).

Parameter names (the contract of docs/run-format.md; shapes follow TransformerLens):
    embed.W_E [vocab, d_model]    pos.W_pos [n_ctx, d_model]
    blocks.{l}.ln1.{weight,bias}, blocks.{l}.ln2.{weight,bias}, ln_final.{weight,bias}   (curv only)
    blocks.{l}.attn.W_Q/W_K/W_V [n_heads, d_model, d_head], W_O [n_heads, d_head, d_model],
    blocks.{l}.attn.b_Q/b_K/b_V [n_heads, d_head], b_O [d_model]
    blocks.{l}.mlp.W_in [d_model, d_mlp], b_in [d_mlp], W_out [d_mlp, d_model], b_out [d_model]
    unembed.W_U [d_model, n_out] (one task) or heads.{task}.W_U (several tasks: one linear head each)

Attention is causal. Only the last position ('=') feeds the loss, so the default forward runs the last
block's queries, attention and MLP at that position alone; its keys and values still come from all
positions, and every earlier block runs at every position (their outputs feed the last block's keys
and values). Position 0 sees only itself, so its stream is computed once per vocabulary id and
gathered. The result equals the full forward's last position (tests/test_grok_train.py: < 1e-5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from headscreen.config.core import ConfigError
from headscreen.grokking.models.embed import MODEL_TYPE, Embed, PosEmbed

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}
N_CTX = 3  # [a, b, '=']
ARCHES = ("decoder", "encoder")
INITS = ("normal", "pytorch-layer", "pytorch-transformer")  # the last two: the Dyck and SCAN models only


@dataclass(frozen=True)
class ModelSpec:
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 256
    act: str = "gelu"
    layer_norm: bool = True
    freeze_biases: bool = False
    init_std: float | None = None  # None: 0.8 / sqrt(d_model), TransformerLens's default initializer range
    arch: str = "decoder"  # "decoder": GrokTransformer below; "encoder": the published model (encoder.py)
    init: str = "normal"  # normal: N(0, std²); pytorch-layer / pytorch-transformer: seqmodels.init_pytorch

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"model.{name} = {v!r} is invalid: use a positive integer")
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"model.act = {self.act!r} is invalid: use one of {sorted(ACTIVATIONS)}")
        if self.arch not in ARCHES:
            raise ConfigError(f"model.arch = {self.arch!r} is invalid: use one of {list(ARCHES)}")
        if self.init not in INITS:
            raise ConfigError(f"model.init = {self.init!r} is unknown; use one of {', '.join(INITS)}")
        if self.init != "normal" and self.arch != "decoder":
            raise ConfigError(f"model.init = {self.init!r} applies to the dyck and scan models; the encoder "
                              "(arch: encoder) has its own initialisation: remove init")
        if self.init_std is not None and not self.init_std > 0:
            raise ConfigError(f"model.init_std = {self.init_std!r} is invalid: use a positive number or null")

    @property
    def std(self) -> float:
        return self.init_std if self.init_std is not None else 0.8 / math.sqrt(self.d_model)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "curv": ModelSpec(),
    "nanda": ModelSpec(n_layers=1, d_mlp=512, act="relu", layer_norm=False, freeze_biases=True),
    # the published study's 2-token bidirectional encoder read at position 0 (encoder.py)
    "published": ModelSpec(arch="encoder"),
}


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        H, D, dh = spec.n_heads, spec.d_model, spec.d_head
        self.W_Q = nn.Parameter(torch.empty(H, D, dh))
        self.W_K = nn.Parameter(torch.empty(H, D, dh))
        self.W_V = nn.Parameter(torch.empty(H, D, dh))
        self.W_O = nn.Parameter(torch.empty(H, dh, D))
        self.b_Q = nn.Parameter(torch.zeros(H, dh))
        self.b_K = nn.Parameter(torch.zeros(H, dh))
        self.b_V = nn.Parameter(torch.zeros(H, dh))
        self.b_O = nn.Parameter(torch.zeros(D))
        self.scale = 1.0 / math.sqrt(dh)

    def kv(self, x: Float[Tensor, "B T D"]) -> tuple[Float[Tensor, "B H T dh"], Float[Tensor, "B H T dh"]]:
        k = torch.einsum("btd,hde->bhte", x, self.W_K) + self.b_K[:, None]
        v = torch.einsum("btd,hde->bhte", x, self.W_V) + self.b_V[:, None]
        return k, v

    def out(self, z: Float[Tensor, "B H Tq dh"]) -> Float[Tensor, "B Tq D"]:
        return torch.einsum("bhte,hed->btd", z, self.W_O) + self.b_O

    def attend(self, xq: Float[Tensor, "B Tq D"], k: Float[Tensor, "B H T dh"], v: Float[Tensor, "B H T dh"],
               causal: bool) -> Float[Tensor, "B Tq D"]:
        """Queries from xq, the last Tq of the T key positions (causal: query i sees keys <= T - Tq + i)."""
        q = torch.einsum("btd,hde->bhte", xq, self.W_Q) + self.b_Q[:, None]  # [B, H, Tq, dh]
        scores = q @ k.transpose(-1, -2) * self.scale  # [B, H, Tq, T]
        Tq, T = q.shape[2], k.shape[2]
        if causal and Tq > 1:
            mask = torch.ones(Tq, T, dtype=torch.bool, device=scores.device).triu(T - Tq + 1)
            scores = scores.masked_fill(mask, float("-inf"))
        return self.out(scores.softmax(-1) @ v)

    def forward(self, x: Float[Tensor, "B T D"], last_only: bool) -> Float[Tensor, "B Tq D"]:
        k, v = self.kv(x)
        return self.attend(x[:, -1:] if last_only else x, k, v, causal=not last_only)


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(spec.d_model, spec.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(spec.d_mlp))
        self.W_out = nn.Parameter(torch.empty(spec.d_mlp, spec.d_model))
        self.b_out = nn.Parameter(torch.zeros(spec.d_model))
        self.act = ACTIVATIONS[spec.act]

    def forward(self, x: Float[Tensor, "B T D"]) -> Float[Tensor, "B T D"]:
        return self.act(x @ self.W_in + self.b_in) @ self.W_out + self.b_out


def _norm(spec: ModelSpec) -> nn.Module:
    return nn.LayerNorm(spec.d_model) if spec.layer_norm else nn.Identity()


class Block(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.ln1 = _norm(spec)
        self.attn = Attention(spec)
        self.ln2 = _norm(spec)
        self.mlp = MLP(spec)

    def forward(self, x: Float[Tensor, "B T D"], last_only: bool) -> Float[Tensor, "B Tq D"]:
        h = self.attn(self.ln1(x), last_only)
        x = (x[:, -1:] if last_only else x) + h
        return x + self.mlp(self.ln2(x))


class Unembed(nn.Module):
    def __init__(self, d_model: int, n_out: int):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(d_model, n_out))


class GrokTransformer(nn.Module):
    """Logits [B, n_tasks, p] for inputs [B, 3] = [a, b, '=']: one trunk, one unembedding per task."""

    def __init__(self, spec: ModelSpec, p: int, tasks: Sequence[str]):
        super().__init__()
        self.spec, self.p, self.tasks = spec, p, tuple(tasks)
        self.embed = Embed(p + 1, spec.d_model)
        self.pos = PosEmbed(N_CTX, spec.d_model)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.n_layers))
        self.ln_final = _norm(spec)
        if len(self.tasks) == 1:
            self.unembed = Unembed(spec.d_model, p)
        else:
            self.heads = nn.ModuleDict({t: Unembed(spec.d_model, p) for t in self.tasks})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights ~ N(0, spec.std²), biases 0, LayerNorm gains 1; frozen biases (nanda) stay 0."""
        if self.spec.init != "normal":
            raise ConfigError(f"model.init = {self.spec.init!r} applies to the dyck and scan models only; "
                              "the modular-arithmetic model uses init: normal (with init_std)")
        for name, prm in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("W_"):
                nn.init.normal_(prm, std=self.spec.std)
            elif leaf == "weight":  # LayerNorm gain
                nn.init.ones_(prm)
            else:
                nn.init.zeros_(prm)
            if self.spec.freeze_biases and leaf.startswith("b_"):
                prm.requires_grad_(False)

    def unembeddings(self) -> list[Unembed]:
        return [self.unembed] if len(self.tasks) == 1 else [self.heads[t] for t in self.tasks]

    def forward(self, tokens: Int[Tensor, "B T"], *, fast: bool = True) -> Float[Tensor, "B tasks p"]:
        if fast and tokens.shape[1] > 1:
            x = self._fast_last_position(tokens)
        else:
            x = self.embed.W_E[tokens] + self.pos.W_pos[: tokens.shape[1]]
            for block in self.blocks:
                x = block(x, last_only=False)
            x = x[:, -1]
        x = self.ln_final(x)  # [B, D]
        return torch.stack([x @ u.W_U for u in self.unembeddings()], dim=1)

    def _fast_last_position(self, tokens: Int[Tensor, "B T"]) -> Float[Tensor, "B D"]:
        """The residual stream at the last position, computing only what reaches it (module docstring).
        Position 0 attends to itself alone, so its stream depends on the first token only: it is run once
        per vocabulary id ([V, D]) and gathered, instead of once per example."""
        first = tokens[:, 0]
        x0 = self.embed.W_E + self.pos.W_pos[0]  # [V, D]: position 0 for every possible first token
        x = self.embed.W_E[tokens[:, 1:]] + self.pos.W_pos[1 : tokens.shape[1]]  # [B, T-1, D]
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            attn = block.attn
            k0, v0 = attn.kv(block.ln1(x0)[:, None])  # [V, H, 1, dh]
            h = block.ln1(x)
            k, v = attn.kv(h)  # [B, H, T-1, dh]
            k, v = torch.cat([k0[first], k], dim=2), torch.cat([v0[first], v], dim=2)
            if i == last:
                x = x[:, -1:] + attn.attend(h[:, -1:], k, v, causal=False)
            else:
                x = x + attn.attend(h, k, v, causal=True)
                x0 = x0 + attn.out(v0)[:, 0]  # softmax over one key: the output is that key's value
                x0 = x0 + block.mlp(block.ln2(x0))
            x = x + block.mlp(block.ln2(x))
        return x[:, -1]

    def hf_config(self) -> dict:
        """The config.json of a snapshot: what `headscreen.series` needs to read the attention weights."""
        s = self.spec.to_dict()
        s.pop("arch")  # the decoder's config.json is as it was before the encoder existed
        s.pop("init")  # (and before the Dyck/SCAN models' PyTorch inits, which it refuses)
        return {"model_type": MODEL_TYPE, "architectures": [type(self).__name__], **s,
                "vocab_size": self.p + 1, "n_ctx": N_CTX, "n_out": self.p, "p": self.p,
                "tasks": list(self.tasks), "task": self.tasks[0] if len(self.tasks) == 1 else "multitask"}


def model_class(spec: ModelSpec) -> type[nn.Module]:
    if spec.arch == "encoder":
        from headscreen.grokking.models.encoder import EncoderTransformer

        return EncoderTransformer
    return GrokTransformer


def build_model(spec: ModelSpec, p: int, tasks: Sequence[str], seed: int) -> nn.Module:
    """A freshly initialised model; the same (spec, p, tasks, seed) always gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(spec)(spec, p, tasks)


def load_model(folder, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Rebuild a snapshot folder (config.json + model.safetensors) as a GrokTransformer."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("model_type") != MODEL_TYPE:
        raise ConfigError(f"{folder / 'config.json'}: model_type {cfg.get('model_type')!r} is not {MODEL_TYPE!r}")
    spec = ModelSpec(**{k: cfg[k] for k in ModelSpec.__dataclass_fields__ if k in cfg})
    model = model_class(spec)(spec, int(cfg["p"]), cfg["tasks"])
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.to(dtype)
