"""The cross-model table: one row per run, from the numbers its own sections already hold."""

from __future__ import annotations

from headscreen.report.causal_sections import primary_record
from headscreen.report.content import RunReport, Section, Table, head_list


def _data(run: RunReport, key: str) -> dict:
    return next((s.data for s in run.sections if s.key == key), {})


def comparison_row(run: RunReport) -> dict:
    bos = _data(run, "bos_layers01")
    at = bos.get("at_step") or {}
    circuits = _data(run, "circuits").get("circuits_at_step")
    induction = [tuple(h) for h in circuits["induction"]] if circuits else None
    ablation = _data(run, "ablation")
    val = primary_record(ablation.get("records") or [], run.step, run.probe)
    lead = _data(run, "lead_times")
    return {
        "model": run.name,
        "run_directory": run.path,
        "step": run.step,
        "probe": run.probe,
        "bos_layer0": at.get("layer0"),
        "bos_layer1": at.get("layer1"),
        "bos_layers01_total": at.get("total"),
        "bos_layers01_max_over_checkpoints": bos.get("max_total"),
        "induction_circuit": [list(h) for h in induction] if induction is not None else None,
        "induction_circuit_size": len(induction) if induction is not None else None,
        "validated": val is not None,
        "validation_status": ablation.get("status") if ablation.get("records") is not None else "not validated",
        "validation_ablation": val["ablation"] if val else None,
        "validation_step": val["step"] if val else None,
        "validation_probe": val["probe"] if val else None,
        "effect_ratio": val["effect_ratio"] if val else None,
        "p_value": val["p_value"] if val else None,
        "median_lead_steps": lead.get("median_lead_steps_induction"),
    }


def _or(value, missing: str):
    return missing if value is None else value


def comparison_section(runs: list[RunReport]) -> Section:
    rows = [comparison_row(r) for r in runs]
    table_rows = []
    for r in rows:
        bos = "not recorded" if r["bos_layers01_total"] is None else (
            f"{_or(r['bos_layer0'], '?')} / {_or(r['bos_layer1'], '?')}" if r["bos_layer0"] is not None
            or r["bos_layer1"] is not None else f"{r['bos_layers01_total']} (L0+L1)")
        circuit = "not recorded" if r["induction_circuit"] is None else head_list(r["induction_circuit"])
        if r["validated"]:
            where = f"step {r['validation_step']}" + "".join(
                f", {x}" for x in (r["validation_probe"], r["validation_ablation"]) if x)
            ratio, p = _or(r["effect_ratio"], "undefined (mean random drop ≤ 0)"), _or(r["p_value"], "–")
        else:
            where = "not validated" if r["validation_status"] in (None, "not validated", "done") else (
                f"validated: {r['validation_status']}")
            ratio = p = "not validated"
        table_rows.append([
            r["model"], r["step"], bos, r["bos_layers01_max_over_checkpoints"], circuit, r["induction_circuit_size"],
            where, ratio, p,
            _or(r["median_lead_steps"], "no lead time"),
        ])
    table = Table(
        columns=["Model", "Step", "BOS heads L0 / L1", "Max BOS L0+L1 (any checkpoint)", "Induction circuit", "Size",
                 "Ablation at", "Effect ratio", "p-value", "Median spectral lead (steps)"],
        rows=table_rows,
        caption="One row per run at its report step and probe. Effect ratio and p-value: the primary metric's, "
                "zero-ablation preferred, at the report step (else the latest validated step). Lead: median over "
                "induction heads of emergence − spectral onset.")
    return Section(key="comparison", title="Comparison across models",
                   intro=f"{len(runs)} runs, each at its own report step.", tables=[table], data={"rows": rows})
