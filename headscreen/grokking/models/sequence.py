"""Sequence models of the Dyck-1 and SCAN tasks, built from the blocks of `headscreen.grokking.models.transformer`.

- `DyckTransformer`: the pre-norm causal transformer (ModelSpec, `curv` preset by default) with a
  prediction at every position: logits [B, T, n_classes].
- `ScanTransformer`: an encoder–decoder. Parameters keep the grok naming contract so that the series
  adapter and the whole-trunk vector read them unchanged: `blocks.0 .. blocks.{L-1}` are the encoder
  (bidirectional self-attention), `blocks.L .. blocks.{2L-1}` the decoder (causal self-attention `attn`,
  then cross-attention `cross_attn` over the encoder output, then the MLP). `embed.W_E` embeds the
  command words, `tgt_embed.W_E` the actions, `pos.W_pos` holds the encoder positions and
  `tgt_pos.W_pos` the decoder positions; `unembed.W_U` maps to the action vocabulary. config.json
  counts 2L layers (`n_encoder_layers` = L).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from headscreen.grokking.models.transformer import (
    MODEL_TYPE,
    Attention,
    Block,
    Embed,
    ModelSpec,
    PosEmbed,
    Unembed,
    _norm,
)


def _init(model: nn.Module, spec: ModelSpec) -> None:
    if spec.init != "normal":
        init_pytorch(model, spec)
        return
    for name, prm in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("W_"):
            nn.init.normal_(prm, std=spec.std)
        elif leaf == "weight":
            nn.init.ones_(prm)
        else:
            nn.init.zeros_(prm)


def _pytorch_bounds(spec: ModelSpec) -> dict[str, float]:
    """Uniform bounds of PyTorch's module defaults, per parameter leaf, for our parameter layout.

    pytorch-layer (nn.TransformerEncoderLayer as constructed): in_proj (W_Q, W_K, W_V stacked, [3·H·dh, d])
    Xavier-uniform; out_proj (W_O) Kaiming-uniform with a = √5, i.e. ±1/√fan_in; linear1/linear2 (W_in,
    W_out) and their biases ±1/√fan_in. pytorch-transformer (nn.Transformer, whose constructor re-draws every
    matrix Xavier-uniform): in_proj, out_proj, linear1, linear2 all Xavier-uniform; biases as above.
    Both: attention biases 0, embeddings (nn.Embedding) N(0, 1), the readout (nn.Linear) ±1/√d."""
    d, hd, f = spec.d_model, spec.n_heads * spec.d_head, spec.d_mlp

    def xavier(fan_in: int, fan_out: int) -> float:
        return math.sqrt(6.0 / (fan_in + fan_out))

    qkv = xavier(d, 3 * hd)
    if spec.init == "pytorch-layer":
        w_o, w_in, w_out = 1 / math.sqrt(hd), 1 / math.sqrt(d), 1 / math.sqrt(f)
    else:
        w_o, w_in, w_out = xavier(hd, d), xavier(d, f), xavier(f, d)
    return {"W_Q": qkv, "W_K": qkv, "W_V": qkv, "W_O": w_o, "W_in": w_in, "W_out": w_out,
            "b_in": 1 / math.sqrt(d), "b_out": 1 / math.sqrt(f), "W_U": 1 / math.sqrt(d)}


@torch.no_grad()
def _clone_blocks(blocks: list[nn.Module], leaves: tuple[str, ...] | None) -> None:
    """Copy blocks[0]'s parameters (those whose leaf name is in `leaves`; None: all) into every later block:
    nn.TransformerEncoder / nn.TransformerDecoder build their layers as deep copies of one layer."""
    first = dict(blocks[0].named_parameters())
    for block in blocks[1:]:
        for name, prm in block.named_parameters():
            if leaves is None or name.rsplit(".", 1)[-1] in leaves:
                prm.copy_(first[name])


def init_pytorch(model: nn.Module, spec: ModelSpec) -> None:
    """The initialisation PyTorch's modules give the published models (`_pytorch_bounds`), including their
    layer copies: pytorch-layer starts every block as a copy of the first (nn.TransformerEncoder deep-copies
    its layer); pytorch-transformer re-draws every matrix per layer, so only the MLP biases (b_in, b_out) are
    shared, among the encoder blocks and among the decoder blocks. Our readout has no bias (nn.Linear's
    would be ±1/√d): docs/methods.md lists it among the differences."""
    bounds = _pytorch_bounds(spec)
    for name, prm in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("W_E", "W_pos"):
            nn.init.normal_(prm, std=1.0)
        elif leaf in bounds:
            nn.init.uniform_(prm, -bounds[leaf], bounds[leaf])
        elif leaf == "weight":
            nn.init.ones_(prm)
        else:
            nn.init.zeros_(prm)
    blocks, L = list(model.blocks), spec.n_layers
    if spec.init == "pytorch-layer":
        _clone_blocks(blocks, None)
    else:
        groups = [blocks[:L], blocks[L:]] if len(blocks) == 2 * L else [blocks]
        for group in groups:
            _clone_blocks(group, ("b_in", "b_out"))


class DyckTransformer(nn.Module):
    def __init__(self, spec: ModelSpec, n_ctx: int, vocab: int, n_classes: int, task: str = "dyck"):
        super().__init__()
        self.spec, self.n_ctx, self.vocab, self.n_classes, self.task = spec, n_ctx, vocab, n_classes, task
        self.embed = Embed(vocab, spec.d_model)
        self.pos = PosEmbed(n_ctx, spec.d_model)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.n_layers))
        self.ln_final = _norm(spec)
        self.unembed = Unembed(spec.d_model, n_classes)
        _init(self, spec)

    def forward(self, tokens: Int[Tensor, "B T"]) -> Float[Tensor, "B T C"]:
        x = self.embed.W_E[tokens] + self.pos.W_pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, last_only=False)
        return self.ln_final(x) @ self.unembed.W_U

    def hf_config(self) -> dict:
        return {"model_type": MODEL_TYPE, "architectures": [type(self).__name__], **self.spec.to_dict(),
                "vocab_size": self.vocab, "n_ctx": self.n_ctx, "n_out": self.n_classes, "tasks": [self.task],
                "task": self.task}


class DecoderBlock(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.ln1, self.attn = _norm(spec), Attention(spec)
        self.ln_x, self.cross_attn = _norm(spec), Attention(spec)
        self.ln2 = _norm(spec)
        from headscreen.grokking.models.transformer import MLP

        self.mlp = MLP(spec)

    def forward(self, x: Float[Tensor, "B L D"], memory: Float[Tensor, "B S D"], src_pad: Tensor) -> Tensor:
        h = self.ln1(x)
        k, v = self.attn.kv(h)
        x = x + self.attn.attend(h, k, v, causal=True)
        ca = self.cross_attn
        k, v = ca.kv(memory)  # [B, H, S, dh]
        q = torch.einsum("btd,hde->bhte", self.ln_x(x), ca.W_Q) + ca.b_Q[:, None]
        scores = (q @ k.transpose(-1, -2) * ca.scale).masked_fill(src_pad[:, None, None, :], float("-inf"))
        x = x + ca.out(scores.softmax(-1) @ v)
        return x + self.mlp(self.ln2(x))


class ScanTransformer(nn.Module):
    def __init__(self, spec: ModelSpec, src_vocab: int, tgt_vocab: int, src_ctx: int, tgt_ctx: int,
                 pad: int = 0, bos: int = 1):
        super().__init__()
        self.spec, self.pad, self.bos = spec, pad, bos
        self.sizes = (src_vocab, tgt_vocab, src_ctx, tgt_ctx)
        self.embed = Embed(src_vocab, spec.d_model)
        self.tgt_embed = Embed(tgt_vocab, spec.d_model)
        self.pos = PosEmbed(src_ctx, spec.d_model)
        self.tgt_pos = PosEmbed(tgt_ctx, spec.d_model)
        L = spec.n_layers
        self.blocks = nn.ModuleList([*(Block(spec) for _ in range(L)), *(DecoderBlock(spec) for _ in range(L))])
        self.ln_enc = _norm(spec)
        self.ln_final = _norm(spec)
        self.unembed = Unembed(spec.d_model, tgt_vocab)
        _init(self, spec)

    def encode(self, src: Int[Tensor, "B S"]) -> tuple[Float[Tensor, "B S D"], Tensor]:
        pad = src == self.pad
        x = self.embed.W_E[src] + self.pos.W_pos[: src.shape[1]]
        for block in self.blocks[: self.spec.n_layers]:
            h = block.ln1(x)
            k, v = block.attn.kv(h)
            q = torch.einsum("btd,hde->bhte", h, block.attn.W_Q) + block.attn.b_Q[:, None]
            scores = (q @ k.transpose(-1, -2) * block.attn.scale).masked_fill(pad[:, None, None, :], float("-inf"))
            x = x + block.attn.out(scores.softmax(-1) @ v)
            x = x + block.mlp(block.ln2(x))
        return self.ln_enc(x), pad

    def forward(self, src: Int[Tensor, "B S"], tgt: Int[Tensor, "B L"]) -> Float[Tensor, "B L V"]:
        """Teacher-forced logits: position i predicts tgt[:, i] from BOS, tgt[:, :i]."""
        memory, pad = self.encode(src)
        dec_in = torch.cat([torch.full_like(tgt[:, :1], self.bos), tgt[:, :-1]], dim=1)
        x = self.tgt_embed.W_E[dec_in] + self.tgt_pos.W_pos[: dec_in.shape[1]]
        for block in self.blocks[self.spec.n_layers:]:
            x = block(x, memory, pad)
        return self.ln_final(x) @ self.unembed.W_U

    def hf_config(self) -> dict:
        src_vocab, tgt_vocab, src_ctx, tgt_ctx = self.sizes
        s = self.spec.to_dict()
        s["n_layers"] = 2 * self.spec.n_layers
        return {"model_type": MODEL_TYPE, "architectures": [type(self).__name__], **s,
                "n_encoder_layers": self.spec.n_layers, "vocab_size": src_vocab, "tgt_vocab_size": tgt_vocab,
                "n_ctx": src_ctx, "tgt_ctx": tgt_ctx, "n_out": tgt_vocab, "tasks": ["scan"], "task": "scan"}
