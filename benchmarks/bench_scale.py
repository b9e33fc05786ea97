"""Dress rehearsal at a real geometry: Pythia-1B or OLMoE-1B-7B, random weights, screen and validate.

    python benchmarks/bench_scale.py --geometry pythia-1b --checkpoints 2 --root /work/scale-tmp/p1b

Writes `--checkpoints` random-weight checkpoints with the real config (benchmarks/scale_geometry.py:
sharded bfloat16 safetensors with a hub-style index, key layout checked against HF's save_pretrained,
and a tokenizer with the real vocabulary), then runs, each in its own subprocess under a memory cap
(a watchdog kills the stage when its anonymous resident memory passes --cap-gb, so that a shared machine
is never pushed into its OOM killer; see run_stage for why this is not an RLIMIT_DATA):

  components  per checkpoint: the weight pass (lazy read of the attention tensors + fused sketch
              update), the boot (dtype: auto), and each probe's forward (run_probe) on its own
  screen      `headscreen screen` end to end (weight pass + probes on every checkpoint)
  validate    `headscreen validate` at the last checkpoint: zero ablation of a given 2-head circuit
              against a small matched-random null, and the head patching map

Printed per stage: seconds, peak RSS (ru_maxrss of the stage's process), bytes read from storage
(/proc/<pid>/io read_bytes; page-cache hits are not counted) and bytes passed through read() (rchar;
mmap reads are not counted), with /proc/loadavg before and after. The probe sizes are scaled down
(flags below; the defaults are what finished on the 2-core, 24 GB host) and the run says which.
The checkpoints are deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" tid")[0].strip()


def _anon_rss(pid: int) -> int:
    """Resident anonymous memory of `pid` in bytes (RssAnon): what the machine cannot page out to the
    checkpoint files. VmRSS also counts the mmapped safetensors pages, which the kernel reclaims under
    pressure."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("RssAnon:")).split()[1]) * 1024


def run_stage(name: str, cmd: list[str], cap_bytes: int, env: dict) -> dict:
    """Run `cmd` under the memory cap; returns seconds, peak RSS (all and anonymous), bytes read, exit code.

    The cap is on anonymous memory, enforced by a watchdog that kills the stage past it. It is not an
    RLIMIT_DATA: that limit also counts the private file mappings through which safetensors and
    transformers read the shards, so a bfloat16 OLMoE-1B-7B boot (13.8 GB of shards mapped + 13.8 GB of
    weights) failed at an 18 GiB RLIMIT_DATA inside transformers' weight conversion while its resident
    memory was 9 GB (measured: a 1-layer OLMoE of 1.2 GB failed the same way at a 3.2 GiB limit and
    booted without one at 2.7 GB peak RSS)."""
    load0, t0 = loadavg(), time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    io = {"read_bytes": 0, "rchar": 0}
    killed: list[int] = []
    peak_anon = [0]

    def watch():
        while proc.poll() is None:
            try:
                anon = _anon_rss(proc.pid)
                peak_anon[0] = max(peak_anon[0], anon)
                for ln in Path(f"/proc/{proc.pid}/io").read_text().splitlines():
                    k, v = ln.split(":")
                    if k in io:
                        io[k] = int(v)
                if anon > cap_bytes:
                    killed.append(anon)
                    os.kill(proc.pid, signal.SIGKILL)
            except (OSError, StopIteration, ValueError):
                pass
            time.sleep(0.25)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    out_lines = []
    for line in proc.stdout:
        out_lines.append(line)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    th.join(timeout=1)
    res = {"stage": name, "seconds": round(time.perf_counter() - t0, 1), "cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
           "peak_rss_gb": round(ru.ru_maxrss / 2**20, 2), "peak_anon_rss_gb": round(peak_anon[0] / 2**30, 2),
           "read_bytes_gb": round(io["read_bytes"] / 1e9, 2), "rchar_gb": round(io["rchar"] / 1e9, 2),
           "exit": proc.returncode, "loadavg_before": load0, "loadavg_after": loadavg(),
           "killed_at_anon_rss_gb": round(killed[0] / 2**30, 2) if killed else None}
    res["tail"] = "".join(out_lines[-6:])[-1500:]
    return res


class _timed:
    """Wall seconds (`<name>_s`) and this process's CPU seconds (`<name>_cpu_s`, user + system: far less
    sensitive to the host's load than the wall time) of a block, into `rec`."""

    def __init__(self, rec: dict, name: str):
        self.rec, self.name = rec, name

    def __enter__(self):
        self.t, self.c = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.rec[f"{self.name}_s"] = round(time.perf_counter() - self.t, 2)
        self.rec[f"{self.name}_cpu_s"] = round(time.process_time() - self.c, 2)


def components(root: str, n_retrieval: int, seq_len: int, n_repeated: int, span: int, micro: int,
               weights_only: bool = False) -> None:
    """In a stage process: per-checkpoint costs of the weight pass, the boot and each probe (JSON on stdout)."""
    import torch

    torch.set_num_threads(1)
    from headscreen.probes.forward import run_probe
    from headscreen.probes.suite import ProbeSuite
    from headscreen.series import LocalSeries
    from headscreen.series.precision import BootSettings, resolve_for_series
    from headscreen.spectral import HeadSketcher, SpectralConfig

    series = LocalSeries(root)
    boot, how = resolve_for_series(series, BootSettings(), "cpu", series.checkpoints[-1])
    sk = HeadSketcher(SpectralConfig(), keep_history=False)
    suite = ProbeSuite(seq_len=seq_len, n_retrieval=n_retrieval, n_repeated=n_repeated, repeated_span=span,
                       micro_batch=micro, bos_id=None)
    out = {"boot_dtype": boot.dtype, "boot_dtype_rule": how, "checkpoints": []}
    for ckpt in series:
        rec = {"step": ckpt.step}
        with _timed(rec, "weight_read"):
            hw = series.head_weights(ckpt, dtype=None)
        with _timed(rec, "weight_sketch"):
            sk.update(hw, ckpt.step, retain=True)
        del hw
        if weights_only:
            out["checkpoints"].append(rec)
            continue
        with _timed(rec, "boot"):
            bridge = series.boot(ckpt)
        rec["booted_weights_gb"] = round(sum(p.numel() * p.element_size() for p in bridge.parameters()) / 1e9, 2)
        batches = suite.build(n_ctx=bridge.cfg.n_ctx, d_vocab=bridge.cfg.d_vocab, tokenizer=bridge.tokenizer)
        for name, b in batches.items():
            with _timed(rec, f"probe_{name}"):
                run_probe(bridge, b, micro_batch=micro)
            rec[f"probe_{name}_tokens"] = int(b.n * b.seq_len)
        del bridge
        out["checkpoints"].append(rec)
    print("COMPONENTS " + json.dumps(out))


def write_config(path: Path, root: Path, args) -> Path:
    import yaml

    cfg = {"name": f"rehearsal-{args.geometry}", "source": {"kind": "local", "local_path": str(root)},
           "probes": {"seq_len": args.seq_len, "n_retrieval": args.n_retrieval, "n_repeated": args.n_repeated,
                      "repeated_span": args.span, "micro_batch": args.micro_batch, "bos_id": None,
                      "pair_range": [4, max(6, args.seq_len // 2)]},
           "validation": {"ablations": ["zero"], "n_null": args.n_null}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--geometry", choices=("pythia-1b", "olmoe-1b-7b"), required=True)
    p.add_argument("--checkpoints", type=int, default=2)
    p.add_argument("--root", default="/work/scale-tmp/rehearsal", help="where the checkpoints go (deleted after)")
    p.add_argument("--cap-gb", type=float, default=19.0, help="memory cap of every stage (GiB)")
    p.add_argument("--n-retrieval", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--n-repeated", type=int, default=2)
    p.add_argument("--span", type=int, default=16)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--n-null", type=int, default=2)
    p.add_argument("--validate-dtype", choices=("auto", "float32", "bfloat16", "float16"), default=None,
                   help="validate's --dtype (default: the screen's)")
    p.add_argument("--shard-gb", type=float, default=1.0, help="shard size of the written checkpoints (GB); "
                   "the writer holds about 2x one shard")
    p.add_argument("--stages", default="write,components,screen,validate")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--weights-only", action="store_true",
                   help="components: the weight pass only (no boot, no probes), for a host without the memory")
    p.add_argument("--components", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.components:
        components(args.root, args.n_retrieval, args.seq_len, args.n_repeated, args.span, args.micro_batch,
                   args.weights_only)
        return 0
    from scale_geometry import check_keys, write_series

    root = Path(args.root)
    run = root.parent / (root.name + "-run")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cap = int(args.cap_gb * 2**30)
    stages = args.stages.split(",")
    results = []
    print(f"geometry {args.geometry}, {args.checkpoints} checkpoints under {root}; probes scaled down to "
          f"n_retrieval={args.n_retrieval}, seq_len={args.seq_len}, n_repeated={args.n_repeated} (span {args.span}), "
          f"micro_batch={args.micro_batch}; validate: zero ablation, n_null={args.n_null}; cap {args.cap_gb} GiB",
          flush=True)
    try:
        if "write" in stages:
            check_keys(args.geometry, root.parent / (root.name + "-keys"))
            shutil.rmtree(root.parent / (root.name + "-keys"), ignore_errors=True)
            t, load0 = time.perf_counter(), loadavg()
            write_series(root, args.geometry, [1000 * i for i in range(args.checkpoints)],
                         shard_bytes=int(args.shard_gb * 1e9))
            size = sum(f.stat().st_size for f in root.rglob("*.safetensors"))
            results.append({"stage": "write", "seconds": round(time.perf_counter() - t, 1),
                            "bytes_written_gb": round(size / 1e9, 2), "loadavg_before": load0, "loadavg_after": loadavg()})
            print(json.dumps(results[-1]), flush=True)
        py = [sys.executable]
        if "components" in stages:
            results.append(run_stage("components", [*py, __file__, "--components", "--geometry", args.geometry,
                                                    "--root", str(root), "--n-retrieval", str(args.n_retrieval),
                                                    "--seq-len", str(args.seq_len), "--n-repeated", str(args.n_repeated),
                                                    "--span", str(args.span), "--micro-batch", str(args.micro_batch),
                                                    *(["--weights-only"] if args.weights_only else [])],
                                     cap, env))
            print(json.dumps(results[-1]), flush=True)
        cfg = write_config(root.parent / (root.name + ".yaml"), root, args)
        if "screen" in stages:
            shutil.rmtree(run, ignore_errors=True)
            results.append(run_stage("screen", [*py, "-m", "pipelines.cli", "--threads", "1", "screen", str(cfg),
                                                "--out", str(run), "--no-progress"], cap, env))
            print(json.dumps(results[-1]), flush=True)
        if "validate" in stages:
            results.append(run_stage("validate", [*py, "-m", "pipelines.cli", "--threads", "1", "validate", str(run),
                                                  "--heads", "L1H0,L3H1", "--ablation", "zero",
                                                  "--n-null", str(args.n_null),
                                                  *(["--dtype", args.validate_dtype] if args.validate_dtype else [])],
                                     cap, env))
            print(json.dumps(results[-1]), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            print(f"removed {root}", flush=True)
    print("SUMMARY " + json.dumps([{k: v for k, v in r.items() if k != "tail"} for r in results]))
    return 0 if all(r.get("exit", 0) == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
