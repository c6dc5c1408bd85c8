#!/usr/bin/env python3
"""Golden fixtures for the image pipeline (Sources/LiteCLIP/Image, spec: formats/images.md).

Writes golden/images/: small synthetic JPEG and PNG files covering every decoded mode and the
resize geometries, plus expected.safetensors with what the seed's pipeline gives for each of
them and for the seed's example photos (read from ../shared/liteclip-seed/examples by path,
never copied):

    img = PIL.Image.open(path).convert('RGB')
    T.Compose([T.Resize(224, interpolation=BICUBIC), T.CenterCrop(224), T.ToTensor(),
               T.Normalize(mean=(0.48145466, 0.4578275, 0.40821073),
                           std=(0.26862954, 0.26130258, 0.27577711))])(img)

expected.safetensors
  tensors
    "<name>/crop"          u8  [224, 224, 3]  np.asarray of the image after Resize + CenterCrop
                                              (only for the GEOMETRY images and the examples,
                                              to stay within the size budget)
    "<name>/pixel_values"  f32 [3, 224, 224]  the final tensor (for PIXEL_VALUES images only)
    "normalize/table"      f32 [3, 256]       ToTensor + Normalize of every uint8 value, per
                                              channel: covers the normalisation of any image
  __metadata__ (string -> string)
    "format": "liteclip-golden-images", "version": "1", "generator": JSON of library versions
    "<name>": JSON {"mode": PIL mode at open, "width", "height" (decoded size),
                    "decoded_sha256": SHA-256 of the RGB bytes of Image.open(p).convert('RGB'),
                    "resized": [w, h] after Resize, "crop_sha256": SHA-256 of the crop bytes,
                    "pixel_values_sha256": SHA-256 of the f32 little-endian CHW tensor}
  Example photos use the name "examples/<file>".

Deterministic: every image comes from a seeded numpy generator; PNGs that Pillow cannot write
(16-bit colour, interlaced, 1/2/4-bit, out-of-range palette indices, extra chunks) come from
the small PNG writer below. Running it again with the same library versions (golden/README.md)
gives the same bytes.

Usage: /work/venv/bin/python golden/generate_images.py [--out DIR]
"""

import argparse
import glob
import hashlib
import json
import os
import struct
import sys
import warnings
import zlib

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_DIR = os.environ.get("LITECLIP_SEED", os.path.join(ROOT, "..", "shared", "liteclip-seed"))

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE = T.Resize(224, interpolation=InterpolationMode.BICUBIC)
CROP = T.CenterCrop(224)
TO_TENSOR_NORMALIZE = T.Compose([T.ToTensor(), T.Normalize(mean=MEAN, std=STD)])

# Images whose full crop is stored (they cover the resize/crop geometries); the others
# store only the crop's SHA-256 (their decode is what they test).
GEOMETRY = {
    "jpeg_baseline_240x320.jpg",      # portrait, both passes downscale, 4:2:0
    "jpeg_progressive_333x250.jpg",   # landscape, odd width, progressive 4:2:2
    "jpeg_tall_250x700.jpg",          # tall portrait: Pillow 13 runs the vertical pass first
    "png_rgb_50x30.png",              # tiny: upscaling in both passes; crop left = round(74.5) = 74
    "jpeg_wide_1000x240.jpg",         # very wide: 933x224, crop left = round(354.5) = 354
    "png_interlaced_131x97.png",      # Adam7, odd sizes, upscaling
}
PIXEL_VALUES = {"examples/cat.jpg"}


# MARK: - Content

def content(rng, h, w, c, sigma=4.0):
    """Smooth gradients + a hard-edged block (ringing and clipping) + Gaussian noise, uint8."""
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


# MARK: - A small PNG writer (every filter type, Adam7, 1..16-bit, extra chunks)

def chunk(ctype, data):
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)


def pack_rows(samples, depth):
    """samples: (h, w*channels) unsigned ints -> list of raw scanline bytes."""
    rows = []
    for r in samples:
        if depth == 16:
            rows.append(r.astype(">u2").tobytes())
        elif depth == 8:
            rows.append(r.astype(np.uint8).tobytes())
        else:
            per = 8 // depth
            n = (len(r) + per - 1) // per
            padded = np.zeros(n * per, dtype=np.uint16)
            padded[:len(r)] = r
            padded = padded.reshape(n, per)
            b = np.zeros(n, dtype=np.uint16)
            for i in range(per):
                b = (b << depth) | padded[:, i]
            rows.append(b.astype(np.uint8).tobytes())
    return rows


def filter_rows(rows, bpp, first_filter):
    out = bytearray()
    prev = np.zeros(len(rows[0]), dtype=np.int32) if rows else None
    for i, raw in enumerate(rows):
        line = np.frombuffer(raw, dtype=np.uint8).astype(np.int32)
        left = np.concatenate([np.zeros(bpp, np.int32), line[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        f = (first_filter + i) % 5
        if f == 0:
            res = line
        elif f == 1:
            res = line - left
        elif f == 2:
            res = line - prev
        elif f == 3:
            res = line - (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
            res = line - pred
        out += bytes([f]) + (res & 0xFF).astype(np.uint8).tobytes()
        prev = line
    return bytes(out)


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def write_png(path, pixels, depth, ctype, interlace=False, before_idat=b"", after_idat=b"", first_filter=0):
    """pixels: (h, w, channels) array of samples (palette indices for ctype 3)."""
    h, w, c = pixels.shape
    bpp = max(1, c * depth // 8)
    if interlace:
        data = b""
        for k, (xs, ys, dx, dy) in enumerate(ADAM7):
            sub = pixels[ys::dy, xs::dx]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                continue
            data += filter_rows(pack_rows(sub.reshape(sub.shape[0], -1), depth), bpp, first_filter + k)
    else:
        data = filter_rows(pack_rows(pixels.reshape(h, -1), depth), bpp, first_filter)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 1 if interlace else 0)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + before_idat
           + chunk(b"IDAT", zlib.compress(data, 9)) + after_idat + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


# MARK: - The test images

def make_images(out):
    rng = np.random.default_rng(20261129)
    names = []

    def save(name, fn):
        fn(os.path.join(out, name))
        names.append(name)

    # JPEG (Pillow's encoder)
    save("jpeg_baseline_240x320.jpg", lambda p: Image.fromarray(content(rng, 320, 240, 3)).save(p, quality=90))
    save("jpeg_progressive_333x250.jpg", lambda p: Image.fromarray(content(rng, 250, 333, 3)).save(
        p, quality=88, progressive=True, subsampling=1))
    save("jpeg_tall_250x700.jpg", lambda p: Image.fromarray(content(rng, 700, 250, 3)).save(p, quality=85))
    save("jpeg_wide_1000x240.jpg", lambda p: Image.fromarray(content(rng, 240, 1000, 3, sigma=2.0)).save(
        p, quality=80, subsampling=2))
    save("jpeg_gray_97x61.jpg", lambda p: Image.fromarray(content(rng, 61, 97, 1)[..., 0], "L").save(p, quality=92))
    save("jpeg_cmyk_64x80.jpg", lambda p: Image.fromarray(content(rng, 80, 64, 4), "CMYK").save(p, quality=90))

    # PNG (Pillow's encoder)
    save("png_rgb_224x229.png", lambda p: Image.fromarray(content(rng, 229, 224, 3, sigma=1.5)).save(p))   # crop top round(2.5) = 2
    save("png_rgba_70x52.png", lambda p: Image.fromarray(content(rng, 52, 70, 4), "RGBA").save(p))
    save("png_grey_75x50.png", lambda p: Image.fromarray(content(rng, 50, 75, 1)[..., 0], "L").save(p))
    save("png_grey_alpha_60x66.png", lambda p: Image.fromarray(content(rng, 66, 60, 2), "LA").save(p))

    def palette_trns(p):
        idx = (content(rng, 64, 96, 1)[..., 0] // 16).astype(np.uint8)   # 16 colours
        im = Image.fromarray(idx, "P")
        pal = rng.integers(0, 256, 16 * 3, dtype=np.uint8).tolist()
        im.putpalette(pal)
        im.save(p, transparency=bytes(rng.integers(0, 256, 16, dtype=np.uint8).tolist()))
    save("png_palette_trns_96x64.png", palette_trns)

    # PNG (own writer)
    save("png_rgb_50x30.png", lambda p: write_png(p, content(rng, 30, 50, 3), 8, 2))
    save("png_interlaced_131x97.png", lambda p: write_png(p, content(rng, 97, 131, 3), 8, 2, interlace=True))

    def rgb16(p):
        hi = content(rng, 48, 64, 3).astype(np.uint16)
        write_png(p, (hi << 8) | rng.integers(0, 256, hi.shape, dtype=np.uint16), 16, 2, first_filter=1)
    save("png_rgb16_64x48.png", rgb16)

    def grey16(p):   # values 0..~400: Pillow's I;16 -> RGB clips at 255
        v = content(rng, 60, 80, 1).astype(np.uint16) + content(rng, 60, 80, 1).astype(np.uint16) // 2
        write_png(p, v, 16, 0, first_filter=2)
    save("png_grey16_80x60.png", grey16)

    def la16(p):
        hi = content(rng, 30, 40, 2).astype(np.uint16)
        write_png(p, (hi << 8) | rng.integers(0, 256, hi.shape, dtype=np.uint16), 16, 4, first_filter=3)
    save("png_grey_alpha16_40x30.png", la16)

    def rgba16(p):
        hi = content(rng, 35, 45, 4).astype(np.uint16)
        write_png(p, (hi << 8) | rng.integers(0, 256, hi.shape, dtype=np.uint16), 16, 6, interlace=True)
    save("png_rgba16_interlaced_45x35.png", rgba16)

    save("png_grey2_53x41.png", lambda p: write_png(p, content(rng, 41, 53, 1) >> 6, 2, 0, first_filter=4))
    save("png_grey1_trns_40x40.png", lambda p: write_png(
        p, content(rng, 40, 40, 1) >> 7, 1, 0, before_idat=chunk(b"tRNS", struct.pack(">H", 1))))

    def palette4_oob(p):   # 10 palette entries, indices 0..15: 10..15 are outside the palette
        plte = chunk(b"PLTE", rng.integers(0, 256, 30, dtype=np.uint8).tobytes())
        write_png(p, content(rng, 29, 37, 1) >> 4, 4, 3, before_idat=plte, first_filter=1)
    save("png_palette4_oob_37x29.png", palette4_oob)

    def rgb_chunks(p):   # tRNS + gAMA(1.0) + sRGB + tEXt before IDAT, tEXt after: all ignored
        extra = (chunk(b"gAMA", struct.pack(">I", 100000)) + chunk(b"sRGB", b"\x00")
                 + chunk(b"tRNS", struct.pack(">3H", 10, 20, 30)) + chunk(b"tEXt", b"Comment\x00liteclip"))
        write_png(p, content(rng, 40, 50, 3), 8, 2, before_idat=extra,
                  after_idat=chunk(b"tEXt", b"Author\x00golden"), first_filter=2)
    save("png_rgb_chunks_50x40.png", rgb_chunks)

    # Extreme shapes (crop SHA only): one-pixel-wide and -high, 3x3, and round(0.5) = 0.
    save("png_rgb_1x300.png", lambda p: write_png(p, content(rng, 300, 1, 3), 8, 2))
    save("png_rgb_700x2.png", lambda p: write_png(p, content(rng, 2, 700, 3), 8, 2, first_filter=3))
    save("png_rgb_3x3.png", lambda p: write_png(p, content(rng, 3, 3, 3, sigma=40), 8, 2))
    save("png_rgb_225x224.png", lambda p: Image.fromarray(content(rng, 224, 225, 3, sigma=0)).save(p, optimize=True))
    save("jpeg_1x1.jpg", lambda p: Image.fromarray(content(rng, 1, 1, 3)).save(p, quality=95))
    return names


# MARK: - Expected results

def save_safetensors(tensors, path, metadata):
    """safetensors with keys in sorted order (the library writes __metadata__ in hash order,
    which changes from run to run), header padded with spaces to a multiple of 8."""
    header, offset, blobs = {"__metadata__": dict(sorted(metadata.items()))}, 0, []
    for name in sorted(tensors):
        a = tensors[name]
        dtype = {np.dtype(np.uint8): "U8", np.dtype("<f4"): "F32"}[a.dtype]
        raw = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def sha(b):
    return hashlib.sha256(b).hexdigest()


def expected(path, key, tensors, metadata):
    im = Image.open(path)
    mode = im.mode
    with warnings.catch_warnings():   # P + tRNS -> RGB: "should be converted to RGBA"
        warnings.simplefilter("ignore")
        rgb = im.convert("RGB")
    resized = RESIZE(rgb)
    crop = CROP(resized)
    crop_arr = np.ascontiguousarray(np.asarray(crop, dtype=np.uint8))
    assert crop_arr.shape == (224, 224, 3)
    pv = TO_TENSOR_NORMALIZE(crop)
    assert pv.dtype == torch.float32 and tuple(pv.shape) == (3, 224, 224)
    # The seed applies the transforms to the whole image; cropping first must be the same.
    assert torch.equal(pv, T.Compose([RESIZE, CROP, TO_TENSOR_NORMALIZE])(rgb))
    pv_arr = np.ascontiguousarray(pv.numpy().astype("<f4"))
    if key in GEOMETRY or key.startswith("examples/"):
        tensors[key + "/crop"] = crop_arr
    if key in PIXEL_VALUES:
        tensors[key + "/pixel_values"] = pv_arr
    metadata[key] = json.dumps({
        "mode": mode, "width": rgb.width, "height": rgb.height,
        "decoded_sha256": sha(np.asarray(rgb, dtype=np.uint8).tobytes()),
        "resized": list(resized.size),
        "crop_sha256": sha(crop_arr.tobytes()),
        "pixel_values_sha256": sha(pv_arr.tobytes()),
    }, sort_keys=True)


def normalize_table():
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)   # 1 x 256 RGB
    t = TO_TENSOR_NORMALIZE(Image.fromarray(ramp, "RGB"))
    return np.ascontiguousarray(t.numpy().reshape(3, 256).astype("<f4"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "golden", "images"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    tensors, metadata = {}, {}
    for name in make_images(args.out):
        expected(os.path.join(args.out, name), name, tensors, metadata)
    examples = sorted(glob.glob(os.path.join(SEED_DIR, "examples", "*.jpg"))
                      + glob.glob(os.path.join(SEED_DIR, "examples", "*.jpeg")))
    if not examples:
        sys.exit(f"no example photos under {SEED_DIR}/examples")
    for p in examples:
        expected(p, "examples/" + os.path.basename(p), tensors, metadata)
    tensors["normalize/table"] = normalize_table()

    metadata["format"] = "liteclip-golden-images"
    metadata["version"] = "1"
    metadata["generator"] = json.dumps({
        "python": sys.version.split()[0], "pillow": PIL.__version__, "torch": torch.__version__,
        "torchvision": torchvision.__version__, "numpy": np.__version__,
    }, sort_keys=True)
    save_safetensors(tensors, os.path.join(args.out, "expected.safetensors"), metadata)

    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"{len(metadata) - 3} images, {len(tensors)} tensors, {total / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    main()
