#!/usr/bin/env python3
"""PyTorch (eager, 2 threads) training-step time of liteCLIP on the inputs of
`liteclip bench --train-batch B` (Sources/LiteCLIP/Benchmark.swift, TrainBenchmark): the seed's
loss, backward and an Adam step (lr 2e-4), train mode (dropout 0.1). One untimed step, then
the best of --reps. Prints one JSON object: {"engine": "pytorch", "name", "seconds", "peak_rss_bytes"}.
Used by scripts/bench-train; needs torch, timm, transformers."""
import argparse, json, os, resource, sys, time

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "golden"))
sys.path.insert(0, here)
import make_reference as mr  # noqa: E402
import make_training as mt  # noqa: E402
from bench_reference import CAPTIONS, pixels  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(2)
    sd = mr.state_dict_of(torch.load(a.checkpoint, map_location="cpu", weights_only=True))
    model, _ = mr.build(sd, os.path.join(a.tokenizer, "config.json"))
    model.train()
    tok = mr.AutoTokenizer.from_pretrained(a.tokenizer)
    px = pixels(a.batch)
    text = tok([CAPTIONS[i % len(CAPTIONS)] for i in range(a.batch)], padding="max_length", truncation=True,
               max_length=mr.MAX_LENGTH, return_tensors="pt")
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    best = float("inf")
    for i in range(a.reps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _ = mt.loss_fn(model, px, text)
        loss.backward()
        opt.step()
        if i > 0:
            best = min(best, time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"engine": "pytorch", "name": f"train step, batch {a.batch}", "seconds": best, "peak_rss_bytes": rss}))


if __name__ == "__main__":
    main()
