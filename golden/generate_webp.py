#!/usr/bin/env python3
"""Golden WebP fixtures for the image pipeline (Sources/LiteCLIP/Image/WebPDecoder.swift, spec:
formats/images.md, "WebP").

Writes into golden/images/ a few small WebP files, encoded by Pillow's bundled libwebp from a
seeded numpy generator, covering every way a WebP file holds an image:

    webp_lossy_64x48.webp            simple format, VP8 (lossy), opened as RGB
    webp_lossy_odd_37x29.webp        VP8 with odd sides (chroma upsampling at the right/bottom edges)
    webp_lossy_exif_40x30.webp       extended format (VP8X + EXIF + VP8), no alpha: opened as RGB
    webp_lossy_alpha_48x40.webp      VP8X + ALPH + VP8, opened as RGBA
    webp_lossless_37x29.webp         VP8L, alpha bit not set: opened as RGB
    webp_lossless_rgba_40x32.webp    VP8L with alpha: RGBA
    webp_lossy_tall_31x100.webp      tall, narrow, odd width: Resize upscales it to 224x722 and
                                     CenterCrop takes rows 249..472
    webp_anim_first_48x36.webp       animated (VP8X + ANIM + 2 ANMF frames), lossless; the first
                                     frame is transparent around a block, so the encoder stores a
                                     smaller rectangle and the canvas outside it is transparent black
                                     (no frame has alpha, so VP8X has no alpha flag: opened as RGB)

and golden/images/expected_webp.safetensors:
  tensors
    "<file>/rgb"  u8 [H, W, 3]   np.asarray(Image.open(p).convert('RGB'))
  __metadata__ (string -> string)
    "format": "liteclip-golden-webp", "version": "1",
    "generator": JSON {"python", "pillow", "libwebp" (PIL.features.version('webp')), "numpy"}
    "<file>": JSON {"mode": PIL mode at open, "width", "height", "frames": n_frames,
                    "decoded_sha256": SHA-256 of the RGB bytes,
                    "resized": [w, h] after torchvision's Resize(224) (shorter side 224, the other
                               int(224 * long / short)), "crop_sha256": SHA-256 of
                               Image.resize(resized, BICUBIC) center-cropped to 224 x 224 (what
                               Resize(224, BICUBIC) + CenterCrop(224) do on a PIL image)}

Needs only Pillow and numpy (no torch: the resize and crop above are the calls torchvision makes
on a PIL image). Deterministic: the same library versions give byte-identical files (the
safetensors header is written here with sorted keys; libwebp's encoder is deterministic with one
thread).

Usage: .venv/bin/python golden/generate_webp.py [--out DIR]
"""

import argparse
import hashlib
import json
import os
import struct
import sys

import numpy as np
import PIL
import PIL.features
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def content(rng, h, w, c, sigma=3.0):
    """Smooth gradients + a white and a black block (hard edges) + Gaussian noise, uint8."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((h, w, c), dtype=np.float64)
    for ch in range(c):
        f1, f2 = rng.uniform(0.4, 2.5, 2)
        p1, p2 = rng.uniform(0, 2 * np.pi, 2)
        v = 128 + 70 * np.sin(2 * np.pi * f1 * x / w + p1) * np.cos(2 * np.pi * f2 * y / h + p2)
        v += 50 * (x / max(w - 1, 1) - y / max(h - 1, 1))
        out[..., ch] = v
    y0, x0 = h // 4, w // 3
    out[y0:y0 + max(h // 5, 1), x0:x0 + max(w // 5, 1), :] = 255.0
    out[h // 2:h // 2 + max(h // 8, 1), w // 8:w // 8 + max(w // 6, 1), :] = 0.0
    out += rng.normal(0, sigma, out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def alpha(rng, h, w):
    """Alpha with every kind of value: opaque, transparent, and a ramp with noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    a = 255 * (x / max(w - 1, 1)) * 0.6 + 255 * (y / max(h - 1, 1)) * 0.4 + rng.normal(0, 6, (h, w))
    a[: h // 4, : w // 4] = 0
    a[-(h // 4):, -(w // 4):] = 255
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def rgba(rng, h, w):
    return Image.fromarray(np.dstack([content(rng, h, w, 3), alpha(rng, h, w)]), "RGBA")


def make_images(out):
    rng = np.random.default_rng(20240611)
    files = {}

    def save(name, im, **kw):
        path = os.path.join(out, name)
        im.save(path, "WEBP", **kw)
        files[name] = path

    save("webp_lossy_64x48.webp", Image.fromarray(content(rng, 48, 64, 3), "RGB"), quality=80, method=4)
    save("webp_lossy_odd_37x29.webp", Image.fromarray(content(rng, 29, 37, 3), "RGB"), quality=90, method=4)
    exif = Image.Exif()
    exif[0x0112] = 6                                   # Orientation: rotate 90 (not applied by PIL's open)
    exif[0x010F] = "liteclip golden"                   # Make
    save("webp_lossy_exif_40x30.webp", Image.fromarray(content(rng, 30, 40, 3), "RGB"), quality=75, method=4,
         exif=exif.tobytes())
    save("webp_lossy_alpha_48x40.webp", rgba(rng, 40, 48), quality=70, alpha_quality=90, method=4)
    save("webp_lossless_37x29.webp", Image.fromarray(content(rng, 29, 37, 3), "RGB"), lossless=True, method=4)
    save("webp_lossless_rgba_40x32.webp", rgba(rng, 32, 40), lossless=True, method=4, exact=True)
    save("webp_lossy_tall_31x100.webp", Image.fromarray(content(rng, 100, 31, 3), "RGB"), quality=60, method=4)

    # Animated: frame 1 is opaque only inside a block (transparent elsewhere), frame 2 is opaque.
    h, w = 36, 48
    f1 = np.zeros((h, w, 4), dtype=np.uint8)
    f1[8:26, 10:34, :3] = content(rng, 18, 24, 3)
    f1[8:26, 10:34, 3] = 255
    f2 = np.dstack([content(rng, h, w, 3), np.full((h, w), 255, np.uint8)])
    frames = [Image.fromarray(f1, "RGBA"), Image.fromarray(f2, "RGBA")]
    save("webp_anim_first_48x36.webp", frames[0], save_all=True, append_images=frames[1:], duration=[100, 100],
         loop=0, lossless=True, method=4, background=(10, 20, 30, 255))
    return files


def save_safetensors(tensors, path, metadata):
    """safetensors with sorted keys and a compact header padded with spaces to a multiple of 8,
    so regenerating gives identical bytes."""
    header, offset, blobs = {"__metadata__": dict(sorted(metadata.items()))}, 0, []
    for name in sorted(tensors):
        a = tensors[name]
        assert a.dtype == np.uint8
        raw = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": "U8", "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def sha(b):
    return hashlib.sha256(b).hexdigest()


def resized_size(w, h, size=224):
    """torchvision's _compute_resized_output_size for an int size and max_size=None."""
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return w, h
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def resize_and_crop(rgb, size=224):
    w, h = resized_size(*rgb.size, size)
    r = rgb if (w, h) == rgb.size else rgb.resize((w, h), Image.Resampling.BICUBIC)
    assert w >= size and h >= size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return (w, h), r.crop((left, top, left + size, top + size))


def expected(path, name, tensors, metadata):
    with Image.open(path) as im:
        assert im.format == "WEBP", path
        mode, frames = im.mode, getattr(im, "n_frames", 1)
        rgb = im.convert("RGB")
    arr = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    assert arr.shape == (rgb.height, rgb.width, 3)
    resized, crop = resize_and_crop(rgb)
    tensors[name + "/rgb"] = arr
    metadata[name] = json.dumps({
        "mode": mode, "width": rgb.width, "height": rgb.height, "frames": frames,
        "decoded_sha256": sha(arr.tobytes()), "resized": list(resized),
        "crop_sha256": sha(np.asarray(crop, dtype=np.uint8).tobytes()),
    }, sort_keys=True)
    return mode


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "golden", "images"))
    args = ap.parse_args()
    if not PIL.features.check("webp"):
        sys.exit("this Pillow has no WebP support")
    os.makedirs(args.out, exist_ok=True)

    tensors, metadata = {}, {}
    files = make_images(args.out)
    for name in sorted(files):
        mode = expected(files[name], name, tensors, metadata)
        print(f"{name:34s} {os.path.getsize(files[name]):6d} bytes  mode {mode}")
    metadata["format"] = "liteclip-golden-webp"
    metadata["version"] = "1"
    metadata["generator"] = json.dumps({
        "python": sys.version.split()[0], "pillow": PIL.__version__,
        "libwebp": PIL.features.version("webp"), "numpy": np.__version__,
    }, sort_keys=True)
    out = os.path.join(args.out, "expected_webp.safetensors")
    save_safetensors(tensors, out, metadata)
    total = sum(os.path.getsize(p) for p in files.values()) + os.path.getsize(out)
    print(f"{len(files)} WebP files + expected_webp.safetensors: {total / 1e3:.1f} KB in {args.out}")


if __name__ == "__main__":
    main()
