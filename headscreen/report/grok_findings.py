"""The findings check of a Dyck/SCAN grok run or sweep: the study's findings (docs/methods.md, "Grokking II: the
published recipes") against the measures the report pipeline prepared (headscreen.grokking.published.
sequence_checks, via report/inputs.py). A measured figure "holds" when it lies within a factor 3 of the
published one (compression), or on the published side of the stated bars (gradient share: >= 0.8 before,
<= 0.2 at; ablation: a cost of at least a third of the published one, Δacc <= -0.19 on Dyck, and edge / random
at least the published ratio, where random ablations that change no prediction count as infinite). Nothing is computed here.
"""

from __future__ import annotations

from headscreen.report.content import Section, Table


def _onset_row(ev: dict, task: str) -> list:
    finding = f"defect onset precedes grokking ({'Dyck 14/15' if task == 'dyck' else 'SCAN 11/12'} grokking runs)"
    if ev["grok_step"] is None:
        return [finding, "cannot test", f"no grokking (test accuracy ≥ 0.98 at 3 evaluations in a row) by step "
                f"{ev['last_step']} (final {ev['final_test_acc']:.3f})"]
    if ev["onset_step"] is None:
        return [finding, "not held", f"grokked at step {ev['grok_step']} with no defect onset"]
    verdict = "held" if ev["lead"] > 0 else "not held"
    return [finding, verdict, f"onset step {ev['onset_step']}, grokking step {ev['grok_step']} (lead {ev['lead']})"]


def _g23_row(checks: dict) -> list:
    pub, r = checks["g23_published"], checks["g23"]
    finding = f"g₂₃ compresses {pub:g}× by grokking"
    if r["status"] != "done":
        return [finding, "cannot test", r["why"]]
    verdict = "held" if pub / 3 <= r["compression"] <= pub * 3 else "not held"
    return [finding, verdict, f"{r['compression']:.1f}× (peak at step {r['peak_step']}, window ending {r['at_step']}; "
            f"grokking {r['grok_step']}, window {r['window']})"]


def _share_row(checks: dict) -> list:
    pub, r = checks["share_published"], checks["share"]
    finding = f"gradient share of v₁'s update energy {pub['before']:.1%} before → {pub['at']:.1%} at grokking"
    if r["status"] != "done":
        return [finding, "cannot test", r["why"]]
    b, a = r["before"]["grad_share"], r["at"]["grad_share"]
    verdict = "held" if b >= 0.8 and a <= 0.2 else "not held"
    return [finding, verdict, f"{b:.1%} (window ending step {r['before']['step']}) → {a:.1%} (step {r['at']['step']}); "
            f"grokking (test ≥ 0.95) at {r['grok_step']}"]


def _ablation_row(checks: dict) -> list:
    pub, r = checks["ablation_published"], checks["ablation"]
    finding = (f"ablating the top two edge directions costs {pub['delta_acc']:+.2f} accuracy, > {pub['ratio']:g}× "
               f"a random direction ({pub['where']})")
    if r["status"] != "done":
        return [finding, "cannot test", r["why"]]
    ratio = r["ratio"]
    strong = r["edge_delta"] <= pub["delta_acc"] / 3 and (ratio is None or ratio >= pub["ratio"])
    shown = "∞ (every random ablation left accuracy unchanged)" if ratio is None else f"{ratio:.3g}×"
    return [finding, "held" if strong else "not held",
            f"Δacc {r['edge_delta']:+.3f} from {r['base_acc']:.3f} at step {r['step']} (window {r['window_steps'][0]}–"
            f"{r['window_steps'][-1]}); {len(r['random_deltas'])} random 2-bases: mean {r['random_mean']:+.2g}, "
            f"max |Δ| {r['random_max_abs']:.2g}; edge / random {shown}; first {r['n_eval']} test sequences"]


def _run_rows(checks: dict) -> list[list]:
    task = checks["task"]
    return [_onset_row(checks["events"], task),
            [f"lead-time law α {checks['law_published']['alpha']}", "cannot test",
             "one run: the law needs a learning-rate sweep (report the sweep folder)"],
            _g23_row(checks), _share_row(checks), _ablation_row(checks)]


def _sweep_rows(law: dict) -> list[list]:
    pub, fit = law["published"], law["fit"]
    rows = [["defect onset precedes grokking (published: every run with an onset)",
             "held" if law["with_onset"] and law["onset_before_grok"] == law["with_onset"] else
             ("cannot test" if not law["with_onset"] else "not held"),
             f"{law['onset_before_grok']} of {law['with_onset']} grokking runs with an onset "
             f"({law['grokked']} of {law['runs']} runs grokked)"]]
    finding = f"lead-time law ℓ ∝ t_grok^α, α {pub['alpha']} (R² {pub['r2']}, n {pub['n']})"
    if "alpha" not in fit:
        rows.append([finding, "cannot test", fit["why"]])
    else:
        rows.append([finding, "held" if fit["alpha"] > 1 and fit["r2"] >= 0.8 else "not held",
                     f"α {fit['alpha']:.2f}, R² {fit['r2']:.3f}, n {fit['n']}; {law['verdict']}"])
    return rows


def grok_findings_section(checks: dict | None) -> Section | None:
    """The findings check of a dyck/scan run or sweep from its prepared measures; None for other tasks."""
    if checks is None:
        return None
    rows = _run_rows(checks) if checks["kind"] == "run" else _sweep_rows(checks["law"])
    sec = Section(key="findings", title="Findings check",
                  intro="Each published Dyck/SCAN finding this run's data can test (docs/methods.md, 'Grokking II: "
                        "the published recipes'), with the verdict and the figure behind it. 'cannot test' says why.")
    sec.tables.append(Table(columns=["Published finding", "Verdict", "This run"], rows=rows))
    sec.data = {"checks": [{"finding": f, "verdict": v, "evidence": e} for f, v, e in rows]}
    return sec
