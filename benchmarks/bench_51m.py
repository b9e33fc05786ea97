"""What the 51M recipe (model_configs/synthetic-51m.yaml) costs on this machine's CPU.

    python benchmarks/bench_51m.py [--threads 1 2] [--batch 4] [--steps 5] [--checkpoints 3]
                                   [--n-retrieval 32] [--json out.json]

Measured, in this order (about 4-5 minutes at the defaults on a quiet 2-core host):
1. the parameter count of the recipe's model;
2. the training step time (forward, backward, clip, AdamW) of the recipe's model at its ctx, at each
   --threads count: the median of --steps steps (after one warm-up step) at --batch rows, and the
   step time extrapolated to the recipe's batch: forward + backward scaled by the rows, plus the
   clip + AdamW update, which does not depend on them (a full batch of 64 x 256 tokens takes a minute
   or more per step on a CPU, too long to time here);
3. the screen time per checkpoint of a short series of the model: --checkpoints checkpoints one step
   apart (trained by the real trainer at batch 2 on the built-in story grammar), screened by the real
   `screen` with the recipe's probes cut to --n-retrieval retrieval and n_retrieval / 4 repeated
   examples, at the recipe's `threads` (1); the per-checkpoint time is also scaled linearly in examples
   to the recipe's probe sizes (256 + 64), an overestimate (it scales the boot and the sketch too);
4. the extrapolated wall time of the full recipe on this CPU: 10,000 steps at the extrapolated step
   time plus the screen of its 51 checkpoints.
No GPU figure: run it on a machine with one (`--device cuda` for train and screen) to get it.
Timings taken while other work runs on the machine are not benchmarks: the load average is printed
beside every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from headscreen.config import load_config  # noqa: E402
from headscreen.synthetic import SyntheticCorpus, TrainConfig, build_model, train_series  # noqa: E402
from headscreen.synthetic.train import _optimizer  # noqa: E402  (the trainer's own AdamW groups)


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def step_times(cfg: TrainConfig, batch: int, steps: int) -> tuple[list[float], list[float]]:
    """(forward + backward seconds, clip + AdamW seconds) of `steps` training steps of `cfg`'s model at
    `batch` rows, after one warm-up step."""
    cfg = dataclasses.replace(cfg, batch_size=batch, corpus=None)  # the text source does not change the step
    corpus = SyntheticCorpus(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).train()
    opt = _optimizer(model, cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    fwd_bwd, update = [], []
    for i in range(steps + 1):
        tokens = corpus.batch(i)
        t0 = time.perf_counter()
        loss = model(input_ids=tokens, labels=tokens).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        opt.step()
        t2 = time.perf_counter()
        if i:
            fwd_bwd.append(t1 - t0)
            update.append(t2 - t1)
    return fwd_bwd, update


def screen_series(cfg: TrainConfig, model_cfg, where: Path, n_ckpt: int, n_retrieval: int) -> dict:
    from pipelines.screen import ScreenSettings, screen

    short = dataclasses.replace(cfg, corpus=None, batch_size=2, steps=n_ckpt - 1, checkpoint_every=1,
                                log_checkpoints_until=0, eval_batch_size=4)
    t0 = time.perf_counter()
    series = train_series(short, where / "series", progress=False, device="cpu")
    train_s = time.perf_counter() - t0
    settings = ScreenSettings.from_config(model_cfg)
    n_repeated = max(1, n_retrieval // 4)
    settings = dataclasses.replace(settings, probes=dataclasses.replace(settings.probes, n_retrieval=n_retrieval,
                                                                       n_repeated=n_repeated))
    load = _load()
    t0 = time.perf_counter()
    screen(series, where / "run", config=model_cfg, settings=settings, progress=False, device="cpu")
    wall = time.perf_counter() - t0
    full = model_cfg.section("probes")
    scale = (full["n_retrieval"] + full["n_repeated"]) / (n_retrieval + n_repeated)
    return {"checkpoints": n_ckpt, "n_retrieval": n_retrieval, "n_repeated": n_repeated,
            "train_short_series_s": round(train_s, 1), "screen_s": round(wall, 1),
            "screen_per_checkpoint_s": round(wall / n_ckpt, 2),
            "screen_per_checkpoint_full_probes_s": round(wall / n_ckpt * scale, 1),
            "load_before": load, "load_after": _load()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="synthetic-51m")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=4, help="rows per timed step (the recipe's ctx)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--checkpoints", type=int, default=3)
    p.add_argument("--n-retrieval", type=int, default=32)
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()

    model_cfg = load_config(args.config)
    cfg = TrainConfig.from_dict(model_cfg.section("train"))
    with torch.device("meta"):
        n_params = sum(q.numel() for q in build_model(cfg).parameters())
    result: dict = {"config": args.config, "parameters": n_params, "ctx": cfg.ctx, "recipe_batch": cfg.batch_size,
                    "recipe_steps": cfg.steps, "cores": os.cpu_count(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "steps": {}}
    print(f"{args.config}: {n_params:,} parameters; ctx {cfg.ctx}, batch {cfg.batch_size}, {cfg.steps} steps", flush=True)

    rows = args.batch
    for n in args.threads:
        torch.set_num_threads(n)
        load = _load()
        fwd_bwd, update = step_times(cfg, rows, args.steps)
        fb, up = statistics.median(fwd_bwd), statistics.median(update)
        full = fb * cfg.batch_size / rows + up  # forward/backward scale with the rows; the update does not
        result["steps"][n] = {"batch": rows, "median_step_s": round(fb + up, 3), "median_forward_backward_s": round(fb, 3),
                              "median_clip_adamw_s": round(up, 3), f"extrapolated_s_batch{cfg.batch_size}": round(full, 1),
                              "load_before": load, "load_after": _load()}
        print(f"threads {n}: step {fb + up:.2f} s at batch {rows} (forward+backward {fb:.2f} s, clip+AdamW {up:.2f} s) "
              f"-> {full:.1f} s at batch {cfg.batch_size} (extrapolated); load {load} -> {_load()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench51m-") as tmp:
        sc = screen_series(cfg, model_cfg, Path(tmp), args.checkpoints, args.n_retrieval)
    sc["threads"] = torch.get_num_threads()  # the recipe's `threads` (train_series sets it)
    result["screen"] = sc
    print(f"screen: {sc['screen_per_checkpoint_s']:.1f} s per checkpoint with {sc['n_retrieval']}+{sc['n_repeated']} probe "
          f"examples ({sc['screen_per_checkpoint_full_probes_s']:.0f} s scaled to 256+64) at {sc['threads']} thread(s); "
          f"load {sc['load_before']} -> {sc['load_after']}", flush=True)

    n_ckpt = len(cfg.checkpoint_steps())
    screen_total = n_ckpt * sc["screen_per_checkpoint_full_probes_s"]
    result["full_recipe_cpu"] = {}
    for n, row in result["steps"].items():
        step_s = row[f"extrapolated_s_batch{cfg.batch_size}"]
        total = cfg.steps * step_s + screen_total
        result["full_recipe_cpu"][n] = {"train_s": round(cfg.steps * step_s), "screen_s": round(screen_total),
                                        "total_days": round(total / 86400, 1)}
        print(f"full recipe on this CPU, training at {n} thread(s): {cfg.steps} steps x {step_s:.0f} s + {n_ckpt} "
              f"checkpoints screened x {sc['screen_per_checkpoint_full_probes_s']:.0f} s = {total / 86400:.1f} days "
              "(extrapolated)")
    print("GPU: none on this machine" if result["gpu"] is None else f"GPU present: {result['gpu']} (not timed here)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
