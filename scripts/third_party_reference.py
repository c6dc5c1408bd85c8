#!/usr/bin/env python3
"""The reference side of scripts/check-third-party (issue 13). Not run in CI.

Runs in a venv with torch, safetensors, onnx and numpy (scripts/check-third-party makes one).

  third_party_reference.py prepare MANIFEST DIST FILES EXPECTED > LIST
      For each manifest line `SPEC GLOB...` (SPEC = name==version), extracts the members of the
      downloaded wheel in DIST that match a glob into FILES/<name>-<version>/, writes what
      PyTorch / safetensors / onnx find in each to EXPECTED/<id>.json and prints one line per
      file: id, absolute path (tab-separated).
  third_party_reference.py report EXPECTED GOT
      Compares each EXPECTED/<id>.json with GOT/<id>.json (`liteclip inspect --json`, or
      GOT/<id>.err and GOT/<id>.rc when it failed) and prints the table. Exit 1 on any mismatch.

Expected tensors: every tensor at any depth of the file, named by its dotted path (dict keys and
list/tuple indices joined with '.'), with dtype (f32 f16 bf16 f64 i64 i32 i16 i8 u8 bool), shape
and sha256 of its contiguous little-endian bytes. PyTorch files are read with
torch.load(weights_only=True); where that refuses a file, with a restricted unpickler of this
script that imports nothing from the file and records tensors (and objects' state, as inert data)
without running any code. ONNX: initializers (onnx.numpy_helper.to_array) and the `value` tensors
of Constant nodes at any depth (named by the node's output; marked constant).
"""
import collections
import fnmatch
import hashlib
import io
import json
import os
import pickle
import pickletools
import struct
import sys
import zipfile

import numpy as np

DTYPES = ("f32", "f16", "bf16", "f64", "i64", "i32", "i16", "i8", "u8", "bool")


def sha(b):
    return hashlib.sha256(b).hexdigest()


def key_str(k):
    if isinstance(k, bool):
        return "True" if k else "False"
    if isinstance(k, bytes):
        return k.decode("utf-8", "replace")
    return str(k)


# ---------------------------------------------------------------- torch.load(weights_only=True)

def torch_dtype_name(t):
    import torch
    return {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
            torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
            torch.uint8: "u8", torch.bool: "bool"}.get(t.dtype, str(t.dtype).replace("torch.", ""))


def torch_row(name, t):
    import torch
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        b = t.view(torch.int16).numpy().tobytes()
    elif torch_dtype_name(t) in DTYPES:
        b = t.numpy().tobytes()
    else:  # any other dtype: its raw bytes
        b = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return {"name": name, "dtype": torch_dtype_name(t), "shape": list(t.shape), "sha256": sha(b)}


def flatten(obj, path, out, is_tensor, row, seen=None):
    """Every tensor in obj at any depth, by dotted path."""
    seen = set() if seen is None else seen
    if is_tensor(obj):
        out.append(row(".".join(path) if path else "tensor", obj))
        return
    if id(obj) in seen:
        return
    if isinstance(obj, dict):
        seen.add(id(obj))
        for k, v in obj.items():
            flatten(v, path + [key_str(k)], out, is_tensor, row, seen)
    elif isinstance(obj, (list, tuple)):
        seen.add(id(obj))
        for i, v in enumerate(obj):
            flatten(v, path + [str(i)], out, is_tensor, row, seen)
    elif isinstance(obj, Inert):
        seen.add(id(obj))
        for k, v in obj.children():
            flatten(v, path + [k], out, is_tensor, row, seen)


# ------------------------------------------------------------ restricted unpickler (fallback)

class RTensor:
    """A tensor read by the restricted unpickler: a view of a storage, materialised on demand
    (a legacy file's storage bytes come after the pickle that builds its tensors)."""
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride)
        self.dtype = STORAGES[storage.stype][0]

    def array(self):
        a = self.storage.array()
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, dtype=a.dtype)
        if not self.size:  # a 0-d tensor
            return a[self.offset:self.offset + 1].reshape(()).copy()
        end = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
        if self.offset < 0 or end > a.size:
            raise ValueError(f"tensor view past its storage ({end} > {a.size})")
        v = np.lib.stride_tricks.as_strided(a[self.offset:], shape=self.size, strides=[s * a.itemsize for s in self.stride])
        return v.copy(order="C")


class Inert:
    """Any class or function a pickle names: never imported, never called. Records the arguments
    it was 'called' with and the state, items and list entries the pickle gives it."""
    qualname = "?"

    def __new__(cls, *args, **kwargs):  # pickle's NEWOBJ calls __new__ alone, REDUCE the class
        self = object.__new__(cls)
        self.args, self.kwargs, self.state, self.items, self.list = args, kwargs, None, {}, []
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, k, v):
        self.items[k] = v

    def append(self, v):
        self.list.append(v)

    def extend(self, vs):
        self.list.extend(vs)

    def children(self):
        """(path part, value): state dict keys (or the state itself), items, list entries, args."""
        st = self.state
        if isinstance(st, tuple) and len(st) == 2 and (st[0] is None or isinstance(st[0], dict)):
            st = dict(st[0] or {}, **(st[1] or {}))  # (state, slotstate)
        if isinstance(st, dict):
            yield from ((key_str(k), v) for k, v in st.items())
        elif st is not None:
            yield ("state", st)
        yield from ((key_str(k), v) for k, v in self.items.items())
        yield from ((str(i), v) for i, v in enumerate(self.list))
        if self.args:
            yield ("args", list(self.args))


def inert_class(module, name):
    return type(name, (Inert,), {"qualname": f"{module}.{name}"})


STORAGES = {"FloatStorage": ("f32", "<f4"), "HalfStorage": ("f16", "<f2"), "BFloat16Storage": ("bf16", "<i2"),
            "DoubleStorage": ("f64", "<f8"), "LongStorage": ("i64", "<i8"), "IntStorage": ("i32", "<i4"),
            "ShortStorage": ("i16", "<i2"), "CharStorage": ("i8", "i1"), "ByteStorage": ("u8", "u1"),
            "BoolStorage": ("bool", "?")}
TORCH_DTYPES = {"float32": "FloatStorage", "float": "FloatStorage", "float16": "HalfStorage", "half": "HalfStorage",
                "bfloat16": "BFloat16Storage", "float64": "DoubleStorage", "double": "DoubleStorage",
                "int64": "LongStorage", "long": "LongStorage", "int32": "IntStorage", "int": "IntStorage",
                "int16": "ShortStorage", "short": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage",
                "bool": "BoolStorage"}


# plain data constructors (they call nothing from the file)
SAFE_BUILTINS = {"dict": dict, "list": list, "tuple": tuple, "set": set, "frozenset": frozenset, "int": int,
                 "long": int, "float": float, "str": str, "unicode": str, "bytes": bytes, "bool": bool,
                 "complex": complex, "slice": slice, "bytearray": bytearray}


class StorageType:
    def __init__(self, name):
        self.name = name


class Storage:
    """A storage (or a legacy view of one: elements [off, off+n) of its root)."""
    def __init__(self, stype, root, off=0, n=None):
        self.stype, self.root, self.off, self.n = stype, root, off, n  # root: {"array": numpy or None}

    def array(self):
        a = self.root["array"]
        if a is None:
            raise ValueError("storage without data")
        return a[self.off:] if self.n is None else a[self.off:self.off + self.n]


def rebuild_tensor(storage, offset, size, stride, *rest):
    return RTensor(storage, offset, size, stride)


def rebuild_parameter(data, *rest):
    return data


def rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)


def reconstructor(cls, base, state):
    return cls() if isinstance(cls, type) and issubclass(cls, Inert) else Inert()


class RestrictedUnpickler(pickle.Unpickler):
    """Imports nothing: torch's tensor rebuild functions and storage classes map to the functions
    above, plain containers to Python's; every other global is an Inert placeholder class."""

    def __init__(self, f, load_storage, **kw):
        super().__init__(f, **kw)
        self.load_storage = load_storage
        self.globals_seen = set()
        self.locations = set()

    def find_class(self, module, name):
        self.globals_seen.add(f"{module}.{name}")
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return rebuild_parameter
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return rebuild_from_type_v2
        if module == "torch" and name in STORAGES:
            return StorageType(name)
        if module == "torch" and name in TORCH_DTYPES:
            return StorageType(TORCH_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module in ("copyreg", "copy_reg") and name == "_reconstructor":
            return reconstructor
        if module == "collections" and name == "defaultdict":
            return collections.defaultdict  # its factory stays an Inert class, never called
        if module in ("builtins", "__builtin__") and name in SAFE_BUILTINS:
            return SAFE_BUILTINS[name]
        return inert_class(module, name)

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or key_str(pid[0]) != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        stype, key, location = pid[1], key_str(pid[2]), key_str(pid[3])
        self.locations.add(location)
        if not isinstance(stype, StorageType):
            raise pickle.UnpicklingError(f"storage type {stype!r}")
        view = pid[5] if len(pid) > 5 else None
        st = self.load_storage(stype.name, key)
        if view:  # legacy storage view: (view_key, offset, size) in elements
            _, off, n = view
            st = Storage(st.stype, st.root, int(off), int(n))
        return st


def restricted_zip(path):
    z = zipfile.ZipFile(path)
    pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
        raise ValueError("no single data.pkl in the zip")
    prefix = pkl[0][: -len("data.pkl")]
    cache = {}

    def load_storage(stype, key):
        if key not in cache:
            cache[key] = {"array": np.frombuffer(z.read(f"{prefix}data/{key}"), dtype=STORAGES[stype][1])}
        return Storage(stype, cache[key])

    u = RestrictedUnpickler(io.BytesIO(z.read(pkl[0])), load_storage, encoding="utf-8")
    return u.load(), u


def restricted_legacy(path):
    data = open(path, "rb").read()
    f = io.BytesIO(data)
    magic = pickle.Unpickler(f).load()
    if magic != 0x1950A86A20F9469CFC6C:
        raise ValueError("not a legacy torch file")
    pickle.Unpickler(f).load()  # protocol version
    pickle.Unpickler(f).load()  # sys info
    pending = {}

    def load_storage(stype, key):
        pending.setdefault(key, (stype, {"array": None}))
        return Storage(stype, pending[key][1])

    u = RestrictedUnpickler(f, load_storage, encoding="utf-8")
    result = u.load()
    keys = pickle.Unpickler(f, encoding="utf-8").load()
    pos = f.tell()
    for k in keys:
        k = key_str(k)
        n = struct.unpack("<q", data[pos:pos + 8])[0]
        stype, root = pending[k]
        np_dtype = np.dtype(STORAGES[stype][1])
        root["array"] = np.frombuffer(data, dtype=np_dtype, count=n, offset=pos + 8)
        pos += 8 + n * np_dtype.itemsize
    return result, u


def restricted_row(name, t):
    a = t.array()
    return {"name": name, "dtype": t.dtype, "shape": list(a.shape), "sha256": sha(a.tobytes())}


# ---------------------------------------------------------------- format detection

def pickle_facts(blob):
    """(python 2?, storage locations, globals) of the first pickle in blob, read with pickletools."""
    py2, locs, globs = False, set(), set()
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(blob)):
            if op.name in ("SHORT_BINSTRING", "BINSTRING", "STRING"):
                py2 = True
            if isinstance(arg, (str, bytes)):
                s = key_str(arg)
                if s.startswith("cuda") or s == "cpu":
                    locs.add(s)
            if op.name == "GLOBAL":
                globs.add(arg.replace(" ", "."))
    except Exception:
        pass
    return py2, locs, globs


def torch_facts(path):
    if zipfile.is_zipfile(path):
        z = zipfile.ZipFile(path)
        names = z.namelist()
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript", {}
        pkl = [n for n in names if n.endswith("data.pkl")]
        py2, locs, globs = pickle_facts(z.read(pkl[0])) if pkl else (False, set(), set())
        return "zip", {"py2": py2, "locations": locs, "globals": globs}
    data = open(path, "rb").read()
    f = io.BytesIO(data)
    for _ in range(3):
        pickle.Unpickler(f).load()
    py2, locs, globs = pickle_facts(data[f.tell():])
    # the protocol/sys-info pickles are python-version independent; the main pickle tells
    return "legacy", {"py2": py2, "locations": locs, "globals": globs}


# ---------------------------------------------------------------- per format

def expect_torch(path):
    import torch
    kind, facts = torch_facts(path)
    if kind == "torchscript":
        return {"format": "torchscript", "torchscript": True, "loader": "none (TorchScript: liteclip should refuse it)",
                "tensors": []}
    tags = [kind]
    if facts["py2"]:
        tags.append("py2")
    if any(l.startswith("cuda") for l in facts["locations"]):
        tags.append("cuda")
    tensors, notes = [], []
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        flatten(obj, [], tensors, lambda o: isinstance(o, torch.Tensor), torch_row)
        loader = "torch.load(weights_only=True)"
        # self-check of the fallback reader on every file PyTorch reads
        try:
            r_obj, _ = restricted_zip(path) if kind == "zip" else restricted_legacy(path)
            r_tensors = []
            flatten(r_obj, [], r_tensors, lambda o: isinstance(o, RTensor), restricted_row)
            notes.append("restricted unpickler agrees" if r_tensors == tensors else "restricted unpickler DISAGREES with torch.load")
        except Exception as e:
            notes.append(f"restricted unpickler failed: {e}"[:200])
    except Exception as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        msg = [l for l in lines if "Unsupported global" in l] or [l for l in lines if "WeightsUnpickler" in l] or lines[:1]
        why = msg[0].split(" was not an allowed global")[0].replace("WeightsUnpickler error: ", "")[:160]
        obj, u = restricted_zip(path) if kind == "zip" else restricted_legacy(path)
        tensors = []
        flatten(obj, [], tensors, lambda o: isinstance(o, RTensor), restricted_row)
        loader = f"restricted unpickler (torch refuses: {why})"
    if isinstance(obj, dict) and any(key_str(k).startswith("pytorch-lightning_version") for k in obj):
        tags.append("lightning-ckpt")
    inert = sorted(g for g in facts["globals"] if not g.startswith(("torch.", "collections.", "_codecs.", "builtins.", "__builtin__.", "copy_reg.", "copyreg.")))
    module_pickle = any(g.startswith("torch.nn.modules.") for g in facts["globals"])
    if module_pickle:
        tags.append("whole-module-pickle")
    if inert:
        tags.append("objects:" + ",".join(inert[:2]) + (f",+{len(inert) - 2}" if len(inert) > 2 else ""))
    return {"format": " ".join(tags), "loader": loader, "tensors": tensors, "notes": notes, "module_pickle": module_pickle}


def expect_safetensors(path):
    from safetensors import safe_open
    tensors = []
    with safe_open(path, framework="pt") as f:
        for k in f.keys():
            tensors.append(torch_row(k, f.get_tensor(k)))
    return {"format": "safetensors", "loader": "safetensors.safe_open", "tensors": tensors}


ONNX_DTYPES = {1: "f32", 10: "f16", 16: "bf16", 11: "f64", 7: "i64", 6: "i32", 5: "i16", 3: "i8", 2: "u8", 9: "bool"}


def onnx_row(name, t, **extra):
    from onnx import numpy_helper, TensorProto
    a = numpy_helper.to_array(t)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    dtype = ONNX_DTYPES.get(t.data_type, TensorProto.DataType.Name(t.data_type).lower())
    row = {"name": name, "dtype": dtype, "shape": list(t.dims), "sha256": sha(np.ascontiguousarray(a).tobytes())}
    row.update(extra)
    return row


def expect_onnx(path):
    import onnx
    m = onnx.load(path, load_external_data=False)
    tensors, notes = [], []
    other_consts = 0

    def walk(g, depth, where):
        nonlocal other_consts
        for t in g.initializer:
            tensors.append(onnx_row(t.name, t, **({"subgraph": where} if depth else {})))
        if len(g.sparse_initializer):
            notes.append(f"{len(g.sparse_initializer)} sparse initializers not compared")
        for n in g.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                value = [a for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR]
                if value and n.output and n.output[0]:
                    extra = {"constant": True}
                    if depth:
                        extra["subgraph"] = where
                    tensors.append(onnx_row(n.output[0], value[0].t, **extra))
                else:
                    other_consts += 1
            for a in n.attribute:
                sub = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []
                for s in sub:
                    walk(s, depth + 1, f"{n.op_type} '{n.name}'.{a.name}")

    walk(m.graph, 0, "")
    if other_consts:
        notes.append(f"{other_consts} Constant nodes hold value_float(s)/value_int(s)/sparse/string values, not compared")
    if m.functions:
        notes.append(f"{len(m.functions)} local functions not walked")
    n_init = sum(1 for t in tensors if not t.get("constant"))
    n_const = sum(1 for t in tensors if t.get("constant"))
    n_sub = sum(1 for t in tensors if t.get("subgraph"))
    tags = ["onnx"]
    if n_init:
        tags.append(f"initializers({n_init})")
    if n_const:
        tags.append(f"constants({n_const})")
    if n_sub:
        tags.append(f"in-subgraphs({n_sub})")
    return {"format": " ".join(tags), "loader": "onnx.load + numpy_helper.to_array", "tensors": tensors, "notes": notes}


def expect(path):
    with open(path, "rb") as f:
        head = f.read(8)
    if path.endswith(".onnx"):
        return expect_onnx(path)
    if path.endswith(".safetensors"):
        return expect_safetensors(path)
    if head[:2] in (b"PK", b"\x80\x02") or zipfile.is_zipfile(path):
        return expect_torch(path)
    raise ValueError(f"unknown file kind (first bytes {head!r})")


# ---------------------------------------------------------------- prepare

def wheel_for(dist, spec):
    name, version = spec.split("==")
    norm = name.lower().replace("-", "_").replace(".", "_")
    for fn in sorted(os.listdir(dist)):
        base = fn.lower().replace("-", "_").replace(".", "_")
        if base.startswith(f"{norm}_{version.replace('.', '_')}_"):
            if fn.endswith((".whl", ".zip", ".tar.gz")):
                return os.path.join(dist, fn)
    raise FileNotFoundError(f"no downloaded file for {spec} in {dist}")


def members(archive):
    if archive.endswith((".whl", ".zip")):
        z = zipfile.ZipFile(archive)
        return [(n, (lambda n=n: z.read(n))) for n in z.namelist() if not n.endswith("/")]
    import tarfile
    t = tarfile.open(archive)
    return [(m.name.split("/", 1)[1] if "/" in m.name else m.name, (lambda m=m: t.extractfile(m).read()))
            for m in t.getmembers() if m.isfile()]


def prepare(manifest, dist, files, expected):
    os.makedirs(files, exist_ok=True)
    os.makedirs(expected, exist_ok=True)
    for line in open(manifest):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *globs = line.split()
        name, version = spec.split("==")
        archive = wheel_for(dist, spec)
        found = [(n, read) for n, read in members(archive) if any(fnmatch.fnmatchcase(n, g) for g in globs)]
        for g in globs:
            if not any(fnmatch.fnmatchcase(n, g) for n, _ in found):
                print(f"warning: {spec}: nothing matches {g}", file=sys.stderr)
        for member, read in sorted(found):
            dest = os.path.join(files, f"{name}-{version}", member)
            fid = f"{name}-{version}/{member}".replace("/", "__")
            if not os.path.exists(dest):
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with open(dest + ".part", "wb") as f:
                    f.write(read())
                os.replace(dest + ".part", dest)
            out = os.path.join(expected, fid + ".json")
            size = os.path.getsize(dest)
            with open(dest, "rb") as f:
                file_sha = sha(f.read())
            cached = None
            if os.path.exists(out):
                try:
                    cached = json.load(open(out))
                except ValueError:
                    pass
            if not cached or cached.get("file_sha256") != file_sha or cached.get("script") != SCRIPT_VERSION:
                rec = {"package": name, "version": version, "member": member, "file": os.path.abspath(dest), "size": size,
                       "file_sha256": file_sha, "script": SCRIPT_VERSION}
                try:
                    rec.update(expect(dest))
                except Exception as e:
                    rec.update({"format": "?", "reference_error": f"{type(e).__name__}: {e}"[:300], "tensors": []})
                with open(out + ".part", "w") as f:
                    json.dump(rec, f, indent=1)
                os.replace(out + ".part", out)
            print(f"{fid}\t{os.path.abspath(dest)}", flush=True)


SCRIPT_VERSION = 5


# ---------------------------------------------------------------- report

def wrapper_prefixes(doc):
    """Dotted prefixes the reported wrapper names ("nested under key 'a' > 'b'")."""
    w = doc.get("wrapper") or ""
    out = []
    if w.startswith("nested under key '"):
        out.append(".".join(w[len("nested under key '"):].rstrip("'").split("' > '")) + ".")
    return out


def diff(expected, got_rows):
    """Problems between two lists of rows (matched by name)."""
    want = collections.defaultdict(list)
    for r in expected:
        want[r["name"]].append(r)
    have = collections.defaultdict(list)
    for r in got_rows:
        have[r["name"]].append(r)
    problems = {"missing": [], "extra": [], "dtype": [], "shape": [], "sha256": [], "duplicate": []}
    for n, rows in want.items():
        hs = have.get(n, [])
        if not hs:
            problems["missing"].extend(r["name"] for r in rows)
            continue
        if len(hs) != len(rows):
            problems["duplicate"].append(f"{n} ({len(rows)} vs {len(hs)})")
        for w, h in zip(rows, hs):
            if w["dtype"] != h.get("dtype"):
                problems["dtype"].append(f"{n}: {h.get('dtype')} vs {w['dtype']}")
            elif list(w["shape"]) != list(h.get("shape", [])):
                problems["shape"].append(f"{n}: {h.get('shape')} vs {w['shape']}")
            elif w["sha256"] != h.get("sha256"):
                problems["sha256"].append(n)
    problems["extra"] = [n for n in have if n not in want]
    return problems


def count(p):
    return sum(len(v) for v in p.values())


def describe(p, expected):
    parts = []
    if p["missing"]:
        subs = sum(1 for r in expected if r["name"] in set(p["missing"]) and r.get("subgraph"))
        consts = sum(1 for r in expected if r["name"] in set(p["missing"]) and r.get("constant"))
        where = sorted({r["subgraph"].split("'")[0].strip() + " " + r["subgraph"].rsplit(".", 1)[-1]
                        for r in expected if r["name"] in set(p["missing"]) and r.get("subgraph")})
        extra = (f" ({consts} Constant-node, {subs} in subgraphs: {', '.join(where[:3])})" if subs else
                 f" ({consts} Constant-node)" if consts else "")
        parts.append(f"{len(p['missing'])} missing{extra}, e.g. {p['missing'][0]}")
    if p["extra"]:
        parts.append(f"{len(p['extra'])} extra, e.g. {p['extra'][0]}")
    for k in ("dtype", "shape"):
        if p[k]:
            parts.append(f"{len(p[k])} {k} differ (liteclip vs reference), e.g. {p[k][0]}")
    if p["sha256"]:
        parts.append(f"{len(p['sha256'])} sha256 differ, e.g. {p['sha256'][0]}")
    if p["duplicate"]:
        parts.append(f"{len(p['duplicate'])} names listed a different number of times, e.g. {p['duplicate'][0]}")
    return "; ".join(parts)


def compare(exp, got_dir, fid):
    """(result, match mode, details) for one file."""
    if exp.get("reference_error"):
        return "reference error", "-", exp["reference_error"]
    rc_path = os.path.join(got_dir, fid + ".rc")
    rc = int(open(rc_path).read().strip() or "1") if os.path.exists(rc_path) else None
    err = open(os.path.join(got_dir, fid + ".err"), errors="replace").read().strip() if os.path.exists(os.path.join(got_dir, fid + ".err")) else ""
    if rc is None:
        return "not run", "-", ""
    if exp.get("torchscript"):
        if rc != 0 and "TorchScript" in err:
            return "refused (TorchScript)", "-", " ".join(err.split()).replace(f"{exp['file']}: ", "").replace("liteclip inspect: error: ", "")[:300]
        if rc != 0:
            return "refused (other message)", "-", err[:300]
        return "MISMATCH", "-", "read a TorchScript archive (expected a refusal)"
    err = " ".join(err.split()).replace(f"{exp['file']}: ", "").replace("liteclip inspect: error: ", "")
    if rc != 0 and exp.get("module_pickle") and "pickled model" in err:
        return "refused (whole pickled model)", "-", err[:300]
    if rc != 0:
        return "LITECLIP ERROR", "-", err[:400]
    try:
        doc = json.load(open(os.path.join(got_dir, fid + ".json")))
    except ValueError as e:
        return "LITECLIP ERROR", "-", f"inspect --json printed no JSON: {e}"
    rows = doc.get("tensors", [])
    expected = exp["tensors"]
    modes = [("full path", rows)]
    if rows and all("key" in r and "container" in r for r in rows):
        modes.append(("container+key", [dict(r, name=".".join(list(r["container"]) + [r["key"]])) for r in rows]))
    for pre in wrapper_prefixes(doc):
        modes.append((f"after stripping wrapper '{pre}'", [dict(r, name=pre + r["name"]) for r in rows]))
    best = None
    for label, rs in modes:
        p = diff(expected, rs)
        if best is None or count(p) < count(best[1]):
            best = (label, p)
    label, p = best
    if count(p) == 0:
        return "ok", label, ""
    if count(p) == len(p["missing"]) and label.startswith("after stripping"):
        return "MISMATCH", label, (f"the {len(rows)} listed tensors match; {len(p['missing'])} tensors outside that "
                                   f"wrapper are not listed, e.g. {p['missing'][0]}")
    return "MISMATCH", label, describe(p, expected)


def report(expected_dir, got_dir, order_file=None):
    ids = [l.split("\t")[0] for l in open(order_file).read().splitlines() if l.strip()] if order_file else \
        sorted(f[:-5] for f in os.listdir(expected_dir) if f.endswith(".json"))
    rows = []
    for fid in ids:
        exp = json.load(open(os.path.join(expected_dir, fid + ".json")))
        result, mode, details = compare(exp, got_dir, fid)
        rows.append((exp, result, mode, details))
    head = ("package", "file", "format", "tensors", "result", "names matched", "details")
    table = [head]
    for exp, result, mode, details in rows:
        table.append((f"{exp['package']}=={exp['version']}", exp["member"], exp.get("format", "?"),
                      str(len(exp.get("tensors", []))), result, mode, details))
    widths = [max(len(r[i]) for r in table) for i in range(6)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r[:6], widths)) + "  " + r[6])
    # Files liteclip is meant to read; TorchScript archives must be refused; whole pickled
    # nn.Modules may be refused (with that reason) or read (then they are compared).
    refusals = [r for r in rows if r[1].startswith("refused (")]
    readable = [r for r in rows if not r[0].get("torchscript") and r not in refusals]
    ok = sum(1 for r in readable if r[1] == "ok")
    bad = sum(1 for r in readable if r[1] != "ok")
    ts = [r for r in rows if r[0].get("torchscript")]
    ts_bad = sum(1 for r in ts if r[1] != "refused (TorchScript)")
    pkgs = {r[0]["package"] for r in readable}
    size = sum(r[0].get("size", 0) for r in rows)
    print()
    print(f"{len(readable)} files liteclip should read, from {len(pkgs)} packages ({size / 1e6:.1f} MB extracted): "
          f"{ok} ok, {bad} not ok"
          + ("; refused as they should be: " + ", ".join(f"{sum(1 for r in refusals if r[1] == k)} {k[9:-1]}"
                                                        for k in sorted({r[1] for r in refusals})) if refusals else "")
          + (f"; {ts_bad} TorchScript archives not refused" if ts_bad else ""))
    print(f"{ok} passed, {bad + ts_bad} failed")
    return 1 if bad or ts_bad else 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "prepare" and len(sys.argv) == 6:
        prepare(*sys.argv[2:])
    elif len(sys.argv) >= 2 and sys.argv[1] == "report" and len(sys.argv) in (4, 5):
        sys.exit(report(*sys.argv[2:]))
    elif len(sys.argv) == 3 and sys.argv[1] == "expect":  # one file, JSON to stdout (debugging)
        json.dump(expect(sys.argv[2]), sys.stdout, indent=1)
        print()
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
