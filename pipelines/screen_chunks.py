"""The per-checkpoint work of a screen, split into contiguous chunks that any executor can run.

A chunk is a run of consecutive checkpoints of the series (indices into its `kept` list). Its task
reads the checkpoint before the chunk (θ_{t−1} of its first update; with --skip-bad the last one
before it that passes its checks), then every checkpoint of the chunk in order, and returns one record
per checkpoint: the probe tables and the sketch record. A sketch record stores the update's own
increment Φδ_t (or Φθ_0 for the series' first checkpoint), not the running sum s_t, so it does not
depend on where a chunk starts; the summary forms s_t = s_{t−1} + Φδ_t in float64, in series order,
exactly as HeadSketcher's running sum does: the tables are bit-identical for any split and executor.

Tasks never write: the driver (`record_checkpoints`) writes their records into the run store in
series order as chunks finish, so the lock, atomic writes and resume are those of a one-process screen.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from headscreen.compute.executors import Executor, TaskFailed, WorkerDied, chunks
from headscreen.probes.budget import micro_batch_for
from headscreen.probes.screen import non_finite_outputs, screen_checkpoint
from headscreen.rundir.store import RunStore
from headscreen.series import HeadWeights, NonFiniteOutputs, NonFiniteWeights, Series, SeriesError
from headscreen.spectral import HeadSketcher

PROBE_TABLES = ("selectivity", "head_scores", "participation", "copying")


def head_weights_from_bridge(bridge) -> HeadWeights:
    """Per-head weights of a booted bridge (raw mode), in the shapes of `HeadWeights`."""
    def bias(name):
        try:
            return getattr(bridge, name).detach().cpu()
        except AttributeError:  # bias-free architectures
            return None

    # on the CPU, where the sketcher and the lazily read checkpoints hold theirs (a no-op for a CPU bridge)
    return HeadWeights(W_Q=bridge.W_Q.detach().cpu(), W_K=bridge.W_K.detach().cpu(), W_V=bridge.W_V.detach().cpu(),
                       W_O=bridge.W_O.detach().cpu(), b_Q=bias("b_Q"), b_K=bias("b_K"), b_V=bias("b_V"), b_O=bias("b_O"))


def read_checkpoint(series: Series, ckpt, settings, batches, *, probe: bool, device: str):
    """(head weights, probe tables or None, probe batches) of one checkpoint; a `SeriesError` names it.

    The head weights always come from the lazy reader (as stored: fp16 stays fp16), probed or not: the
    sketch's float64 sums run in the weights' memory order, so every checkpoint must reach the
    sketcher in the same layout for a record not to depend on whether its checkpoint was probed in
    this run (a resumed screen recomputes a sketch record without its probes). They are read unchecked
    (`check=False`): the sketcher's fused pass checks its sums for NaN/Inf and raises `NonFiniteWeights`
    naming the tensor, so the caller runs the sketch update where it handles a `SeriesError`."""
    if not probe:
        return series.head_weights(ckpt, dtype=None, check=False), None, batches
    bridge = series.boot(ckpt, device=device)  # runs the checkpoint checks first
    if batches is None:
        tok = getattr(bridge, "tokenizer", None)
        batches = settings.probes.build(n_ctx=bridge.cfg.n_ctx, d_vocab=bridge.cfg.d_vocab, tokenizer=tok)
    micro = micro_batch_for(bridge, batches, settings.probes.micro_batch, device=device)  # capped to the memory budget
    with torch.no_grad():
        tables = screen_checkpoint(bridge, batches, settings.thresholds, micro_batch=micro,
                                   step=ckpt.step, tokens=ckpt.tokens)
    bad = non_finite_outputs(tables)
    if bad:
        raise NonFiniteOutputs(f"checkpoint {ckpt.label()}: the probes' forward pass gave {bad}; a weight outside "
                               "attention is probably NaN/Inf or overflowed — drop this checkpoint or screen with "
                               "--skip-bad")
    del bridge
    return series.head_weights(ckpt, dtype=None, check=False), tables, batches


@dataclass(frozen=True)
class Chunk:
    """kept[lo:hi] of the series, with what each of them still needs: {kept index: (sketch, probes)}."""

    lo: int
    hi: int
    needs: dict[int, tuple[bool, bool]]


def screen_chunk(series: Series, settings, kept: list[int], chunk: Chunk, skip_bad: bool, device: str,
                 emit=None) -> dict:
    """The records of one chunk (a task: reads the checkpoints, writes nothing). Returns {"records":
    [{"index", "status": ok|skipped|error, ...}], "batches": probe batch metadata or None,
    "sketch": the sketcher's provenance or None}; a checkpoint that fails its checks without
    `skip_bad` ends the chunk with an "error" record holding the exception. With `emit` (in-process
    only), each record is handed to emit(record) as soon as it is made instead of being collected,
    so an interrupted in-process screen keeps every finished checkpoint."""
    sketcher = HeadSketcher(settings.spectral, keep_history=False)
    batches, records = None, []
    if emit is not None:
        records = _Emitting(emit)
    prev = _before(series, kept, chunk.lo, skip_bad)  # index of θ_{t-1} of the chunk's first checkpoint
    held = None
    for i in kept[chunk.lo:chunk.hi]:
        ckpt = series.checkpoints[i]
        need_sketch, need_probes = chunk.needs.get(i, (False, False))
        if not (need_sketch or need_probes):
            prev = i
            continue
        failure, step = None, None
        try:
            weights, tables, batches = read_checkpoint(series, ckpt, settings, batches, probe=need_probes, device=device)
        except SeriesError as e:
            failure = e
        if failure is None and need_sketch:
            if prev is not None and held != prev:  # θ_{t-1} from its checkpoint; no running sum is carried.
                # Outside the handling below: a failure here is θ_{t-1}'s, not this checkpoint's
                _prime(sketcher, series.head_weights(series.checkpoints[prev], dtype=None), series.checkpoints[prev].step)
                held = prev
            try:  # read for this record only: no copy kept
                step = sketcher.update(weights, ckpt.step, retain=True)
            except NonFiniteWeights as e:  # read unchecked: the pass found NaN/Inf, before any state changed
                failure = e
        if failure is not None:
            if not skip_bad:
                records.append({"index": i, "status": "error", "error": failure})
                break
            records.append({"index": i, "status": "skipped", "reason": " ".join(str(failure).split())})
            continue
        rec = {"index": i, "status": "ok", "prev": prev,
               "tables": {k: tables[k] for k in PROBE_TABLES} if need_probes else None, "tensors": None}
        if step is not None:
            held = i
            key, value = ("sketch", step.sketch) if step.increment is None or prev is None else ("increment", step.increment)
            rec["tensors"] = {key: value, "update_norm": step.update_norm}
        records.append(rec)
        weights = None
        prev = i
    meta = None if batches is None else {name: {"n": b.n, "seq_len": b.seq_len, "has_bos": b.has_bos, "seed": b.seed,
                                                "meta": b.meta} for name, b in batches.items()}
    return {"records": records, "batches": meta,
            "sketch": sketcher.provenance() if sketcher.projector is not None else None}


def _prime(sketcher: HeadSketcher, weights: HeadWeights, step: int) -> None:
    """Hold θ_{t-1} without projecting it: the records use only the increment Φδ_t, so the running sum
    is started from zeros (priming without a sketch would project θ_{t-1} in float64 for nothing)."""
    dim = sketcher.config.dim
    if sketcher.config.exact or dim is None:
        sketcher.prime(weights, step, retain=True)
    else:
        sketcher.prime(weights, step, sketch=torch.zeros(weights.n_layers, weights.n_heads, dim, dtype=torch.float64),
                       retain=True)


class _Emitting(list):
    """A record list that hands each record on instead of keeping it."""

    def __init__(self, emit):
        super().__init__()
        self._emit = emit

    def append(self, rec) -> None:
        self._emit(rec)


def _before(series: Series, kept: list[int], lo: int, skip_bad: bool) -> int | None:
    """The checkpoint before kept[lo] that the update of kept[lo] starts from (with `skip_bad`, the last
    one that passes its checks, as a one-process screen would have left it)."""
    for q in range(lo - 1, -1, -1):
        if not skip_bad:
            return kept[q]
        try:
            series.check(series.checkpoints[kept[q]])
            return kept[q]
        except SeriesError:
            continue
    return None


def record_checkpoints(series: Series, store: RunStore, settings, kept: list[int], identities: list[dict],
                       probe_steps: set[int], *, skip_bad: bool, skipped: list[dict], progress: bool, device: str,
                       executor: Executor, n_chunks: int | None = None) -> tuple[list[int], bool]:
    """Record every checkpoint of `kept` that lacks a record, `n_chunks` (default: the executor's
    workers) chunks at a time on `executor`; the driver writes the records in series order. Returns
    (steps recorded or already present, replan): `replan` is True when a checkpoint newly skipped
    makes records after it name the wrong θ_{t-1} — they were not written; screen again to fill them."""
    have_sketch, have_probes = set(store.recorded_steps("sketch")), set(store.recorded_steps("probes"))
    needs = {}
    for i in kept:
        step = series.checkpoints[i].step
        ns, np_ = step not in have_sketch, step in probe_steps and step not in have_probes
        if ns or np_:
            needs[i] = (ns, np_)
    store.update_manifest(skipped=skipped)  # rebuilt by every screen
    pos = [k for k, i in enumerate(kept) if i in needs]  # positions in `kept` with work to do
    ranges = chunks(len(pos), n_chunks or executor.workers) if pos else []
    los = [0] + [pos[r.start] for r in ranges[1:]]  # chunk j covers kept[lo:hi], up to the next one's first
    his = [*los[1:], len(kept)]
    parts = [Chunk(lo, hi, {kept[k]: needs[kept[k]] for k in pos[r.start:r.stop]})
             for lo, hi, r in zip(los, his, ranges, strict=False)]
    state = _Writer(series, store, identities, skipped, have_sketch, kept)
    bar = tqdm(total=len(needs), desc=f"screen ({executor.kind}, {len(parts)} chunk(s))", unit="ckpt",
               disable=not progress, file=sys.stderr)
    done: dict[int, object] = {}
    nxt = 0
    try:
        if executor.kind == "local":  # in this process: each record is written as soon as it is made
            for c in parts:
                state.begin(c)
                out = screen_chunk(series, settings, kept, c, skip_bad, device,
                                   emit=lambda rec, c=c: state.write_record(c, rec, bar))
                state.finish(c, out)
        else:
            for j, out in executor.run(screen_chunk, [(series, settings, kept, c, skip_bad, device) for c in parts]):
                done[j] = out
                while nxt in done:
                    state.write_chunk(parts[nxt], done.pop(nxt), bar)
                    nxt += 1
    finally:
        bar.close()
    return state.good(), state.replan


class _Writer:
    """The driver's side: writes chunk results in series order and keeps the manifest in step."""

    def __init__(self, series, store, identities, skipped, have_sketch, kept):
        self.series, self.store, self.identities, self.skipped = series, store, identities, skipped
        self.have_sketch, self.kept = have_sketch, kept
        self.last_good: int | None = None
        self.written: set[int] = set()
        self.failed: set[int] = set()
        self.replan = False
        self.manifest_done = False
        self.cursor = 0

    def good(self) -> list[int]:
        return [self.series.checkpoints[i].step for i in self.kept if i not in self.failed]

    def write_chunk(self, chunk: Chunk, out, bar) -> None:
        """A whole chunk's result (from a worker), or its failure."""
        ckpts = self.series.checkpoints
        if isinstance(out, TaskFailed):
            first, last = ckpts[self.kept[chunk.lo]], ckpts[self.kept[chunk.hi - 1]]
            if not out.crashed:
                raise out.error
            raise WorkerDied(f"a worker died while screening steps {first.step}..{last.step} "
                               f"({out.describe()}); every earlier record is kept — rerun the same command to resume")
        self.begin(chunk)
        for rec in out["records"]:
            self.write_record(chunk, rec, bar)
        self.finish(chunk, out)

    def begin(self, chunk: Chunk) -> None:
        self.cursor = chunk.lo  # position in `kept` of the next checkpoint to account for

    def _advance(self, chunk: Chunk, upto: int) -> None:
        """Checkpoints before kept position `upto` that had nothing to do were recorded before: good."""
        while self.cursor < upto:
            if self.kept[self.cursor] not in chunk.needs:
                self.last_good = self.kept[self.cursor]
            self.cursor += 1

    def finish(self, chunk: Chunk, out) -> None:
        self._advance(chunk, chunk.hi)
        if not self.manifest_done and (out["sketch"] or out["batches"]):
            fields = {}
            if out["sketch"]:
                fields["sketch"] = {**out["sketch"], "stored": "per update: 'increment' = P delta_t (float64), or "
                                    "'sketch' = P theta for a series' first checkpoint; s_t is summed in series order"}
            if out["batches"]:
                fields["probes"] = out["batches"]
            self.store.update_manifest(**fields)
            self.manifest_done = bool(out["sketch"] and out["batches"])

    def write_record(self, chunk: Chunk, rec: dict, bar) -> None:
        i = rec["index"]
        self._advance(chunk, self.kept.index(i, self.cursor))
        self.cursor += 1
        ckpt = self.series.checkpoints[i]
        if rec["status"] == "error":
            raise rec["error"]
        if rec["status"] == "skipped":
            print(f"screen: skipping {ckpt.label()}: {rec['reason']}", file=sys.stderr)
            self.skipped.append({"step": ckpt.step, "name": ckpt.name, "reason": rec["reason"],
                                 "identity": self.identities[i]})
            self.store.update_manifest(skipped=self.skipped)
            self.failed.add(i)
            if ckpt.step in self.have_sketch:  # a record after it was taken from it: recompute those
                self.store.remove_record("sketch", ckpt.step)
                self.replan = True
            bar.update(1)
            return
        if rec["tables"] is not None:
            self.store.write_frames("probes", ckpt.step, rec["tables"], meta={"identity": self.identities[i]})
        if rec["tensors"] is not None:
            if rec["prev"] != self.last_good:  # its chunk did not see a skip before it: redo it next pass
                self.replan = True
            else:
                prev = self.identities[rec["prev"]] if rec["prev"] is not None else None
                self.store.write_tensors("sketch", ckpt.step, rec["tensors"],
                                         meta={"tokens": ckpt.tokens, "identity": self.identities[i], "previous": prev,
                                               "record": "increment"})
        self.last_good = i
        bar.update(1)


def sketches_from_records(tensors: list[dict]) -> torch.Tensor:
    """[T, layer, head, d] s_t from the sketch records of consecutive checkpoints, oldest first: a record
    holds either s_t itself ('sketch') or its increment over the previous record ('increment')."""
    out, s = [], None
    for t in tensors:
        if "sketch" in t:
            s = t["sketch"]
        else:
            if s is None:
                raise ValueError("a sketch record holds an increment but no record before it holds a sketch; "
                                 "rerun the screen with --force")
            s = s + t["increment"]
        out.append(s)
    return torch.stack(out)


def record_duplicates(store: RunStore, steps: list[int], norms: torch.Tensor) -> list[dict]:
    """Find the checkpoints of `steps` that repeat their predecessor's attention weights exactly
    (headscreen.spectral.duplicates), record them in the manifest's `duplicates` (an empty list when
    none) and say so on stderr. Returns them."""
    from headscreen.spectral.duplicates import RULE, describe, find_duplicates

    found = find_duplicates(steps, norms, store.manifest().get("checkpoints"))
    store.update_manifest(duplicates=found, duplicates_rule=RULE)
    if found:
        print(f"screen: {describe(found)}", file=sys.stderr)
    return found
