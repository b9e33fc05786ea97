"""The Li₂ two-layer network on modular addition, trained full batch with its per-epoch edge recorded.

Model (docs/methods.md, "Li₂ network and the stage-III lock-in detector"): one-hot inputs e_a, e_b ∈ ℝ^M,
z = W_a e_a + W_b e_b ∈ ℝ^K (no biases), h = σ(z) with σ(z) = z² ("sqr") or max(z, 0) ("relu"),
ŷ = V h ∈ ℝ^M. Loss: mean squared error against the one-hot target e_{(a+b) mod M} ("mse"), or
cross-entropy on ŷ ("ce"). torch Adam with *coupled* L2 weight decay (the decay term is added to the
gradient before the Adam moments), full batch, so one epoch is one step.

Per-epoch record, in memory and bounded: the parameter vector θ_e = (W_a, W_b, V) flattened is compared
with θ_{e−1}; the newest W deltas live in a ring buffer (W·P floats; P = 3·M·K), and each epoch's W×W
uncentered update Gram (W² floats) is kept. Window statistics (σ's, r₂₃, k*) come from
`headscreen.spectral.gram_stats` on those Grams: the same code that screens checkpoint series. The
sign-match fraction is measured every `sign_every` epochs. Nothing per-epoch is written as a snapshot;
snapshots go to the run directory every `snapshot_every` epochs (for post-hoc analyses).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from headscreen.config.core import ConfigError, from_mapping
from headscreen.config.optimizer import OptimizerSettings
from headscreen.grokking.tasks.modular import is_prime
from headscreen.spectral import gram_stats
from headscreen.spectral.gram import update_gram
from headscreen.spectral.paramspace import flatten

ACTIVATIONS = ("sqr", "relu")
LOSSES = ("mse", "ce")
CRITICAL_FACTOR = 2.7482  # critical training fraction ≈ CRITICAL_FACTOR · ln M / M


def critical_fraction(m: int) -> float:
    """The training fraction below which Li₂ modular addition does not generalise (n ~ M log M)."""
    return CRITICAL_FACTOR * math.log(m) / m


@dataclass(frozen=True)
class Li2Config:
    m: int = 71  # modulus M (one-hot input width and output width)
    hidden: int = 512  # K hidden nodes
    activation: str = "sqr"
    loss: str = "mse"
    lr: float = 2e-3
    weight_decay: float = 5e-5  # coupled L2 (Adam); 0 is the no-lock-in control
    betas: tuple[float, float] = (0.9, 0.999)
    train_frac: float = 0.9
    epochs: int = 400
    seed: int = 0
    window: int = 10  # W of the per-epoch update Gram
    eval_every: int = 5
    sign_every: int = 5  # epochs between sign-match measurements; 0 disables them
    snapshot_every: int = 50  # trajectory snapshots written to the run directory; 0 writes none
    tau: float | None = None  # lock-in threshold on r23 (calibrated on controls); None: no detection
    detect_skip: int = 10  # windows skipped before the detector may fire (the first-epochs transient)

    def __post_init__(self) -> None:
        def fail(name: str, fix: str) -> None:
            raise ConfigError(f"li2 config field {name!r} = {getattr(self, name)!r} is invalid: {fix}")

        if self.m < 3:
            fail("m", "use a modulus >= 3, e.g. 71")
        if not is_prime(self.m):
            fail("m", "use a prime modulus (e.g. 71, 97, 127) so that the discrete-log modes exist")
        if self.hidden < 1:
            fail("hidden", "use a positive number of hidden nodes, e.g. 512")
        if self.activation not in ACTIVATIONS:
            fail("activation", f"use one of {ACTIVATIONS}")
        if self.loss not in LOSSES:
            fail("loss", f"use one of {LOSSES}")
        OptimizerSettings.of(self, "li2")  # lr, betas, weight_decay (coupled L2; 0 for the control)
        if not 0.0 < self.train_frac < 1.0:
            fail("train_frac", "use a fraction strictly between 0 and 1 (e.g. 0.9)")
        if self.window < 3:
            fail("window", "use W >= 3 (r23 needs three singular values); default 10")
        if self.epochs < self.window + 1:
            fail("epochs", f"use at least window + 1 = {self.window + 1} epochs")
        for name in ("eval_every",):
            if getattr(self, name) < 1:
                fail(name, "use a positive integer")
        if self.tau is not None and not self.tau > 1.0:
            fail("tau", "use a threshold > 1 on sigma_2/sigma_3 (calibrate it on controls), or null")
        for name in ("seed", "sign_every", "snapshot_every", "detect_skip"):
            if getattr(self, name) < 0:
                fail(name, "use an integer >= 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "li2") -> Li2Config:
        return from_mapping(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def replace(self, **changes) -> Li2Config:
        return dataclasses.replace(self, **changes)

    @property
    def optimizer(self) -> OptimizerSettings:
        """lr, betas and weight_decay (torch Adam with coupled L2 decay; no clipping)."""
        return OptimizerSettings.of(self, "li2")


class Li2Net(torch.nn.Module):
    """ŷ = V σ(W_a e_a + W_b e_b); parameters W_a, W_b [K, M], V [M, K]; nn.Linear's default init."""

    def __init__(self, m: int, hidden: int, activation: str = "sqr", seed: int = 0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; use one of {ACTIVATIONS}")
        g = torch.Generator().manual_seed(seed)
        bound_in, bound_out = 1 / math.sqrt(m), 1 / math.sqrt(hidden)
        self.W_a = torch.nn.Parameter((torch.rand(hidden, m, generator=g) * 2 - 1) * bound_in)
        self.W_b = torch.nn.Parameter((torch.rand(hidden, m, generator=g) * 2 - 1) * bound_in)
        self.V = torch.nn.Parameter((torch.rand(m, hidden, generator=g) * 2 - 1) * bound_out)
        self.activation = activation

    def pre(self, a: Int[Tensor, " N"], b: Int[Tensor, " N"]) -> Float[Tensor, "N K"]:
        return self.W_a[:, a].T + self.W_b[:, b].T

    def act(self, z: Tensor) -> Tensor:
        return z.pow(2) if self.activation == "sqr" else z.clamp(min=0)

    def act_grad(self, z: Tensor) -> Tensor:
        return 2 * z if self.activation == "sqr" else (z > 0).to(z.dtype)

    def forward(self, a: Int[Tensor, " N"], b: Int[Tensor, " N"]) -> Float[Tensor, "N M"]:
        return self.act(self.pre(a, b)) @ self.V.T

    def flat(self) -> Float[Tensor, " P"]:
        """θ = (W_a, W_b, V) flattened, detached, float64."""
        return flatten((self.W_a, self.W_b, self.V), torch.float64)


def li2_loss(net: Li2Net, a: Tensor, b: Tensor, y: Tensor, loss: str) -> Tensor:
    out = net(a, b)
    if loss == "ce":
        return F.cross_entropy(out, y)
    return F.mse_loss(out, F.one_hot(y, out.shape[-1]).to(out.dtype))


def li2_split(m: int, train_frac: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(a, b, y, train_idx, test_idx) over the full M × M table, split by a seeded permutation."""
    a = torch.arange(m).repeat_interleave(m)
    b = torch.arange(m).repeat(m)
    y = (a + b) % m
    n = m * m
    n_train = min(max(round(train_frac * n), 1), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(10_000 + seed))
    return a, b, y, perm[:n_train].sort().values, perm[n_train:].sort().values


@torch.no_grad()
def sign_match(net: Li2Net, a: Tensor, b: Tensor) -> float:
    """Fraction of ordered hidden-node pairs (j ≠ k) whose gradient interaction term is repulsive.

    The loss gradient on w_j = (W_a[j], W_b[j]) contains, through the residual ŷ − y = Σ_k V_k h_k − y,
    one term per other node k: G_jk = (V_j·V_k) Σ_x σ'(z_j(x)) h_k(x) x, with x = (e_a, e_b). Gradient
    descent moves w_j along −G_jk, which is repulsive (away from w_k) when ⟨G_jk, w_k⟩ > 0; since
    ⟨x, w_k⟩ = z_k(x) this is S_jk = (V_j·V_k) Σ_x σ'(z_j(x)) h_k(x) z_k(x) > 0. Returns the share of
    pairs with S_jk > 0 (docs/methods.md: "sign-match fraction").
    """
    z = net.pre(a, b).double()  # [N, K]
    h = net.act(z)
    s = (net.V.T.double() @ net.V.double()) * (net.act_grad(z).T @ (h * z))  # [K, K]
    off = ~torch.eye(s.shape[0], dtype=torch.bool)
    return float((s[off] > 0).double().mean())


@dataclass
class Li2History:
    """Everything a Li₂ run records (per epoch, in memory)."""

    config: Li2Config
    grams: Float[Tensor, "n_win W W"]  # Gram of the W updates ending at epoch `window_epochs[i]`
    window_epochs: np.ndarray  # [n_win] = W..epochs
    curves: pd.DataFrame  # epoch, train_loss, test_loss, train_acc, test_acc
    sign: pd.DataFrame  # epoch, sign_match
    net: Li2Net
    grads: Float[Tensor, "n P"] | None = None  # loss gradients at the `record_grads` epochs
    updates: Float[Tensor, "n P"] | None = None  # the Adam updates that followed them

    def edge(self) -> pd.DataFrame:
        """Per-window edge statistics (epoch = the window's last update): σ_1..σ_3, r_12, r_23, k*."""
        st = gram_stats(self.grams)
        return pd.DataFrame({"epoch": self.window_epochs, "sigma_1": st.sigma[:, 0].numpy(),
                             "sigma_2": st.sigma[:, 1].numpy(), "sigma_3": st.sigma[:, 2].numpy(),
                             "r_12": st.r_12.numpy(), "r_23": st.r_23.numpy(), "kstar": st.kstar.numpy()})


@torch.no_grad()
def _evaluate(net: Li2Net, a, b, y, tr, te, loss: str) -> dict:
    out = net(a, b)
    per = (F.cross_entropy(out, y, reduction="none") if loss == "ce"
           else (out - F.one_hot(y, out.shape[-1]).to(out.dtype)).pow(2).mean(-1))
    ok = (out.argmax(-1) == y).double()
    return {"train_loss": float(per[tr].mean()), "test_loss": float(per[te].mean()),
            "train_acc": float(ok[tr].mean()), "test_acc": float(ok[te].mean())}


def centroid(net: Li2Net, a: Tensor, b: Tensor) -> Float[Tensor, " P"]:
    """c = ∇_θ mean_x Σ_c ŷ_c(x) over the inputs (a, b), flattened like `Li2Net.flat` (float64)."""
    net.zero_grad(set_to_none=True)
    net(a, b).sum(-1).mean().backward()
    out = flatten((q.grad for q in (net.W_a, net.W_b, net.V)), torch.float64)
    net.zero_grad(set_to_none=True)
    return out


def train_li2(cfg: Li2Config, *, progress: bool = False, on_snapshot=None,
              record_grads: range | None = None) -> Li2History:
    """Train one Li₂ run in memory. on_snapshot(epoch, net) is called every `snapshot_every` epochs and
    at the end. Memory: W·P floats of deltas + n_epochs·W² Gram entries (+ the model and Adam state).
    record_grads: epochs whose loss gradient (before weight decay; flattened like `flat`) and following
    update are kept in `history.grads` / `history.updates` (for the coupling analysis)."""
    from tqdm.auto import tqdm

    a, b, y, tr, te = li2_split(cfg.m, cfg.train_frac, cfg.seed)
    net = Li2Net(cfg.m, cfg.hidden, cfg.activation, cfg.seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    w = cfg.window
    ring = torch.zeros(w, 3 * cfg.m * cfg.hidden, dtype=torch.float64)
    grams, curves, sign, grads, updates = [], [], [], [], []
    prev = net.flat()
    for epoch in tqdm(range(cfg.epochs + 1), disable=not progress, desc="li2", unit="epoch", leave=False):
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            curves.append({"epoch": epoch, **_evaluate(net, a, b, y, tr, te, cfg.loss)})
        if cfg.sign_every and (epoch % cfg.sign_every == 0 or epoch == cfg.epochs):
            sign.append({"epoch": epoch, "sign_match": sign_match(net, a[tr], b[tr])})
        if on_snapshot is not None and cfg.snapshot_every and (epoch % cfg.snapshot_every == 0
                                                                 or epoch == cfg.epochs):
            on_snapshot(epoch, net)
        if epoch == cfg.epochs:
            break
        opt.zero_grad(set_to_none=True)
        li2_loss(net, a[tr], b[tr], y[tr], cfg.loss).backward()
        keep = record_grads is not None and epoch in record_grads
        if keep:
            grads.append(flatten((q.grad for q in (net.W_a, net.W_b, net.V)), torch.float64))
        opt.step()
        cur = net.flat()
        if keep:
            updates.append(cur - prev)
        ring = torch.roll(ring, -1, 0)
        ring[-1] = cur - prev
        prev = cur
        if epoch + 1 >= w:
            grams.append(update_gram(ring))
    return Li2History(config=cfg, grams=torch.stack(grams), window_epochs=np.arange(w, cfg.epochs + 1),
                      curves=pd.DataFrame(curves), sign=pd.DataFrame(sign), net=net,
                      grads=torch.stack(grads) if grads else None, updates=torch.stack(updates) if updates else None)
