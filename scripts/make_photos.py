#!/usr/bin/env python3
"""Writes N JPEGs of 500x375 (quality 90) to OUT, seeded crops of the seed's example photos:
the photo folder scripts/bench-inference and scripts/bench-index time. Needs Pillow.
Usage: make_photos.py N OUT"""
import os, random, sys

from PIL import Image

n, out = int(sys.argv[1]), sys.argv[2]
seed_photos = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "liteclip-seed", "examples")
os.makedirs(out, exist_ok=True)
random.seed(0)
src = [Image.open(os.path.join(seed_photos, f)).convert("RGB") for f in sorted(os.listdir(seed_photos))]
for i in range(n):
    im = src[i % len(src)]
    w, h = im.size
    cw = int(w * random.uniform(0.6, 1.0)); ch = min(h, int(cw * 0.75))
    x = random.randint(0, w - cw); y = random.randint(0, h - ch)
    im.crop((x, y, x + cw, y + ch)).resize((500, 375), Image.BICUBIC).save(os.path.join(out, f"p{i:03d}.jpg"), quality=90)
