#!/usr/bin/env python3
"""A full-size liteCLIP state dict (convnext_tiny + bert-mini, 256-d heads) with seeded random
weights, as safetensors, using numpy only: for benchmarks on machines without PyTorch.

Timing does not depend on the values, so `scripts/bench-inference` and `scripts/bench-train`
on this file measure the same work as on the real checkpoint (golden/generate.py --full).
The seed's vocab.txt and config.json are copied beside it so liteclip-convert finds them.

Usage: python3 scripts/make_synthetic_full.py [OUT_DIR]   (default .build/full-synthetic)
Then:  scripts/bench-inference OUT_DIR/liteclip2.safetensors
"""
import json, os, shutil, struct, sys
import numpy as np

out = sys.argv[1] if len(sys.argv) > 1 else ".build/full-synthetic"
seed_dir = os.environ.get("LITECLIP_SEED", "../shared/liteclip-seed")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)
sd = []

def p(name, shape, kind="w"):
    if kind == "ones":
        a = np.ones(shape, np.float32)
    elif kind == "zeros":
        a = np.zeros(shape, np.float32)
    elif kind == "gamma":
        a = np.full(shape, 1e-6, np.float32)
    else:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        a = (rng.standard_normal(shape) * (1 / np.sqrt(max(fan_in, 1)))).astype(np.float32)
    sd.append((name, a))

def linear(pre, i, o):
    p(pre + ".weight", (o, i)); p(pre + ".bias", (o,), "zeros")

def ln(pre, n):
    p(pre + ".weight", (n,), "ones"); p(pre + ".bias", (n,), "zeros")

p("logit_scale", (), "zeros")
dims, depths = [96, 192, 384, 768], [3, 3, 9, 3]
b = "image_encoder.backbone."
p(b + "stem.0.weight", (96, 3, 4, 4)); p(b + "stem.0.bias", (96,), "zeros"); ln(b + "stem.1", 96)
for i, (d, n) in enumerate(zip(dims, depths)):
    s = f"{b}stages.{i}."
    if i > 0:
        ln(s + "downsample.0", dims[i - 1])
        p(s + "downsample.1.weight", (d, dims[i - 1], 2, 2)); p(s + "downsample.1.bias", (d,), "zeros")
    for j in range(n):
        k = f"{s}blocks.{j}."
        p(k + "gamma", (d,), "gamma")
        p(k + "conv_dw.weight", (d, 1, 7, 7)); p(k + "conv_dw.bias", (d,), "zeros")
        ln(k + "norm", d)
        linear(k + "mlp.fc1", d, 4 * d); linear(k + "mlp.fc2", 4 * d, d)
ln(b + "head.norm", 768)
t = "text_encoder.backbone."
h = 256
p(t + "embeddings.word_embeddings.weight", (30522, h))
p(t + "embeddings.position_embeddings.weight", (512, h))
p(t + "embeddings.token_type_embeddings.weight", (2, h))
ln(t + "embeddings.LayerNorm", h)
for l in range(4):
    k = f"{t}encoder.layer.{l}."
    for q in ("query", "key", "value"):
        linear(k + "attention.self." + q, h, h)
    linear(k + "attention.output.dense", h, h); ln(k + "attention.output.LayerNorm", h)
    linear(k + "intermediate.dense", h, 1024); linear(k + "output.dense", 1024, h); ln(k + "output.LayerNorm", h)
linear(t + "pooler.dense", h, h)
for name, i in (("img_projection", 768), ("txt_projection", h)):
    linear(name + ".proj", i, 256); ln(name + ".ln", 256)

header, offset = {}, 0
for name, a in sd:
    n = a.nbytes
    header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + n]}
    offset += n
hj = json.dumps(header, separators=(",", ":")).encode()
hj += b" " * ((8 - len(hj) % 8) % 8)
with open(os.path.join(out, "liteclip2.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(hj))); f.write(hj)
    for _, a in sd:
        f.write(np.ascontiguousarray(a).tobytes())
for name in ("vocab.txt", "config.json"):
    shutil.copy(os.path.join(seed_dir, "model", name), os.path.join(out, name))
print(f"{out}/liteclip2.safetensors: {len(sd)} tensors, {offset / 1e6:.0f} MB")
