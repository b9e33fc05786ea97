"""Causal interventions on the gradient relative to the trajectory-PCA basis (docs/methods.md,
"Grokking II: interventions and invariance").

The trainer records the parameter updates δ_t = θ_{t+1} − θ_t of the `window` updates before step
`start`; at `start` the top-k right singular vectors of the stacked updates (uncentered) form the
basis B [P, k]. From then on every gradient g (all trained parameters, flattened) is split into
g_∥ = B Bᵀ g and g_⊥ = g − g_∥ and replaced by g_∥ + c·g_⊥ (before clipping):
    kind "suppress", strength s ∈ [0, 1]:  c = 1 − s   (s = 1 removes the transverse gradient)
    kind "amplify",  strength a ≥ 0:       c = 1 + a
Strength 0 leaves every gradient untouched (training is bit-identical to kind "none"), but the basis is
still built and the invariance ratio recorded: ρ = ‖δ_⊥‖/‖δ‖ of the update at each evaluation step
against B, and against `random_bases` random orthonormal k-bases (QR of a seeded Gaussian) as control.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from headscreen.config.core import ConfigError, from_mapping
from headscreen.spectral.paramspace import flatten, random_orthonormal_bases, top_right_singular

KINDS = ("none", "suppress", "amplify")
BASIS_FILE = "intervention_basis.safetensors"
RHO_COLUMNS = ["step", "rho", "rho_random_mean", "rho_random_std", "rho_ratio"]


@dataclass(frozen=True)
class Intervention:
    kind: str = "none"
    strength: float = 0.0
    k: int = 16
    start: int = 500  # the basis is built at this step; updates from this step on are modified
    window: int = 64  # updates before `start` that span the basis (>= k)
    random_bases: int = 5

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"intervention.kind = {self.kind!r} is unknown; use one of {', '.join(KINDS)}")
        if self.kind == "suppress" and not 0.0 <= self.strength <= 1.0:
            raise ConfigError(f"intervention.strength = {self.strength!r} is invalid for suppress: use s in [0, 1]")
        if self.kind == "amplify" and not self.strength >= 0.0:
            raise ConfigError(f"intervention.strength = {self.strength!r} is invalid for amplify: use a >= 0")
        if self.k < 1 or self.window < self.k:
            raise ConfigError(f"intervention.k = {self.k}, window = {self.window}: use k >= 1 and window >= k")
        if self.start < self.window:
            raise ConfigError(f"intervention.start = {self.start} is invalid: the basis needs `window` = "
                              f"{self.window} updates before it; use start >= window")
        if self.random_bases < 0:
            raise ConfigError(f"intervention.random_bases = {self.random_bases} is invalid: use an integer >= 0")
        if self.kind == "none":  # settings without an intervention would only change the config hash
            unused = [f"{f.name} = {getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                      if f.name != "kind" and getattr(self, f.name) != f.default]
            if unused:
                raise ConfigError(f"intervention {', '.join(unused)} has no effect while intervention.kind is none: "
                                  "add --intervention suppress|amplify (intervention.kind), or leave it out")

    @property
    def active(self) -> bool:
        return self.kind != "none"

    @property
    def factor(self) -> float:
        """c, the factor on the transverse gradient."""
        return {"none": 1.0, "suppress": 1.0 - self.strength, "amplify": 1.0 + self.strength}[self.kind]

    @classmethod
    def from_value(cls, value, where: str = "grok.intervention") -> Intervention:
        if isinstance(value, Intervention):
            return value
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping (kind, strength, k, start, window, random_bases)")
        return from_mapping(cls, value, where)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def top_basis(updates: Float[Tensor, "M P"], k: int) -> Float[Tensor, "P k"]:
    """The top-k right singular vectors of the stacked updates (uncentered), orthonormal columns (float32)."""
    return top_right_singular(updates, k).T.float().contiguous()


def split_transverse(g: Float[Tensor, " P"], basis: Float[Tensor, "P k"]) -> tuple[Tensor, Tensor]:
    """(g_∥, g_⊥) relative to the orthonormal basis."""
    par = basis @ (basis.T @ g)
    return par, g - par


def transverse_ratio(delta: Float[Tensor, " P"], basis: Float[Tensor, "P k"]) -> float:
    """ρ = ‖δ_⊥‖ / ‖δ‖."""
    n = float(delta.norm())
    return float(split_transverse(delta, basis)[1].norm()) / n if n > 0 else float("nan")


def random_bases(p: int, k: int, n: int, seed: int) -> list[Tensor]:
    """The control bases: `n` seeded random orthonormal k-bases of ℝ^p (float32 columns [P, k])."""
    return random_orthonormal_bases(p, k, n, seed, torch.float32)


class GradientIntervention:
    """The trainer's hooks: `before_update`, `modify_grads`, `after_update` (module docstring)."""

    def __init__(self, spec: Intervention, params: list[nn.Parameter], run_dir: Path, seed: int):
        self.spec, self.params, self.path, self.seed = spec, params, Path(run_dir) / BASIS_FILE, seed
        self.updates: list[Tensor] = []
        self.basis: Tensor | None = None
        self.controls: list[Tensor] = []
        self.rows: list[dict] = []
        self._before: Tensor | None = None
        if self.path.exists():
            from safetensors.torch import load_file

            self._set_basis(load_file(str(self.path))["basis"])

    def _set_basis(self, basis: Tensor) -> None:
        self.basis = basis
        self.controls = random_bases(basis.shape[0], basis.shape[1], self.spec.random_bases, self.seed + 7919)

    def _build(self) -> None:
        from safetensors.torch import save_file

        from headscreen.rundir.store import atomic_write

        if not self.updates:
            raise RuntimeError("intervention: no updates recorded before the start step (resumed too late?)")
        basis = top_basis(torch.stack(self.updates), min(self.spec.k, len(self.updates)))
        atomic_write(self.path, lambda p: save_file({"basis": basis}, str(p)))
        self._set_basis(basis)
        self.updates = []

    def before_update(self, step: int, record: bool) -> None:
        s = self.spec
        if step == s.start and self.basis is None:
            self._build()
        want = (s.start - s.window <= step < s.start) or (record and self.basis is not None)
        self._before = flatten([p.detach() for p in self.params]).clone() if want else None

    def modify_grads(self, step: int) -> None:
        """g -> g_∥ + c·g_⊥ for updates from `start` on; c = 1 touches nothing."""
        if self.basis is None or step < self.spec.start or self.spec.factor == 1.0:
            return
        grads = [p.grad for p in self.params]
        g = flatten([gr if gr is not None else torch.zeros_like(p) for gr, p in zip(grads, self.params, strict=True)])
        par, perp = split_transverse(g, self.basis)
        new = par + self.spec.factor * perp
        offset = 0
        for p in self.params:
            n = p.numel()
            if p.grad is not None:
                p.grad.copy_(new[offset:offset + n].view_as(p))
            offset += n

    def after_update(self, step: int) -> None:
        if self._before is None:
            return
        delta = flatten([p.detach() for p in self.params]) - self._before
        self._before = None
        if self.basis is None:
            self.updates.append(delta)
            return
        rho = transverse_ratio(delta, self.basis)
        ctrl = np.array([transverse_ratio(delta, b) for b in self.controls]) if self.controls else np.array([np.nan])
        self.rows.append({"step": step, "rho": rho, "rho_random_mean": float(ctrl.mean()),
                          "rho_random_std": float(ctrl.std()), "rho_ratio": rho / float(ctrl.mean())})


def intervention_summary(run_dir: str | Path, grok_step: int | None = None) -> dict | None:
    """grok.json's `intervention` entry: the settings from the manifest, and the invariance ratio ρ
    (median over the steps before grokking, or all steps when it did not grok) against the random-basis
    control. None for a run without an intervention."""
    import json

    import pandas as pd

    root = Path(run_dir)
    cfg = json.loads((root / "manifest.json").read_text()).get("config", {}).get("intervention") or {}
    if cfg.get("kind", "none") == "none":
        return None
    out = {**cfg, "factor": Intervention(**cfg).factor, "rho_median": None, "rho_random_median": None,
           "rho_ratio_median": None, "n_rho": 0}
    path = root / "intervention.parquet"
    if path.exists():
        df = pd.read_parquet(path)
        if grok_step is not None and (df.step < grok_step).any():
            df = df[df.step < grok_step]
        if len(df):
            out.update(rho_median=float(df.rho.median()), rho_random_median=float(df.rho_random_mean.median()),
                       rho_ratio_median=float(df.rho_ratio.median()), n_rho=int(len(df)))
    return out
