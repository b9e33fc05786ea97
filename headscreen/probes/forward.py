"""One batched forward per probe batch per checkpoint, caching only what the screens need.

`run_probe` runs `bridge.run_with_cache` in micro-batches with a `names_filter` that keeps only
`blocks.{L}.attn.hook_pattern` (and `hook_z` when the participation ratio is wanted). From each
micro-batch it keeps, per layer:

- the query rows of the pattern, A(query_pos_i, :)        [batch, layer, head, key]
- hook_z at the query position (PR, docs/methods.md#participation-ratio)            [batch, layer, head, d_head]
- the outputs of any `reducers` applied to the full pattern  [batch, layer, ...]
- per-position losses when asked (then the logits are computed; otherwise `stop_at_layer` skips
  the blocks after the last layer needed)                    [batch, pos-1]

Memory bound: the full [micro_batch, head, pos, pos] patterns of one micro-batch at a time, plus the
kept slices, O(batch * layers * heads * (pos + d_head)). E.g. 16 layers x 16 heads, T = 256,
d_head = 128, N = 2000, micro_batch = 16: the cache holds 16·16·16·256·256·4 B ≈ 1.1 GB of patterns
at a time (lower micro_batch to shrink it); the kept query rows take 2000·16·16·256·4 B ≈ 0.5 GB and
hook_z 0.26 GB. When every layer is needed the unembedding still runs (stop_at_layer = n_layers
returns logits in TL 4.3), about 10% of a 1B model's forward. The bridge is used as given: keep it in raw
(non-compatibility) mode so that `hook_z` is the o_proj input slice (docs/methods.md#checkpoints-and-loading).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int

from headscreen.probes.batch import ProbeBatch
from headscreen.probes.prompts import check_fits

# reducer(pattern [b, head, q, k], tokens [b, pos], query_pos [b]) -> Tensor [b, ...]
PatternReducer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ProbeForward:
    """What `run_probe` keeps of one probe batch's forward pass."""

    probe: str
    layers: tuple[int, ...]
    query_rows: Float[torch.Tensor, "batch layer head key"]
    z_query: Float[torch.Tensor, "batch layer head d_head"] | None
    reduced: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [batch, layer, ...]
    token_losses: Float[torch.Tensor, "batch pos_minus_1"] | None = None
    loading_mode: str = "raw"


def loading_mode(bridge) -> str:
    """'compatibility' when the bridge's weights were processed by enable_compatibility_mode, else 'raw'."""
    return "compatibility" if getattr(bridge, "compatibility_mode", False) else "raw"


def _token_losses(
    logits: Float[torch.Tensor, "b pos vocab"], tokens: Int[torch.Tensor, "b pos"]
) -> Float[torch.Tensor, "b pos_minus_1"]:
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)


def run_probe(
    bridge,
    batch: ProbeBatch,
    *,
    micro_batch: int = 16,
    layers: Sequence[int] | None = None,
    want_z: bool = True,
    want_losses: bool = False,
    reducers: Mapping[str, PatternReducer] | None = None,
) -> ProbeForward:
    """Run `batch` through `bridge` once (in micro-batches) and keep the per-layer slices listed above."""
    if micro_batch < 1:
        raise ValueError(f"micro_batch={micro_batch} must be >= 1")
    cfg = bridge.cfg
    check_fits(batch, int(cfg.n_ctx), int(cfg.d_vocab))
    n_layers = int(cfg.n_layers)
    layers = tuple(range(n_layers)) if layers is None else tuple(sorted(set(int(x) for x in layers)))
    if not layers or layers[0] < 0 or layers[-1] >= n_layers:
        raise ValueError(f"layers={layers} must be a non-empty subset of 0..{n_layers - 1}")
    reducers = dict(reducers or {})
    names = [f"blocks.{L}.attn.hook_pattern" for L in layers]
    if want_z:
        names += [f"blocks.{L}.attn.hook_z" for L in layers]
    stop = None if want_losses or layers[-1] + 1 >= n_layers else layers[-1] + 1
    device = next(bridge.parameters()).device

    rows_out: list[torch.Tensor] = []
    z_out: list[torch.Tensor] = []
    red_out: dict[str, list[torch.Tensor]] = {k: [] for k in reducers}
    loss_out: list[torch.Tensor] = []
    with torch.inference_mode():
        for s in range(0, batch.n, micro_batch):
            toks = batch.tokens[s : s + micro_batch].to(device)
            q = batch.query_pos[s : s + micro_batch].to(device)
            b = toks.shape[0]
            ar = torch.arange(b, device=device)
            out, cache = bridge.run_with_cache(toks, names_filter=names, stop_at_layer=stop)
            rows_l, z_l = [], []
            red_l: dict[str, list[torch.Tensor]] = {k: [] for k in reducers}
            for L in layers:
                pat = cache[f"blocks.{L}.attn.hook_pattern"].float()  # [b, head, q, k]
                rows_l.append(pat[ar, :, q, :].cpu())  # [b, head, key]
                if want_z:
                    z = cache[f"blocks.{L}.attn.hook_z"]  # [b, pos, head, d_head]
                    z_l.append(z[ar, q].float().cpu())  # [b, head, d_head]
                for k, fn in reducers.items():
                    red_l[k].append(fn(pat, toks, q).float().cpu())
            rows_out.append(torch.stack(rows_l, dim=1))
            if want_z:
                z_out.append(torch.stack(z_l, dim=1))
            for k in reducers:
                red_out[k].append(torch.stack(red_l[k], dim=1))
            if want_losses:
                loss_out.append(_token_losses(out, toks).cpu())
            del cache, out
    return ProbeForward(
        probe=batch.name,
        layers=layers,
        query_rows=torch.cat(rows_out),
        z_query=torch.cat(z_out) if want_z else None,
        reduced={k: torch.cat(v) for k, v in red_out.items()},
        token_losses=torch.cat(loss_out) if want_losses else None,
        loading_mode=loading_mode(bridge),
    )
