"""The published study's model (Xu, arXiv 2602.16746): a 2-token bidirectional pre-norm encoder read at
position 0 (docs/methods.md, "Reproducing the published grokking results").

Input [a, b] (a [B, 3] task row [a, b, '='] is read as its first two tokens), token embedding + learned
position embedding, `n_layers` pre-norm encoder layers (LayerNorm → multi-head self-attention over both
positions → residual; LayerNorm → Linear → GELU → Linear → residual), a final LayerNorm, and a linear
head with bias applied at position 0.

Parameter names and layouts are those of torch.nn.TransformerEncoder (packed attention in-projection):
    embed.W_E [p, d_model]            pos.W_pos [2, d_model]
    layers.{l}.self_attn.in_proj_weight [3·d_model, d_model] = [W_q; W_k; W_v] (rows h·d_head.. of each
        block are head h), in_proj_bias [3·d_model], out_proj.weight [d_model, d_model] (columns h·d_head..
        are head h), out_proj.bias [d_model]
    layers.{l}.norm1/norm2.{weight,bias}, linear1.{weight [d_mlp, d_model], bias}, linear2.{weight, bias}
    ln_final.{weight,bias}            head.weight [p, d_model], head.bias [p]
headscreen.series reads per-head W_Q/W_K/W_V/W_O from the packed tensors (series/adapters.py).

Initialisation (`reset_parameters`, under the seed of build_model): the RNG draws, in order, of the
published construction with torch's default initialisers: W_E ~ N(0, 1); W_pos ~ N(0, 1)/√d_model;
one layer (out_proj: Kaiming-uniform weight, then its bias drawn; in_proj: Xavier-uniform, then
in_proj_bias and out_proj.bias set to 0; linear1 then linear2: Kaiming-uniform weight, bias
U(±1/√fan_in)); every other layer a copy of that one (the published stack clones its layer); the head
like a Linear. So the same seed gives the published model's initial weights bit for bit
(tests/test_grok_encoder.py).

Speed: only position 0 reaches the head, so the last layer computes its query, attention output and
MLP at position 0 alone (keys and values still come from both positions); equal to the full forward.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from headscreen.grokking.models.embed import MODEL_TYPE, Embed, PosEmbed

N_INPUT = 2  # tokens read: a, b


class EncoderAttention(nn.Module):
    """Multi-head self-attention with a packed in-projection (torch layout), written out."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: Float[Tensor, "B T D"], q_positions: int) -> Float[Tensor, "B Tq D"]:
        """Attention of the first `q_positions` positions' queries over all T positions (no mask)."""
        B, T, D = x.shape
        H, dh = self.n_heads, self.d_head
        w, b = self.in_proj_weight, self.in_proj_bias
        q = F.linear(x[:, :q_positions], w[:D], b[:D]).view(B, q_positions, H, dh).transpose(1, 2)
        kv = F.linear(x, w[D:], b[D:]).view(B, T, 2, H, dh)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # [B, H, T, dh]
        att = (q @ k.transpose(-1, -2) / math.sqrt(dh)).softmax(-1)  # [B, H, Tq, T]
        z = (att @ v).transpose(1, 2).reshape(B, q_positions, D)
        return self.out_proj(z)


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_mlp: int):
        super().__init__()
        self.self_attn = EncoderAttention(d_model, n_heads)
        self.linear1 = nn.Linear(d_model, d_mlp)
        self.linear2 = nn.Linear(d_mlp, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: Float[Tensor, "B T D"], q_positions: int) -> Float[Tensor, "B Tq D"]:
        h = x[:, :q_positions] + self.self_attn(self.norm1(x), q_positions)
        return h + self.linear2(F.gelu(self.linear1(self.norm2(h))))


def _linear_default(lin: nn.Linear) -> None:
    """torch's default nn.Linear initialisation (Kaiming-uniform weight, then U(±1/√fan_in) bias)."""
    nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5))
    if lin.bias is not None:
        fan_in = lin.weight.shape[1]
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(lin.bias, -bound, bound)


class EncoderTransformer(nn.Module):
    """Logits [B, 1, p] (one task) for rows [B, ≥2] whose first two tokens are a and b."""

    def __init__(self, spec, p: int, tasks):
        super().__init__()
        tasks = tuple(tasks)
        if len(tasks) != 1:
            raise ValueError(f"the encoder model takes one task; got {list(tasks)}")
        if spec.d_head * spec.n_heads != spec.d_model:
            raise ValueError(f"model.d_head {spec.d_head} × n_heads {spec.n_heads} must equal d_model {spec.d_model} "
                             "for the encoder (packed in-projection)")
        if spec.act != "gelu" or not spec.layer_norm or spec.freeze_biases:
            raise ValueError("the encoder model is the published one: act gelu, layer_norm true, freeze_biases false")
        self.spec, self.p, self.tasks = spec, p, tasks
        D = spec.d_model
        with torch.random.fork_rng(devices=[]):  # the modules' own construction draws leave the stream alone
            self.embed = Embed(p, D)
            self.pos = PosEmbed(N_INPUT, D)
            self.layers = nn.ModuleList(EncoderLayer(D, spec.n_heads, spec.d_mlp) for _ in range(spec.n_layers))
            self.ln_final = nn.LayerNorm(D)
            self.head = nn.Linear(D, p)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The published construction's draws, in its order (module docstring)."""
        nn.init.normal_(self.embed.W_E)
        self.pos.W_pos.copy_(torch.randn(self.pos.W_pos.shape) / math.sqrt(self.spec.d_model))
        first = self.layers[0]
        _linear_default(first.self_attn.out_proj)
        nn.init.xavier_uniform_(first.self_attn.in_proj_weight)
        nn.init.zeros_(first.self_attn.in_proj_bias)
        nn.init.zeros_(first.self_attn.out_proj.bias)
        _linear_default(first.linear1)
        _linear_default(first.linear2)
        for norm in (first.norm1, first.norm2, self.ln_final):
            nn.init.ones_(norm.weight)
            nn.init.zeros_(norm.bias)
        state = copy.deepcopy(first.state_dict())
        for layer in self.layers[1:]:
            layer.load_state_dict(state)
        _linear_default(self.head)

    def forward(self, tokens: Int[Tensor, "B T"], *, fast: bool = True) -> Float[Tensor, "B 1 p"]:
        if tokens.shape[1] < N_INPUT:
            raise ValueError(f"the encoder reads tokens [a, b]; got rows of {tokens.shape[1]} token(s)")
        x = self.embed.W_E[tokens[:, :N_INPUT]] + self.pos.W_pos  # [B, 2, D]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, 1 if (fast and i == last) else N_INPUT)
        return self.head(self.ln_final(x[:, 0])).unsqueeze(1)

    def hf_config(self) -> dict:
        s = self.spec
        return {"model_type": MODEL_TYPE, "architectures": [type(self).__name__], **s.to_dict(),
                "vocab_size": self.p, "n_ctx": N_INPUT, "n_out": self.p, "p": self.p, "tasks": list(self.tasks),
                "task": self.tasks[0]}
