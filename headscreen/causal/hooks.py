"""Interventions on hook activations that prove they fired (docs/methods.md#interventions-prove-they-fired).

An `Intervention` names a hook and an edit (activation -> replacement). `run_with_interventions`
wraps every edit so that it records, per batch row, how often it ran and the largest |new - old|.
After the forward:

- an intervention whose hook never ran raises `InterventionDidNotFire` naming the hook (a hook
  name that does not exist, a gated hook, a hook beyond `stop_at_layer`, a hook the architecture
  never calls, e.g. `attn.hook_rot_k` on GPT-NeoX);
- every row group it was expected to change must have changed by more than numerical noise,
  max|delta| > rtol * max(|old|, |new|) over that group's rows, else `InterventionDidNotFire`
  names the hook and the group. A zero effect is never returned silently.

Rows of the batch can be split into groups (conditions stacked along the batch dimension); the
check then applies to each group separately, so one batched forward is as strict as many single
ones. An intervention with `expect` all False (a capture, or freezing heads to their own values)
only has to run.

Head edits (`replace_heads`) work on any [batch, pos, head, d_head] hook (`attn.hook_z`,
`attn.hook_k`, ...): entries (row, head) selected by a mask are replaced by zeros or by a source
activation aligned by example.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int

EditFn = Callable[[torch.Tensor], torch.Tensor]


class InterventionDidNotFire(RuntimeError):
    """An intervention whose hook never ran, or that changed nothing beyond numerical noise."""


def z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def k_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_k"


def default_rtol(dtype: torch.dtype) -> float:
    """Relative change below which an edit counts as "changed nothing": 32 ulp (3.8e-6 in fp32), at most 1e-2."""
    return min(32.0 * torch.finfo(dtype).eps, 1e-2)


@dataclass(frozen=True)
class Intervention:
    """Replace the activation at `hook_name` by `edit(activation)` (same shape, a new tensor).

    `expect[g]` says whether row group g must change (None: every group must change).
    `baseline`, when given, is the activation this hook carries in the full forward: the hook's own
    activation is discarded and the edit applies to `baseline` instead, and the firing check measures
    the edit against it. Used where the forward computed the hook's block from query rows only
    (`ablation` on the last block), so the activation there is not the one being intervened on.
    """

    hook_name: str
    edit: EditFn
    expect: Bool[torch.Tensor, " group"] | None = None
    baseline: torch.Tensor | None = None


@dataclass
class HookFiring:
    """What one intervention did during a forward: calls, and max |delta| / max |act| per row group."""

    hook_name: str
    calls: int = 0
    group_delta: Float[torch.Tensor, " group"] | None = None
    group_scale: Float[torch.Tensor, " group"] | None = None

    @property
    def max_abs_delta(self) -> float:
        return 0.0 if self.group_delta is None else float(self.group_delta.max())


@dataclass
class FireReport:
    """Per-hook firing records of one forward, plus the group names used in error messages."""

    firings: dict[str, HookFiring] = field(default_factory=dict)
    group_names: list[str] = field(default_factory=list)
    unchanged: dict[str, torch.Tensor] = field(default_factory=dict)  # {hook: bool [group]}, allow_unchanged only

    def max_abs_delta(self) -> dict[str, float]:
        return {name: f.max_abs_delta for name, f in self.firings.items()}


def _group_max(values: Float[torch.Tensor, " batch"], groups: Int[torch.Tensor, " batch"], n: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, groups.to(values.device), values, reduce="amax", include_self=True)


def _recording(intervention: Intervention, firing: HookFiring, groups: torch.Tensor, n_groups: int):
    def hook_fn(act: torch.Tensor, hook) -> torch.Tensor:
        if intervention.baseline is not None:
            if intervention.baseline.shape != act.shape:
                raise ValueError(
                    f"intervention on {intervention.hook_name}: baseline {tuple(intervention.baseline.shape)} does "
                    f"not match the activation {tuple(act.shape)}"
                )
            act = intervention.baseline.to(act.device, act.dtype)
        new = intervention.edit(act)
        if new.shape != act.shape:
            raise ValueError(
                f"intervention on {intervention.hook_name} returned shape {tuple(new.shape)} for an activation "
                f"of shape {tuple(act.shape)}; an edit must keep the shape"
            )
        if act.shape[0] != groups.shape[0]:
            raise ValueError(
                f"{intervention.hook_name}: activation batch {act.shape[0]} != {groups.shape[0]} row groups"
            )
        delta = (new - act).abs().flatten(1).amax(1).float()
        scale = torch.maximum(act.abs().flatten(1).amax(1), new.abs().flatten(1).amax(1)).float()
        g_delta, g_scale = _group_max(delta, groups, n_groups), _group_max(scale, groups, n_groups)
        firing.calls += 1
        if firing.group_delta is None:
            firing.group_delta, firing.group_scale = g_delta, g_scale
        else:
            firing.group_delta = torch.maximum(firing.group_delta, g_delta)
            firing.group_scale = torch.maximum(firing.group_scale, g_scale)
        return new

    return hook_fn


def check_fired(
    report: FireReport, interventions: Sequence[Intervention], rtol: float, *, allow_unchanged: bool = False
) -> dict[str, torch.Tensor]:
    """Raise `InterventionDidNotFire` for a hook that never ran or an expected group that did not change.

    With `allow_unchanged`, unchanged groups are returned instead ({hook: bool [group]}) so that a
    scan can mark them as not measured (NaN); a hook that never ran always raises.
    """
    unchanged: dict[str, torch.Tensor] = {}
    for iv in interventions:
        firing = report.firings[iv.hook_name]
        if firing.calls == 0:
            raise InterventionDidNotFire(
                f"intervention on hook {iv.hook_name!r} never ran during the forward (a hook this architecture "
                f"does not call, or one beyond stop_at_layer); intervene on a hook that runs, e.g. "
                f"'blocks.L.attn.hook_z'"
            )
        assert firing.group_delta is not None and firing.group_scale is not None
        expect = torch.ones_like(firing.group_delta, dtype=torch.bool) if iv.expect is None else iv.expect
        changed = firing.group_delta > rtol * firing.group_scale  # NaN -> False -> raises
        bad = expect.to(changed.device) & ~changed
        unchanged[iv.hook_name] = bad
        if bool(bad.any()) and not allow_unchanged:
            g = int(bad.nonzero()[0, 0])
            name = report.group_names[g] if g < len(report.group_names) else f"group {g}"
            raise InterventionDidNotFire(
                f"intervention on hook {iv.hook_name!r} changed nothing for {name}: max |delta| = "
                f"{float(firing.group_delta[g]):.3g} <= {rtol:.1e} * max |activation| = "
                f"{float(firing.group_scale[g]):.3g} (already-zero head, a mean equal to the activation, "
                f"or a source identical to the run); an intervention that changes nothing is an error"
            )
    return unchanged


def _block_list(bridge) -> tuple[torch.nn.Module, str, torch.nn.ModuleList] | None:
    """(owner, attribute, list) of the wrapped model's ModuleList that holds exactly bridge.blocks, or None."""
    blocks = list(getattr(bridge, "blocks", []) or [])
    model = getattr(bridge, "original_model", None)
    if not blocks or model is None:
        return None
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == len(blocks) and \
                    all(a is b for a, b in zip(child, blocks, strict=True)):
                return module, name, child
    return None


def can_start_at_block(bridge) -> bool:
    """Whether `blocks_from` can skip blocks of this bridge (it finds the wrapped model's block list)."""
    return _block_list(bridge) is not None


@contextmanager
def blocks_from(bridge, start: int) -> Iterator[None]:
    """Inside the block, the wrapped model runs only blocks start.. (the blocks before are skipped).

    TransformerBridge's `start_at_layer` swaps the given residual in at block `start` but still
    computes every earlier block on it and throws that away; a forward that starts at block L this
    way costs the whole model. Here the wrapped model's block list is cut to blocks[start:] for the
    duration, so the skipped blocks cost nothing. Use it with `start_at_layer=start` and the residual
    entering block `start` (`bridge(tokens, stop_at_layer=start)`): the result equals the full forward
    (tests/test_causal.py checks it on every architecture).
    """
    if start == 0:
        yield
        return
    found = _block_list(bridge)
    if found is not None:
        module, name, child = found
        setattr(module, name, torch.nn.ModuleList(list(child)[start:]))
        try:
            yield
        finally:
            setattr(module, name, child)
        return
    raise RuntimeError(
        f"cannot find the block list of {type(bridge.original_model).__name__} to start at block {start}; "
        "run the full forward instead (start_at_layer=None)"
    )


def run_with_interventions(
    bridge,
    tokens: Int[torch.Tensor, "batch pos"] | Float[torch.Tensor, "batch pos d_model"],
    interventions: Sequence[Intervention],
    *,
    groups: Int[torch.Tensor, " batch"] | None = None,
    group_names: Sequence[str] | None = None,
    rtol: float | None = None,
    query_pos: Int[torch.Tensor, " batch"] | None = None,
    stop_at_layer: int | None = None,
    start_at_layer: int | None = None,
    allow_unchanged: bool = False,
) -> tuple[torch.Tensor, FireReport]:
    """One forward of `bridge` on `tokens` with every intervention applied; checks that each fired.

    With `start_at_layer=L`, `tokens` is instead the residual entering block L ([batch, pos,
    d_model], from `bridge(tokens, stop_at_layer=L)`) and only blocks L.. are computed (`blocks_from`).

    Returns (output, report). The output is the logits [batch, pos, vocab], or [batch, vocab] at
    `query_pos` when given (the final norm's output is sliced to those positions before the
    unembedding, so [batch, pos, vocab] logits are never materialised), or the residual when
    `stop_at_layer` is given. `groups[row]` in 0..G-1 labels row groups (default: one group).
    `allow_unchanged` returns unchanged groups in `report.unchanged` instead of raising (scans).
    """
    names = [iv.hook_name for iv in interventions]
    if len(set(names)) != len(names):
        raise ValueError(f"one intervention per hook, got duplicates in {names}; merge the edits of one hook")
    hook_dict = bridge.hook_dict
    for name in names:
        if name not in hook_dict:
            raise InterventionDidNotFire(
                f"intervention on hook {name!r} can never run: this model has no such hook (e.g. no "
                f"hook_resid_mid on parallel-residual GPT-NeoX); pick a name from bridge.hook_dict"
            )
    n_rows = tokens.shape[0]
    if groups is None:
        groups = torch.zeros(n_rows, dtype=torch.long)
    groups = groups.to(torch.long)
    n_groups = int(groups.max()) + 1 if n_rows else 0
    for iv in interventions:
        if iv.expect is not None and iv.expect.shape != (n_groups,):
            raise ValueError(f"{iv.hook_name}: expect has shape {tuple(iv.expect.shape)}, want ({n_groups},)")
    report = FireReport(group_names=list(group_names or []))
    fwd_hooks = []
    for iv in interventions:
        report.firings[iv.hook_name] = HookFiring(iv.hook_name)
        fwd_hooks.append((iv.hook_name, _recording(iv, report.firings[iv.hook_name], groups, n_groups)))
    if query_pos is not None:
        rows = torch.arange(n_rows)
        qpos = query_pos.to(torch.long)
        fwd_hooks.append(("unembed.hook_in", lambda x, hook: x[rows.to(x.device), qpos.to(x.device)].unsqueeze(1)))
    with torch.no_grad():
        if start_at_layer:
            if not tokens.is_floating_point() or tokens.ndim != 3:
                raise ValueError(f"start_at_layer={start_at_layer} needs the residual [batch, pos, d_model] entering "
                                 f"that block, got {tuple(tokens.shape)} {tokens.dtype}")
            with blocks_from(bridge, start_at_layer):
                out = bridge.run_with_hooks(tokens, fwd_hooks=fwd_hooks, stop_at_layer=stop_at_layer,
                                            start_at_layer=start_at_layer)
        else:
            out = bridge.run_with_hooks(tokens, fwd_hooks=fwd_hooks, stop_at_layer=stop_at_layer)
    report.unchanged = check_fired(
        report, interventions, default_rtol(out.dtype) if rtol is None else rtol, allow_unchanged=allow_unchanged
    )
    if query_pos is not None and stop_at_layer is None:
        if out.ndim != 3 or out.shape[1] != 1:
            raise RuntimeError(f"query-position slicing at unembed.hook_in did not apply (logits {tuple(out.shape)})")
        out = out[:, 0]
    return out, report


def capture(
    bridge,
    tokens: Int[torch.Tensor, "batch pos"],
    hook_names: Sequence[str],
    *,
    stop_at_layer: int | None = None,
    start_at_layer: int | None = None,
) -> dict[str, torch.Tensor]:
    """Activations at `hook_names` from one clean forward (each hook must run, else InterventionDidNotFire).

    With `start_at_layer`, `tokens` is the residual entering that block (see run_with_interventions).
    A forward through the last block is unembedded at position 0 only: its logits are discarded.
    """
    store: dict[str, torch.Tensor] = {}

    def keep(name: str) -> EditFn:
        def edit(act: torch.Tensor) -> torch.Tensor:
            store[name] = act.detach().clone()
            return act

        return edit

    never = torch.zeros(1, dtype=torch.bool)
    ivs = [Intervention(name, keep(name), expect=never) for name in dict.fromkeys(hook_names)]
    query = torch.zeros(tokens.shape[0], dtype=torch.long) if stop_at_layer is None else None
    run_with_interventions(bridge, tokens, ivs, stop_at_layer=stop_at_layer, start_at_layer=start_at_layer,
                           query_pos=query)
    return store


def replace_heads(
    mask: Bool[torch.Tensor, "batch head"],
    source: Float[torch.Tensor, "src pos head d_head"] | None,
) -> EditFn:
    """Edit for a [batch, pos, head, d_head] hook: entries (row, head) with mask True get the source.

    source None: zeros (zero-ablation). Otherwise source has S rows, S = 1 (mean-ablation: one
    activation broadcast to every row) or S = examples (resample / patching: row r takes source
    row r % S, i.e. the batch is laid out condition-major, [cond0 ex0..exS-1, cond1 ex0.., ...]).
    """

    def edit(act: torch.Tensor) -> torch.Tensor:
        B, P, H, D = act.shape
        if mask.shape != (B, H):
            raise ValueError(f"head mask has shape {tuple(mask.shape)}, activation needs ({B}, {H})")
        m = mask.to(act.device)[:, None, :, None]  # [B, 1, H, 1]
        if source is None:
            return act.masked_fill(m, 0.0)
        S = source.shape[0]
        if source.shape[1:] != (P, H, D) or B % S:
            raise ValueError(
                f"source activation {tuple(source.shape)} does not align with {tuple(act.shape)}: it needs "
                f"[S, {P}, {H}, {D}] with S dividing the batch (same seq_len and example count)"
            )
        src = source.to(act.device, act.dtype).unsqueeze(0)  # [1, S, P, H, D]
        out = torch.where(m.view(B // S, S, 1, H, 1), src, act.view(B // S, S, P, H, D))
        return out.view(B, P, H, D)

    return edit


def replace_rows(
    mask: Bool[torch.Tensor, " batch"],
    source: Float[torch.Tensor, "src ..."],
) -> EditFn:
    """Edit for any [batch, ...] hook: rows with mask True take the whole source activation (row r % S)."""

    def edit(act: torch.Tensor) -> torch.Tensor:
        B = act.shape[0]
        S = source.shape[0]
        if source.shape[1:] != act.shape[1:] or B % S:
            raise ValueError(f"source activation {tuple(source.shape)} does not align with {tuple(act.shape)}")
        m = mask.to(act.device).view(B // S, S, *([1] * (act.ndim - 1)))
        out = torch.where(m, source.to(act.device, act.dtype).unsqueeze(0), act.view(B // S, S, *act.shape[1:]))
        return out.view(act.shape)

    return edit
