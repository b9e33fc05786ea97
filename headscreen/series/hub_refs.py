"""A hub repository's own revisions: its branches, parsed into steps and tokens, and how they match a config.

A config's schedule and `revision_format` are a claim about the repository (OLMoE's format was a guess
from model cards). When the hub answers, `hub_revisions` lists the repository's branches
(`huggingface_hub.HfApi.list_repo_refs`, one API call) and parses each name with
headscreen.series.naming (OLMo `step{N}-tokens{M}B`, OLMo-2 `stage1-step{N}-tokens{M}B`, Pythia
`step{N}`); branches without a step (`main`) are left out. `reconcile` says where the config and the
hub disagree:

  missing_on_hub    schedule steps the hub has no branch for
  renamed           schedule steps the hub has under another name (e.g. tokens rounded differently)
  only_on_hub       hub steps the schedule does not list (count and first few)

`hub_names` gives the revisions a screen of a hub config uses: each schedule step under the hub's own
branch name (steps the hub lacks keep the config's name and fail as not found, as before).
"""

from __future__ import annotations

from headscreen.series.naming import parse_step, parse_tokens
from headscreen.series.schedules import Revision


def hub_revisions(repo: str, *, endpoint: str | None = None) -> list[Revision]:
    """The repository's branches that carry a step, as Revisions (step, branch name, tokens), by step.
    Raises what huggingface_hub raises when the hub cannot be asked (the caller decides)."""
    from huggingface_hub import HfApi

    from headscreen.series.hub import hub_endpoint

    refs = HfApi(endpoint=hub_endpoint(endpoint)).list_repo_refs(repo)
    out: dict[int, Revision] = {}
    for b in refs.branches:
        step = parse_step(b.name)
        if step is None:
            continue
        if step in out:  # two branches for one step (e.g. a re-upload): keep the first by name, say so
            out[step] = min(out[step], Revision(step, b.name, parse_tokens(b.name)), key=lambda r: r.revision)
        else:
            out[step] = Revision(step, b.name, parse_tokens(b.name))
    return [out[s] for s in sorted(out)]


def reconcile(config: list[Revision], hub: list[Revision], *, show: int = 5) -> dict:
    """Where the config's revisions and the hub's branches disagree (module docstring)."""
    by_step = {r.step: r for r in hub}
    want = {r.step for r in config}
    missing = [{"step": r.step, "config_name": r.revision} for r in config if r.step not in by_step]
    renamed = [{"step": r.step, "config_name": r.revision, "hub_name": by_step[r.step].revision}
               for r in config if r.step in by_step and by_step[r.step].revision != r.revision]
    extra = [r.revision for r in hub if r.step not in want]
    return {"n_config": len(config), "n_hub": len(hub), "missing_on_hub": missing, "renamed": renamed,
            "only_on_hub": {"count": len(extra), "first": extra[:show]},
            "agree": not missing and not renamed}


def hub_names(config: list[Revision], hub: list[Revision]) -> list[Revision]:
    """The config's steps under the hub's branch names (and tokens, when the name states them)."""
    by_step = {r.step: r for r in hub}
    out = []
    for r in config:
        h = by_step.get(r.step)
        out.append(r if h is None else Revision(r.step, h.revision, h.tokens if h.tokens is not None else r.tokens))
    return out


def describe(rec: dict) -> list[str]:
    """Lines for `headscreen series`."""
    lines = [f"hub branches with a step: {rec['n_hub']}; config schedule: {rec['n_config']} revisions"]
    if rec["agree"]:
        lines.append("the config's revision names match the hub's branches")
    for m in rec["missing_on_hub"][:5]:
        lines.append(f"step {m['step']}: the config names {m['config_name']!r}, the hub has no branch for this step")
    for m in rec["renamed"][:5]:
        lines.append(f"step {m['step']}: the config names {m['config_name']!r}, the hub calls it {m['hub_name']!r} "
                     "(a screen uses the hub's name)")
    more = len(rec["missing_on_hub"]) + len(rec["renamed"]) - min(5, len(rec["missing_on_hub"])) - min(5, len(rec["renamed"]))
    if more > 0:
        lines.append(f"... and {more} more disagreements")
    if rec["only_on_hub"]["count"]:
        lines.append(f"{rec['only_on_hub']['count']} hub branches are not in the schedule, e.g. {rec['only_on_hub']['first']}")
    return lines
