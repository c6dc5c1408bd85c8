#!/usr/bin/env python3
"""Golden-fixture generator for liteclip (Swift reader of PyTorch liteCLIP checkpoints).

What it writes (see golden/README.md for the full list):

  default      golden/                small liteCLIP model (same layout as the seed, tiny dims)
                                      saved in six checkpoint flavours + config.json
               golden/cases/          tiny synthetic state dicts exercising the reader
                                      (dtypes, views, legacy, protocol 4, buffer, deflated,
                                      big-endian, TorchScript, whole module, safetensors)
               golden/manifest.json   per-file, per-tensor dtype/shape/sha256 (+ values for cases)
  --full       golden/full/           full-size model (convnext_tiny + bert-mini) in seven
                                      flavours + full/manifest.json (git-ignored, ~830 MB)

The liteCLIP model classes below are re-implemented from the seed's model.py
(shreydan/liteCLIP); nothing is downloaded: every model is built from a config and
initialised from a seeded torch.Generator.

Determinism: running the script twice gives byte-identical files.
  * torch.save (zip) output is deterministic by itself.
  * The legacy (non-zip) writer names storages by memory address (str(storage._cdata)),
    which differs per run; we run torch's own _legacy_save with that single expression
    replaced by a deterministic, address-looking key (see make_legacy_save()).
  * Python zipfile rewrites use a fixed date_time.

Usage:
  /work/venv/bin/python golden/generate.py            # small model + cases  -> golden/
  /work/venv/bin/python golden/generate.py --full     # full-size model       -> golden/full/
  --out DIR writes to DIR instead of the script's folder (used for determinism checks).
"""

import os
import sys

# TorchScript's generated code lists constants in set order: pin Python's hash seed
# (re-exec before the heavy imports).
if __name__ == "__main__" and os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import argparse
import subprocess
import contextlib
import hashlib
import inspect
import io
import json
import math
import pickle
import random
import shutil
import struct
import textwrap
import time
import warnings
import zipfile
import zlib
from collections import OrderedDict

import numpy as np
import safetensors
import safetensors.torch
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from transformers import AutoModel, BertConfig

SEED = 20240607
PROJ_DIM = 256
SEED_DIR = "/work/shared/liteclip-seed/model"

SMALL = dict(
    convnext_dims=[8, 16, 32, 64], convnext_depths=[3, 3, 9, 3],
    bert_hidden=16, bert_layers=4, bert_heads=2, bert_intermediate=64,
    vocab_size=30522, max_positions=512, type_vocab_size=2, layer_norm_eps=1e-12,
    proj_dim=PROJ_DIM,
)
FULL = dict(  # convnext_tiny defaults + bert-mini (google/bert_uncased_L-4_H-256_A-4)
    convnext_dims=[96, 192, 384, 768], convnext_depths=[3, 3, 9, 3],
    bert_hidden=256, bert_layers=4, bert_heads=4, bert_intermediate=1024,
    vocab_size=30522, max_positions=512, type_vocab_size=2, layer_norm_eps=1e-12,
    proj_dim=PROJ_DIM,
)
EXPECTED_TENSORS = 260  # convnext_tiny 180 + BERT 71 (incl. pooler) + 8 projection + logit_scale

assert sys.byteorder == "little", "hashes/values assume a little-endian host"


# --------------------------------------------------------------------------------------
# The seed's model (liteCLIP model.py), re-implemented.
# --------------------------------------------------------------------------------------

def bert_config(c):
    return BertConfig(
        vocab_size=c["vocab_size"], hidden_size=c["bert_hidden"],
        num_hidden_layers=c["bert_layers"], num_attention_heads=c["bert_heads"],
        intermediate_size=c["bert_intermediate"], max_position_embeddings=c["max_positions"],
        type_vocab_size=c["type_vocab_size"], layer_norm_eps=c["layer_norm_eps"],
        hidden_act="gelu",
    )


# The model classes are the seed's, defined once in make_reference.py (also user-facing).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_reference import CLIP  # noqa: E402


@torch.no_grad()
def seeded_init(model, seed):
    """Overwrite every parameter from one seeded generator, in named_parameters() order.

    LayerNorm weight ~ 1 + 0.1 N(0,1), LayerNorm bias ~ 0.05 N(0,1)
    ConvNeXt layer-scale gamma ~ U(0.1, 1.0) (so every block matters)
    Embedding tables ~ 0.5 N(0,1)
    Other weights (Linear/Conv) ~ N(0,1) / sqrt(fan_in), other biases ~ 0.05 N(0,1)
    logit_scale = log(1/0.07)
    """
    g = torch.Generator().manual_seed(seed)
    norm_params, emb_params = set(), set()
    for mname, mod in model.named_modules():
        if isinstance(mod, nn.LayerNorm):  # timm's LayerNorm2d subclasses nn.LayerNorm
            norm_params.update(f"{mname}.{n}" for n, _ in mod.named_parameters(recurse=False))
        elif isinstance(mod, nn.Embedding):
            emb_params.update(f"{mname}.{n}" for n, _ in mod.named_parameters(recurse=False))
    for name, p in model.named_parameters():
        shape = p.shape
        if name == "logit_scale":
            p.fill_(float(np.log(1 / 0.07)))
        elif name.endswith(".gamma"):
            p.copy_(0.1 + 0.9 * torch.rand(shape, generator=g))
        elif name in norm_params:
            if name.endswith(".weight"):
                p.copy_(1.0 + 0.1 * torch.randn(shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(shape, generator=g))
        elif name in emb_params:
            p.copy_(0.5 * torch.randn(shape, generator=g))
        elif p.dim() >= 2:
            fan_in = math.prod(shape[1:])
            p.copy_(torch.randn(shape, generator=g) / math.sqrt(fan_in))
        else:
            p.copy_(0.05 * torch.randn(shape, generator=g))


def build_model(c, seed):
    torch.manual_seed(seed)
    model = CLIP(c["convnext_dims"], c["convnext_depths"], bert_config(c), c["proj_dim"]).eval()
    seeded_init(model, seed)
    sd = model.state_dict()
    assert len(sd) == EXPECTED_TENSORS, f"expected {EXPECTED_TENSORS} tensors, got {len(sd)}"
    assert not any("position_ids" in k for k in sd)
    assert set(sd) == {n for n, _ in model.named_parameters()}, "state dict has buffers"
    # sanity: the classes run and give finite, non-degenerate logits
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        image = torch.randn(2, 3, 224, 224, generator=g)
        ids = torch.randint(1000, c["vocab_size"], (2, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0
        img = F.normalize(model.img_projection(model.image_encoder(image)), dim=-1)
        txt = F.normalize(model.txt_projection(model.text_encoder({"input_ids": ids, "attention_mask": mask})), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        assert torch.isfinite(logits).all() and logits.std() > 0, logits
    return model, sd


# --------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------

@contextlib.contextmanager
def storage_location(loc):
    """Make torch.save record `loc` (e.g. 'cuda:1') as every storage's location."""
    orig = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: loc
    try:
        yield
    finally:
        torch.serialization.location_tag = orig


def make_legacy_save(key_seed):
    """torch's own _legacy_save with deterministic storage keys.

    torch names legacy storages str(storage._cdata) (a memory address), so two runs
    differ. We exec torch's source with that expression replaced by a key that looks
    like an address but comes from random.Random(key_seed); the keys list at the end of
    the file is sorted as strings (as torch does), so the storage order in the file is
    NOT the order of first appearance in the pickle, just like real files.
    """
    src = textwrap.dedent(inspect.getsource(torch.serialization._legacy_save))
    needle = "storage_key = str(storage._cdata)"
    assert src.count(needle) == 1, "torch changed _legacy_save; update make_legacy_save"
    src = src.replace(needle, "storage_key = _golden_key(storage)")
    rng = random.Random(key_seed)
    keys, used = {}, set()

    def golden_key(storage):
        cdata = storage._cdata
        if cdata not in keys:
            while True:
                k = str(0x559600000000 + rng.randrange(1 << 32) * 64)  # 14 digits
                if k not in used:
                    break
            used.add(k)
            keys[cdata] = k
        return keys[cdata]

    ns = dict(vars(torch.serialization))
    ns["_golden_key"] = golden_key
    exec(compile(src, "<golden legacy_save>", "exec"), ns)
    return ns["_legacy_save"]


def save_legacy(obj, path, key_seed):
    with open(path, "wb") as f:
        make_legacy_save(key_seed)(obj, f, pickle, 2)


def read_zip_entries(path):
    with zipfile.ZipFile(path) as z:
        return [(zi.filename, z.read(zi.filename)) for zi in z.infolist()]


FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def write_zip(path, entries, compress, align=0):
    """Write (name, bytes) entries with Python's zipfile, fixed timestamps.

    align > 0 pads each local header's extra field (id 'FB', like torch) so that every
    payload starts at a multiple of `align`.
    """
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", allowZip64=True) as z:
        for name, data in entries:
            zi = zipfile.ZipInfo(name, date_time=FIXED_DATE)
            zi.compress_type = compress
            zi.create_system = 3
            zi.external_attr = 0o644 << 16
            if align:
                start = f.tell() + 30 + len(name.encode()) + 4
                pad = (-start) % align
                zi.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            z.writestr(zi, data)
    if align:
        with zipfile.ZipFile(path) as z, open(path, "rb") as f:
            for zi in z.infolist():
                f.seek(zi.header_offset + 26)
                n, m = struct.unpack("<HH", f.read(4))
                assert (zi.header_offset + 30 + n + m) % align == 0


def patch_serialization_id(path):
    """Make TorchScript's .data/serialization_id deterministic, in place.

    torch.jit.save writes 20 digits of CRC followed by 20 random digits; we replace the
    random half with digits derived from the other entries, keep the length, and fix
    the CRC-32 in the data descriptor and central directory (zip layout unchanged).
    """
    with zipfile.ZipFile(path) as z:
        zi = next(i for i in z.infolist() if i.filename.endswith(".data/serialization_id"))
        old = z.read(zi.filename)
        rest = b"".join(z.read(i.filename) for i in z.infolist() if i is not zi)
        start_dir = z.start_dir
    digest = int(hashlib.sha256(rest).hexdigest(), 16) % 10 ** 20
    new = old[:20] + b"%020d" % digest
    assert len(new) == len(old) == 40
    buf = bytearray(open(path, "rb").read())
    old_crc, new_crc = (struct.pack("<I", zlib.crc32(x)) for x in (old, new))
    off = zi.header_offset
    n, m = struct.unpack("<HH", buf[off + 26:off + 30])
    p = off + 30 + n + m
    assert buf[p:p + 40] == old
    buf[p:p + 40] = new
    spots = [off + 14, p + 40 + (4 if buf[p + 40:p + 44] == b"PK\x07\x08" else 0)]
    q = start_dir
    while buf[q:q + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack("<HHH", buf[q + 28:q + 34])
        if bytes(buf[q + 46:q + 46 + n]).decode() == zi.filename:
            spots.append(q + 16)
        q += 46 + n + m + k
    patched = 0
    for s in spots:
        if buf[s:s + 4] == old_crc:
            buf[s:s + 4] = new_crc
            patched += 1
    assert patched >= 2, patched
    with open(path, "wb") as f:
        f.write(buf)
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None


ELEM_SIZE = {"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
             "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1,
             "ByteStorage": 1, "BoolStorage": 1}


def storage_types_from_pickle(data_pkl):
    """Map storage key -> storage class name by walking the pickle (no torch involved)."""
    found = {}

    class Stub:
        def __init__(self, *a, **k):
            pass

        def __setstate__(self, state):
            pass

    class Walker(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "torch" and name.endswith("Storage"):
                return name
            if (module, name) == ("collections", "OrderedDict"):
                return OrderedDict
            return lambda *a, **k: Stub()

        def persistent_load(self, pid):
            assert pid[0] == "storage"
            found[pid[2]] = pid[1]
            return None

    Walker(io.BytesIO(data_pkl)).load()
    return found


def write_bigendian(src_path, dst_path):
    """Rewrite a torch zip as if saved on a big-endian host.

    Same entry names and order; 'byteorder' becomes 'big'; each data/<key> payload is
    byte-swapped per element of that storage's dtype (taken from data.pkl's persistent
    ids). Written STORED with 64-byte aligned payloads.
    """
    entries = read_zip_entries(src_path)
    pkl = next(d for n, d in entries if n.endswith("/data.pkl"))
    types = storage_types_from_pickle(pkl)
    out = []
    for name, data in entries:
        if name.endswith("/byteorder"):
            assert data == b"little"
            data = b"big"
        elif "/data/" in name and not name.endswith("serialization_id"):
            key = name.rsplit("/", 1)[1]
            size = ELEM_SIZE[types[key]]
            if size > 1:
                data = np.frombuffer(data, dtype=f"<u{size}").byteswap().tobytes()
        out.append((name, data))
    write_zip(dst_path, out, zipfile.ZIP_STORED, align=64)


# --------------------------------------------------------------------------------------
# Manifest helpers
# --------------------------------------------------------------------------------------

DTYPE_NAME = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16",
              torch.bfloat16: "bf16", torch.int64: "i64", torch.int32: "i32",
              torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8", torch.bool: "bool"}


def tensor_bytes(t):
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def json_value(v):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    return v


def tensor_entry(name, t, with_values):
    e = {"name": name, "dtype": DTYPE_NAME[t.dtype], "shape": list(t.shape),
         "sha256": hashlib.sha256(tensor_bytes(t)).hexdigest()}
    if with_values:
        e["stride"] = list(t.stride())
        e["storage_offset"] = t.storage_offset()
        flat = t.detach().reshape(-1)
        if t.dtype in (torch.float16, torch.bfloat16):
            flat = flat.float()
        e["values"] = [json_value(v) for v in flat.tolist()]
    return e


def file_entry(fmt, tensors, wrapper=None, prefix="", with_values=False, **extra):
    e = {"format": fmt, "wrapper": wrapper, "prefix": prefix}
    e.update(extra)
    e["tensors"] = [tensor_entry(k, v, with_values) for k, v in tensors.items()]
    return e


def write_json(path, obj):
    """Indented JSON, but each tensor record on one line (keeps the manifest small)."""
    def dump(v, ind):
        if isinstance(v, dict) and v:
            pad = " " * (ind + 1)
            items = [f"{pad}{json.dumps(k)}: {dump(x, ind + 1)}" for k, x in v.items()]
            return "{\n" + ",\n".join(items) + "\n" + " " * ind + "}"
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            pad = " " * (ind + 1)
            return ("[\n" + ",\n".join(pad + json.dumps(x, allow_nan=False) for x in v)
                    + "\n" + " " * ind + "]")
        return json.dumps(v, allow_nan=False)
    with open(path, "w") as f:
        f.write(dump(obj, 0) + "\n")


def versions():
    return {"torch": torch.__version__, "timm": timm.__version__,
            "transformers": transformers.__version__, "safetensors": safetensors.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0]}


def assert_loads_as(path, expected, wrapper=None, weights_only=True):
    """Round-trip through torch.load and compare with what we meant to write."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    if wrapper:
        obj = obj[wrapper]
    assert list(obj) == list(expected), path
    for k, v in expected.items():
        w = obj[k]
        assert w.dtype == v.dtype and w.shape == v.shape, (path, k)
        assert tensor_bytes(w) == tensor_bytes(v), (path, k)


def pkl_of(path):
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


# --------------------------------------------------------------------------------------
# Model files
# --------------------------------------------------------------------------------------

def lightning_ckpt(sd_f16):
    g = torch.Generator().manual_seed(SEED + 2)
    return {
        "epoch": 4,
        "global_step": 620,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": OrderedDict(("model." + k, v) for k, v in sd_f16.items()),
        "optimizer_states": [{
            "state": {0: {"step": torch.tensor(620.0),
                          "exp_avg": 0.01 * torch.randn(4, generator=g),
                          "exp_avg_sq": 1e-4 * torch.rand(4, generator=g)}},
            "param_groups": [{"lr": 0.0002, "betas": (0.9, 0.999), "eps": 1e-08,
                              "weight_decay": 0, "amsgrad": False, "params": [0]}],
        }],
        "lr_schedulers": [],
        "hyper_parameters": {"lr": 0.0002, "batch_size": 64},
    }


def cast(sd, dtype):
    return OrderedDict((k, v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items())


def prefixed(sd, prefix):
    return OrderedDict((prefix + k, v) for k, v in sd.items())


def write_model_files(out, c, full):
    t0 = time.time()
    model, sd = build_model(c, SEED)
    print(f"built {'full' if full else 'small'} model: {len(sd)} tensors, "
          f"{sum(v.numel() for v in sd.values())} parameters ({time.time() - t0:.1f}s)")
    nparams = sum(p.numel() for p in model.parameters())
    assert nparams == sum(v.numel() for v in sd.values())
    meta = {"num_parameters": nparams, "config": dict(c)}
    sd16, sdb16 = cast(sd, torch.float16), cast(sd, torch.bfloat16)
    man = {}

    def zsave(name, obj, loc=None):
        path = os.path.join(out, name)
        with storage_location(loc) if loc else contextlib.nullcontext():
            torch.save(obj, path)
        return path

    # f32 zip
    p = zsave("liteclip2.pt", sd)
    assert_loads_as(p, sd)
    man["liteclip2.pt"] = file_entry("pytorch-zip", sd, location="cpu", **meta)
    # f32 legacy
    p = os.path.join(out, "liteclip2_legacy.pt")
    save_legacy(sd, p, key_seed=SEED)
    assert_loads_as(p, sd)
    man["liteclip2_legacy.pt"] = file_entry("pytorch-legacy", sd, location="cpu", **meta)
    # f16
    p = zsave("liteclip2_f16.pt", sd16)
    assert_loads_as(p, sd16)
    man["liteclip2_f16.pt"] = file_entry("pytorch-zip", sd16, location="cpu", **meta)
    # lightning
    ck = lightning_ckpt(sd16)
    p = zsave("liteclip2_lightning.ckpt", ck)
    assert_loads_as(p, ck["state_dict"], wrapper="state_dict")
    man["liteclip2_lightning.ckpt"] = file_entry(
        "pytorch-zip", ck["state_dict"], wrapper="state_dict", prefix="model.",
        location="cpu", **meta)

    if not full:
        ddp = prefixed(sdb16, "module.")
        p = zsave("liteclip2_bf16_ddp_cuda.pt", ddp, loc="cuda:1")
        assert b"cuda:1" in pkl_of(p) and b"cpu" not in pkl_of(p)
        man["liteclip2_bf16_ddp_cuda.pt"] = file_entry(
            "pytorch-zip", ddp, prefix="module.", location="cuda:1", **meta)
        p = os.path.join(out, "liteclip2.safetensors")
        safetensors.torch.save_file(sd, p, metadata={"format": "pt"})
        loaded = safetensors.torch.load_file(p)
        assert all(tensor_bytes(loaded[k]) == tensor_bytes(v) for k, v in sd.items())
        man["liteclip2.safetensors"] = file_entry("safetensors", sd, **meta)
        cfg = json.loads(bert_config(c).to_json_string(use_diff=False))
        with open(os.path.join(out, "config.json"), "w") as f:
            f.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    else:
        p = zsave("liteclip2_bf16.pt", sdb16)
        assert_loads_as(p, sdb16)
        man["liteclip2_bf16.pt"] = file_entry("pytorch-zip", sdb16, location="cpu", **meta)
        ddp = prefixed(sd, "module.")
        p = zsave("liteclip2_ddp.pt", ddp)
        assert_loads_as(p, ddp)
        man["liteclip2_ddp.pt"] = file_entry("pytorch-zip", ddp, prefix="module.",
                                             location="cpu", **meta)
        p = zsave("liteclip2_cuda.pt", sd, loc="cuda:0")
        assert b"cuda:0" in pkl_of(p)
        man["liteclip2_cuda.pt"] = file_entry("pytorch-zip", sd, location="cuda:0", **meta)
        seed_cfg = json.load(open(os.path.join(SEED_DIR, "config.json")))
        for ours, theirs in [("bert_hidden", "hidden_size"), ("bert_layers", "num_hidden_layers"),
                             ("bert_heads", "num_attention_heads"),
                             ("bert_intermediate", "intermediate_size"),
                             ("vocab_size", "vocab_size"),
                             ("max_positions", "max_position_embeddings"),
                             ("layer_norm_eps", "layer_norm_eps")]:
            assert c[ours] == seed_cfg[theirs], (ours, c[ours], seed_cfg[theirs])
        for f in ("vocab.txt", "config.json", "tokenizer.json"):
            shutil.copyfile(os.path.join(SEED_DIR, f), os.path.join(out, f))
    print(f"wrote model files ({time.time() - t0:.1f}s)")
    return man


# --------------------------------------------------------------------------------------
# Reader cases
# --------------------------------------------------------------------------------------

def dtypes_dict():
    inf, nan = float("inf"), float("nan")
    return OrderedDict([
        ("f32", torch.tensor([[1.5, -2.25, -0.0], [inf, -inf, nan]], dtype=torch.float32)),
        ("f64", torch.tensor([[0.1, -1e-310, 1.7976931348623157e308], [inf, -inf, nan]],
                             dtype=torch.float64)),
        ("f16", torch.tensor([[65504.0, -65504.0, 2.0 ** -24], [inf, -inf, nan]],
                             dtype=torch.float16)),
        ("bf16", torch.tensor([[3.3895313892515355e38, -1.0, 0.1], [inf, -inf, nan]],
                              dtype=torch.bfloat16)),
        ("i64", torch.tensor([[-2 ** 63, 2 ** 63 - 1, -1], [0, 1, 123456789012]],
                             dtype=torch.int64)),
        ("i32", torch.tensor([[-2 ** 31, 2 ** 31 - 1, -1], [0, 1, 65536]], dtype=torch.int32)),
        ("i16", torch.tensor([[-2 ** 15, 2 ** 15 - 1, -1], [0, 1, 256]], dtype=torch.int16)),
        ("i8", torch.tensor([[-128, 127, -1], [0, 1, 42]], dtype=torch.int8)),
        ("u8", torch.tensor([[0, 255, 1], [128, 127, 42]], dtype=torch.uint8)),
        ("bool", torch.tensor([[True, False, True], [False, False, True]])),
    ])


def views_dict():
    base = torch.arange(20.0)
    d = OrderedDict([
        ("transposed", torch.arange(12.0).reshape(3, 4).t()),
        ("channels_last", torch.arange(24.0).reshape(2, 3, 2, 2)
         .contiguous(memory_format=torch.channels_last)),
        ("shared_a", base[2:8]),
        ("shared_b", base[10:20].view(2, 5)),
        ("base", base),
        ("narrow", torch.arange(100.0)[5:9]),
        ("scalar", torch.tensor(-3.5)),
        ("empty", torch.zeros(0, 3)),
        ("expanded", torch.arange(3.0).expand(4, 3)),
    ])
    assert not d["transposed"].is_contiguous() and d["transposed"].stride() == (1, 4)
    assert d["channels_last"].stride() == (12, 1, 6, 3)
    assert d["expanded"].stride() == (0, 1)
    return d


def write_cases(out):
    cdir = os.path.join(out, "cases")
    os.makedirs(cdir, exist_ok=True)
    man = {}
    dt, vw = dtypes_dict(), views_dict()

    def rel(n):
        return "cases/" + n

    def entry(fmt, d, **kw):
        return file_entry(fmt, d, with_values=True, **kw)

    p = os.path.join(cdir, "dtypes.pt")
    torch.save(dt, p)
    assert_loads_as(p, dt)
    man[rel("dtypes.pt")] = entry("pytorch-zip", dt, archive_prefix="dtypes/", byteorder="little")

    p = os.path.join(cdir, "dtypes_legacy.pt")
    save_legacy(dt, p, key_seed=SEED + 10)
    assert_loads_as(p, dt)
    man[rel("dtypes_legacy.pt")] = entry("pytorch-legacy", dt)

    p = os.path.join(cdir, "views.pt")
    torch.save(vw, p)
    assert_loads_as(p, vw)
    back = torch.load(p, weights_only=True)
    # torch.save keeps views as views: strides, offsets and shared storages survive
    assert back["expanded"].stride() == (0, 1), back["expanded"].stride()
    assert back["transposed"].stride() == (1, 4)
    assert back["shared_a"].untyped_storage().data_ptr() == back["base"].untyped_storage().data_ptr()
    assert back["narrow"].untyped_storage().nbytes() == 400
    man[rel("views.pt")] = entry("pytorch-zip", vw, archive_prefix="views/")

    p = os.path.join(cdir, "views_legacy.pt")
    save_legacy(vw, p, key_seed=SEED + 11)
    assert_loads_as(p, vw)
    assert torch.load(p, weights_only=True)["expanded"].stride() == (0, 1)
    man[rel("views_legacy.pt")] = entry("pytorch-legacy", vw)

    p = os.path.join(cdir, "protocol4.pt")
    torch.save(vw, p, pickle_protocol=4)
    assert pkl_of(p)[:2] == b"\x80\x04"
    # torch 2.x's weights_only unpickler rejects protocol 4's FRAME opcode: load fully
    assert_loads_as(p, vw, weights_only=False)
    man[rel("protocol4.pt")] = entry("pytorch-zip", vw, archive_prefix="protocol4/",
                                     pickle_protocol=4)

    buf = io.BytesIO()
    torch.save(vw, buf)
    p = os.path.join(cdir, "buffer.pt")
    with open(p, "wb") as f:
        f.write(buf.getvalue())
    assert pkl_of(p) and zipfile.ZipFile(p).namelist()[0] == "archive/data.pkl"
    assert_loads_as(p, vw)
    man[rel("buffer.pt")] = entry("pytorch-zip", vw, archive_prefix="archive/")

    p = os.path.join(cdir, "deflated.pt")
    write_zip(p, read_zip_entries(os.path.join(cdir, "views.pt")), zipfile.ZIP_DEFLATED)
    assert all(zi.compress_type == zipfile.ZIP_DEFLATED for zi in zipfile.ZipFile(p).infolist())
    assert_loads_as(p, vw)
    man[rel("deflated.pt")] = entry("pytorch-zip", vw, archive_prefix="views/",
                                    compression="deflate")

    p = os.path.join(cdir, "bigendian.pt")
    write_bigendian(os.path.join(cdir, "dtypes.pt"), p)
    assert_loads_as(p, dt)  # torch.load byte-swaps back: same values as dtypes.pt
    man[rel("bigendian.pt")] = entry("pytorch-zip", dt, archive_prefix="dtypes/",
                                     byteorder="big")

    p = os.path.join(cdir, "dtypes.safetensors")
    safetensors.torch.save_file(dt, p)
    loaded = safetensors.torch.load_file(p)
    assert all(tensor_bytes(loaded[k]) == tensor_bytes(v) for k, v in dt.items())
    man[rel("dtypes.safetensors")] = entry("safetensors", dt)

    # must be refused by readers (not in the manifest's file entries)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in 2.x
        torch.manual_seed(SEED + 20)
        torch.jit.save(torch.jit.script(nn.Linear(2, 2)), os.path.join(cdir, "torchscript.pt"))
    patch_serialization_id(os.path.join(cdir, "torchscript.pt"))
    torch.manual_seed(SEED + 21)
    torch.save(nn.Linear(2, 2), os.path.join(cdir, "whole_module.pt"))
    return man


# --------------------------------------------------------------------------------------

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true",
                    help="write the full-size model to <out>/full/ (instead of small + cases)")
    ap.add_argument("--out", default=here, help="output folder (default: this script's folder)")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    if args.full:
        out = os.path.join(args.out, "full")
        os.makedirs(out, exist_ok=True)
        man = {"generator": versions()}
        man.update(write_model_files(out, FULL, full=True))
        write_json(os.path.join(out, "manifest.json"), man)
    else:
        os.makedirs(args.out, exist_ok=True)
        man = {"generator": versions()}
        files = write_model_files(args.out, SMALL, full=False)
        man["model"] = {"num_tensors": EXPECTED_TENSORS,
                        "num_parameters": files["liteclip2.pt"]["num_parameters"],
                        "config": dict(SMALL)}
        man.update(files)
        man.update(write_cases(args.out))
        man["must_refuse"] = ["cases/torchscript.pt", "cases/whole_module.pt"]
        write_json(os.path.join(args.out, "manifest.json"), man)
    write_inference_fixtures(args.out, full=args.full)
    print(f"done in {time.time() - t0:.1f}s")


def write_inference_fixtures(out, full):
    """Token ids, images and PyTorch reference outputs (issue 3), by the sibling scripts."""
    here = os.path.dirname(os.path.abspath(__file__))
    seed = os.environ.get("LITECLIP_SEED", os.path.join(here, "..", "..", "shared", "liteclip-seed"))
    py = sys.executable

    def run(*args):
        subprocess.check_call([py, *args])

    labels = ["a photo of a dog", "a photo of a cat", "the photo of a human baby"]
    ex = os.path.join(seed, "examples")
    if full:
        d = os.path.join(out, "full")
        run(os.path.join(here, "make_reference.py"), "--checkpoint", os.path.join(d, "liteclip2.pt"), "--tokenizer", d,
            "--images", *[os.path.join(ex, n) for n in ("cat.jpg", "car.jpg", "dancing.jpg", "catstuckindoor.jpeg")],
            "--texts", *labels, "two people dancing on a stage", "--out", os.path.join(d, "reference.safetensors"))
        run(os.path.join(here, "generate_onnx.py"), "--checkpoint", os.path.join(d, "liteclip2.pt"), "--out", os.path.join(d, "onnx"))
        return
    if os.path.abspath(out) != here:
        return   # the sub-generators write into golden/ itself
    run(os.path.join(here, "generate_tokens.py"))
    run(os.path.join(here, "generate_onnx_cases.py"))
    run(os.path.join(here, "generate_onnx.py"))
    run(os.path.join(here, "generate_images.py"))
    run(os.path.join(here, "generate_webp.py"))
    run(os.path.join(here, "make_training.py"), "--golden")
    common = ["--checkpoint", os.path.join(here, "liteclip2.pt"), "--tokenizer", os.path.join(seed, "model"),
              "--text-config", os.path.join(here, "config.json")]
    run(os.path.join(here, "make_reference.py"), *common,
        "--images", os.path.join(here, "images", "jpeg_progressive_333x250.jpg"), os.path.join(here, "images", "png_rgba_70x52.png"),
        os.path.join(ex, "cat.jpg"),
        "--texts", *labels, "A man in a red jacket climbs a steep rock face.", "two dogs play in the snow, one of them is brown",
        "--out", os.path.join(here, "reference.safetensors"))
    for dt in ("f16", "bf16"):
        run(os.path.join(here, "make_reference.py"), *common, "--images", os.path.join(ex, "cat.jpg"), "--texts", *labels,
            "--weights-dtype", dt, "--out", os.path.join(here, f"reference_{dt}.safetensors"))


if __name__ == "__main__":
    main()
