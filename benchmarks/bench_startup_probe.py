"""The start-up check's probe (stl_tune/search/views/eta.py, trial_cost) on this host: how long it takes,
and its estimated step against a timed full-batch step, at the seed study's first config.

    python benchmarks/bench_startup_probe.py [--threads 2] [--repeats 3]

One JSON line per figure. A full step at the recipe's size takes a minute or more on a small CPU.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from stl_tune.model import build_model
from stl_tune.search.spec.space import load_study_file
from stl_tune.search.worker.probe import reference_config, trial_cost
from stl_tune.train import make_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-images", type=int, default=4500, help="STL-10's training split")
    args = ap.parse_args()
    cfg = reference_config(load_study_file("studies/seed.yaml"))
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        cost = trial_cost(cfg, args.train_images, threads=args.threads)
        print(
            json.dumps(
                {
                    "figure": "probe",
                    "wall_s": round(time.perf_counter() - t0, 2),
                    "step_s": round(cost.step_s, 2),
                    "eval_s": round(cost.eval_s, 1),
                    "trial_days": round(cost.seconds / 86400, 2),
                }
            )
        )

    torch.set_num_threads(args.threads)
    model = build_model(cfg.model, 10)
    opt = make_optimizer(model, cfg.optim, fused=False)
    batch, size = cfg.optim.batch_size, cfg.data.image_size
    for i in range(args.repeats):  # the first pays one-time costs
        x, y = torch.rand(batch, 3, size, size), torch.randint(10, (batch,))
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        print(
            json.dumps(
                {
                    "figure": "timed full step",
                    "batch": batch,
                    "warm": i > 0,
                    "step_s": round(time.perf_counter() - t0, 2),
                }
            )
        )


if __name__ == "__main__":
    main()
