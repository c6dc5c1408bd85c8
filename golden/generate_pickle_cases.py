#!/usr/bin/env python3
"""Synthetic legacy torch files for the pickle interpreter (issue 13): Python 2 opcodes,
text-protocol opcodes and inert placeholders.  Writes golden/cases/pickle/*.pt and
golden/cases/pickle/expected.json; needs only the Python 3 standard library (no torch).

    python3 golden/generate_pickle_cases.py            # writes golden/cases/pickle/ and the
                                                       # cases' pickles to golden/fuzz/pickle/seed-*
    python3 golden/generate_pickle_cases.py --out DIR --fuzz-seeds ''   # elsewhere (determinism checks)

Real Python 2 checkpoints (e.g. the lpips package's weights/v0.1/*.pth) cannot be committed, so
these files are assembled opcode by opcode in the same layout torch.save(...,
_use_new_zipfile_serialization=False) writes (torch/serialization.py `_legacy_save`): the magic
number pickle, the protocol version pickle, the sys_info pickle, the object pickle (storages as
('storage', type, key, location, numel, view_metadata) persistent ids), the storage key list
pickle, then for each key an int64 little-endian element count and the raw little-endian data.

Every file that must read is first read back here with Python's own unpickler (encoding='utf-8'
as torch.load passes it, stub classes for the placeholders, the tensor rebuild functions as
plain records): expected.json holds what Python decoded -- tensor names, dtypes, shapes and
every value, the placeholder class names, and the decoded text-protocol values -- so the Swift
tests compare against Python, not against this script's intentions.  Files that must be refused
carry the expected ReadError code.
"""
import argparse
import collections
import warnings
import json
import os
import pickle
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MAGIC = 0x1950A86A20F9469CFC6C

# storage class -> (struct format, dtype name used by liteclip)
STORAGES = {
    "FloatStorage": ("<f", "f32"), "DoubleStorage": ("<d", "f64"), "HalfStorage": ("<e", "f16"),
    "LongStorage": ("<q", "i64"), "IntStorage": ("<i", "i32"), "ShortStorage": ("<h", "i16"),
    "CharStorage": ("<b", "i8"), "ByteStorage": ("<B", "u8"), "BoolStorage": ("<?", "bool"),
}


class P:
    """A pickle written opcode by opcode."""

    def __init__(self, proto=2):
        self.b = bytearray()
        if proto is not None:
            self.b += bytes([0x80, proto])

    def raw(self, *bs):
        self.b += bytes(bs)
        return self

    # -- protocol 2 binary forms
    def mark(self): return self.raw(0x28)
    def stop(self): return self.raw(0x2E)
    def none(self): return self.raw(0x4E)
    def true(self): return self.raw(0x88)
    def false(self): return self.raw(0x89)
    def tuple(self): return self.raw(0x74)
    def tuple1(self): return self.raw(0x85)
    def tuple2(self): return self.raw(0x86)
    def empty_tuple(self): return self.raw(0x29)
    def empty_dict(self): return self.raw(0x7D)
    def empty_list(self): return self.raw(0x5D)
    def setitem(self): return self.raw(0x73)
    def setitems(self): return self.raw(0x75)
    def append(self): return self.raw(0x61)
    def appends(self): return self.raw(0x65)
    def reduce(self): return self.raw(0x52)
    def build(self): return self.raw(0x62)
    def newobj(self): return self.raw(0x81)
    def newobj_ex(self): return self.raw(0x92)
    def binpersid(self): return self.raw(0x51)
    def pop(self): return self.raw(0x30)
    def binput(self, i): return self.raw(0x71, i)
    def binget(self, i): return self.raw(0x68, i)

    def global_(self, module, name):
        self.b += b"c" + module.encode() + b"\n" + name.encode() + b"\n"
        return self

    def binint(self, v):
        if 0 <= v < 256:
            return self.raw(0x4B, v)
        if 0 <= v < 65536:
            self.b += b"M" + struct.pack("<H", v)
            return self
        self.b += b"J" + struct.pack("<i", v)
        return self

    def long1(self, v):
        data = pickle.encode_long(v)
        self.b += bytes([0x8A, len(data)]) + data
        return self

    def long4(self, v):
        data = pickle.encode_long(v)
        self.b += b"\x8b" + struct.pack("<i", len(data)) + data
        return self

    def short_binstring(self, s):
        data = s if isinstance(s, bytes) else s.encode("utf-8")
        assert len(data) < 256
        self.b += bytes([0x55, len(data)]) + data
        return self

    def binstring(self, s):
        data = s if isinstance(s, bytes) else s.encode("utf-8")
        self.b += b"T" + struct.pack("<i", len(data)) + data
        return self

    def binunicode(self, s):
        data = s.encode("utf-8")
        self.b += b"X" + struct.pack("<I", len(data)) + data
        return self

    def binfloat(self, v):
        self.b += b"G" + struct.pack(">d", v)
        return self

    # -- protocol 0 text forms
    def text(self, op, arg):
        self.b += op + (arg if isinstance(arg, bytes) else arg.encode()) + b"\n"
        return self

    def int_text(self, v): return self.text(b"I", {True: "01", False: "00"}.get(v, str(v)) if isinstance(v, bool) else str(v))
    def long_text(self, v): return self.text(b"L", str(v) + "L")
    def float_text(self, v): return self.text(b"F", repr(v))
    def string_text(self, quoted): return self.text(b"S", quoted)     # quoted: a Python 2 repr, as bytes
    def unicode_text(self, raw): return self.text(b"V", raw)          # raw-unicode-escape bytes
    def put(self, i): return self.text(b"p", str(i))
    def get(self, i): return self.text(b"g", str(i))
    def dict_(self): return self.raw(0x64)
    def list_(self): return self.raw(0x6C)
    def inst(self, module, name): return self.text(b"i", module + "\n" + name)
    def obj(self): return self.raw(0x6F)

    def bytes(self):
        return bytes(self.b)


def py2_repr(data: bytes) -> bytes:
    """Python 2's repr() of a str, the argument protocol 0 writes for STRING."""
    quote = b'"' if b"'" in data and b'"' not in data else b"'"
    out = bytearray(quote)
    for c in data:
        ch = bytes([c])
        if ch == quote or ch == b"\\":
            out += b"\\" + ch
        elif ch == b"\t":
            out += b"\\t"
        elif ch == b"\n":
            out += b"\\n"
        elif ch == b"\r":
            out += b"\\r"
        elif c < 0x20 or c >= 0x7F:
            out += b"\\x%02x" % c
        else:
            out += ch
    return bytes(out + quote)


def py2_raw_unicode(s: str) -> bytes:
    """What Python 2's protocol 0 writes for a unicode object (UNICODE's argument)."""
    return s.replace("\\", "\\u005c").replace("\n", "\\u000a").encode("raw-unicode-escape")


# ---------------------------------------------------------------------------------------------
# Legacy files


class Legacy:
    """Storages for one legacy file: key -> (storage class, values)."""

    def __init__(self):
        self.storages = collections.OrderedDict()

    def add(self, key, cls, values):
        self.storages[key] = (cls, list(values))

    def header(self, text=False):
        """The magic number, protocol version and sys_info pickles, binary (protocol 2) or text."""
        if not text:
            magic = P().long1(MAGIC).stop().bytes()
            version = P().binint(1001).stop().bytes()
            si = P().empty_dict().binput(1).mark()
            si.short_binstring("protocol_version").binint(1001)
            si.short_binstring("little_endian").true()
            si.short_binstring("type_sizes").empty_dict().binput(2).mark()
            si.short_binstring("short").binint(2).short_binstring("int").binint(4).short_binstring("long").binint(4)
            si.setitems().setitems().stop()
            return magic + version + si.bytes()
        # Protocol 0, except that the first pickle opens with PROTO 2 (how the file is told apart
        # from other formats; Python's unpickler accepts any opcode after it).
        magic = P().long_text(MAGIC).stop().bytes()
        version = P(None).int_text(1001).stop().bytes()
        si = P(None).mark().dict_().put(0)
        si.string_text(py2_repr(b"protocol_version")).put(1).int_text(1001).setitem()
        si.string_text(py2_repr(b"little_endian")).put(2).int_text(True).setitem()
        si.string_text(py2_repr(b"type_sizes")).put(3).mark().dict_().put(4)
        si.string_text(py2_repr(b"short")).put(5).int_text(2).setitem()
        si.string_text(py2_repr(b"int")).put(6).int_text(4).setitem()
        si.string_text(py2_repr(b"long")).put(7).int_text(8).setitem()
        si.setitem().stop()
        return magic + version + si.bytes()

    def keys_pickle(self, text=False):
        if text:
            p = P(None).mark().list_().put(0)
            for i, k in enumerate(self.storages):
                p.string_text(py2_repr(k.encode())).put(i + 1).append()
            return p.stop().bytes()
        p = P().empty_list().binput(1).mark()
        for k in self.storages:
            p.short_binstring(k)
        return p.appends().stop().bytes()

    def data(self):
        out = bytearray()
        for cls, values in self.storages.values():
            fmt = STORAGES[cls][0]
            out += struct.pack("<q", len(values))
            for v in values:
                out += struct.pack(fmt, v)
        return bytes(out)

    def file(self, obj_pickle, text=False):
        return self.header(text) + obj_pickle + self.keys_pickle(text) + self.data()


def storage_pid(p, cls, key, location, numel):
    """('storage', torch.<cls>, key, location, numel, None) + BINPERSID, with Python 2 strings."""
    p.mark().short_binstring("storage").global_("torch", cls).short_binstring(key)
    p.short_binstring(location).long1(numel).none().tuple().binpersid()


def tensor_v2(p, cls, key, location, numel, offset, size, stride):
    """_rebuild_tensor_v2(storage, offset, size, stride, False, None) as torch 0.4 under Python 2 wrote it."""
    p.global_("torch._utils", "_rebuild_tensor_v2").mark()
    storage_pid(p, cls, key, location, numel)
    p.binint(offset)
    p.mark()
    for s in size:
        p.binint(s)
    p.tuple().mark()
    for s in stride:
        p.binint(s)
    p.tuple().false().none().tuple().reduce()


def py2_ordered_dict(p, items, metadata=None):
    """OrderedDict as Python 2 pickles it: OrderedDict([[k, v], ...]) and BUILD {'_metadata': ...}.
    `items` is a list of (key, writer) where writer(p) writes the value."""
    p.global_("collections", "OrderedDict").empty_list().mark()
    for k, write in items:
        p.empty_list().mark().short_binstring(k)
        write(p)
        p.appends()
    p.appends().tuple1().reduce()
    if metadata is not None:
        p.empty_dict().short_binstring("_metadata")
        metadata(p)
        p.setitem().build()


def version_metadata(prefixes):
    def write(p):
        py2_ordered_dict(p, [(k, lambda p: p.empty_dict().short_binstring("version").binint(1).setitem()) for k in prefixes])
    return write


# ---------------------------------------------------------------------------------------------
# Reading back with Python's unpickler (the oracle)


class Stub:
    """A placeholder class as Python would build it: records everything, runs nothing."""
    qualname = "?"

    def __new__(cls, *args, **kwargs):
        o = object.__new__(cls)
        o.args, o.kwargs, o.state, o.items, o.entries = list(args), dict(kwargs), None, [], []
        return o

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, k, v):
        self.entries.append((k, v))

    def append(self, v):
        self.items.append(v)

    def extend(self, vs):
        self.items.extend(vs)


class Oracle(pickle.Unpickler):
    def __init__(self, f):
        super().__init__(f, encoding="utf-8")   # what torch.load passes
        self.placeholders = set()

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor", "_rebuild_parameter"):
            return lambda *a: ("tensor", name) + a
        if module == "torch" and name in STORAGES:
            return "torch." + name
        self.placeholders.add(module + "." + name)
        return type(name, (Stub,), {"qualname": module + "." + name, "__module__": module})

    def persistent_load(self, pid):
        return ("storage",) + tuple(pid[1:])


def legacy_pickles(data):
    """The five pickles of a legacy file, each read by the oracle, and the offset after them."""
    import io
    f = io.BytesIO(data)
    out = []
    for _ in range(5):
        u = Oracle(f)
        out.append((u.load(), u))
    return out, f.tell()


def expected_tensors(legacy, obj):
    """Every tensor of the state dict Python decoded, with the values its view selects."""
    def find(d):
        if isinstance(d, dict) and d and all(isinstance(v, tuple) and v[:1] == ("tensor",) for v in d.values()):
            return d
        if isinstance(d, dict) and isinstance(d.get("state_dict"), dict):
            return find(d["state_dict"])
        raise ValueError("no state dict")
    out = []
    for name, t in find(obj).items():
        _, fn, storage, offset, size, stride = t[:6]
        _, cls, key, location, numel, view = storage
        scls, values = legacy.storages[key]
        assert cls == "torch." + scls and numel == len(values)
        n = 1
        for s in size:
            n *= s
        vals = []
        for flat in range(n):
            idx, rem = offset, flat
            for s, st in zip(reversed(size), reversed(stride)):
                idx += (rem % s) * st
                rem //= s
            vals.append(values[idx])
        dtype = STORAGES[scls][1]
        if dtype == "f16":   # as Python reads the stored half back
            vals = [struct.unpack("<e", struct.pack("<e", v))[0] for v in vals]
        if dtype == "f32":
            vals = [struct.unpack("<f", struct.pack("<f", v))[0] for v in vals]
        if dtype == "bool":
            vals = [1 if v else 0 for v in vals]
        out.append({"name": name, "dtype": dtype, "shape": list(size), "location": location, "values": vals})
    return out


def jsonable(v, path=()):
    """Python's decoded value as JSON, for the Swift tests to compare with what they decoded.
    A placeholder object met again inside itself (a recursive structure) is a back-reference."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return v if -2**63 <= v < 2**63 else {"bigint": str(v)}
    if isinstance(v, float):
        return {"float": struct.pack(">d", v).hex()}
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)):
        return [jsonable(x, path) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x, path) for k, x in v.items()}
    if isinstance(v, type) and issubclass(v, Stub):
        return {"class": v.qualname}
    if isinstance(v, Stub):
        if any(v is p for p in path):
            return {"backref": type(v).qualname}
        inner = path + (v,)
        return {"object": type(v).qualname, "args": jsonable(v.args, inner), "kwargs": jsonable(v.kwargs, inner),
                "state": jsonable(v.state, inner), "items": jsonable(v.items, inner),
                "entries": [[jsonable(k, inner), jsonable(x, inner)] for k, x in v.entries]}
    raise TypeError(type(v))


# ---------------------------------------------------------------------------------------------
# The cases


def case_py2_binary():
    """Like lpips weights/v0.1/alex.pth: protocol 2 under Python 2 (SHORT_BINSTRING/BINSTRING
    keys and storage names, OrderedDict([[k, v], ...]) + BUILD _metadata), 'cuda:0' locations,
    several dtypes, a shared storage, a transposed view."""
    lg = Legacy()
    lg.add("1933719376", "FloatStorage", [i * 0.25 - 1.0 for i in range(12)])
    lg.add("1917047168", "DoubleStorage", [1.0 / (i + 1) for i in range(3)])
    lg.add("1931717200", "LongStorage", [-(2**40), -1, 0, 7, 2**62])
    lg.add("1933118704", "HalfStorage", [0.5, -2.0, 65504.0, 2.0**-24])
    lg.add("1938695168", "ByteStorage", [0, 1, 127, 128, 255, 42])
    p = P()
    items = [
        ("lin0.model.1.weight", lambda p: tensor_v2(p, "FloatStorage", "1933719376", "cuda:0", 12, 0, [1, 6, 1, 1], [6, 1, 1, 1])),
        ("lin1.model.1.weight", lambda p: tensor_v2(p, "FloatStorage", "1933719376", "cuda:0", 12, 6, [3, 2], [1, 3])),   # transposed, shared
        ("lin2.model.1.weight", lambda p: tensor_v2(p, "DoubleStorage", "1917047168", "cuda:0", 3, 0, [3], [1])),
        ("num_batches_tracked", lambda p: tensor_v2(p, "LongStorage", "1931717200", "cuda:1", 5, 0, [5], [1])),
        ("half", lambda p: tensor_v2(p, "HalfStorage", "1933118704", "cpu", 4, 0, [2, 2], [2, 1])),
        ("bytes", lambda p: tensor_v2(p, "ByteStorage", "1938695168", "cpu", 6, 0, [2, 3], [3, 1])),
    ]
    # BINSTRING (4-byte length) for one key: Python 2 writes it for strings of 256 bytes or more
    items.append(("lin3.bias", lambda p: tensor_v2(p, "FloatStorage", "1933719376", "cuda:0", 12, 11, [1], [1])))
    p.global_("collections", "OrderedDict").binput(1).empty_list().binput(2).mark()
    for k, write in items:
        p.empty_list().mark()
        (p.binstring(k) if k == "lin3.bias" else p.short_binstring(k))
        write(p)
        p.appends()
    p.appends().tuple1().reduce().binput(3)
    p.empty_dict().short_binstring("_metadata").binget(1).empty_list().mark()
    for prefix in ["", "lin0", "lin0.model"]:
        p.empty_list().mark().short_binstring(prefix).empty_dict().short_binstring("version").binint(1).setitem().appends()
    p.appends().tuple1().reduce().setitem().build().stop()
    return lg, lg.file(p.bytes())


def case_py2_text():
    """Protocol 0 opcodes throughout (as Python 2's pickle.dump(obj, f, 0) writes them): STRING
    with escapes, UNICODE, INT (with 01/00 booleans), LONG, FLOAT, PUT/GET, DICT, LIST, TUPLE,
    MARK, and TUPLE-based REDUCE arguments."""
    lg = Legacy()
    lg.add("0", "FloatStorage", [1.5, -2.25, 3.0, 0.125])
    lg.add("1", "IntStorage", [10, -20, 30])
    p = P(None)
    p.mark().dict_().put(0)
    # state_dict: OrderedDict([['w', tensor], ...]) in protocol 0
    p.string_text(py2_repr(b"state_dict")).put(1)
    p.global_("collections", "OrderedDict").put(2).mark().mark().list_().put(3)

    def tensor_text(p, key_repr, cls, key, numel, offset, size, stride, memo):
        p.mark().list_().put(memo).string_text(key_repr).put(memo + 1).append()
        p.global_("torch._utils", "_rebuild_tensor_v2").put(memo + 2).mark()
        p.mark().string_text(py2_repr(b"storage")).put(memo + 3).global_("torch", cls).put(memo + 4)
        p.string_text(py2_repr(key.encode())).put(memo + 5).string_text(py2_repr(b"cpu")).put(memo + 6)
        p.long_text(numel).raw(0x4E).tuple().put(memo + 7).binpersid()
        p.int_text(offset).mark()
        for s in size:
            p.int_text(s)
        p.tuple().mark()
        for s in stride:
            p.int_text(s)
        p.tuple().int_text(False).raw(0x4E).tuple().reduce().put(memo + 8).append()
        p.append()   # the [key, tensor] pair into the item list

    tensor_text(p, py2_repr("caf\u00e9.w\u00e8ight".encode("utf-8")), "FloatStorage", "0", 4, 0, [2, 2], [2, 1], 10)
    tensor_text(p, py2_repr(b"it's \"quoted\"\\tab\t"), "IntStorage", "1", 3, 1, [2], [1], 20)
    p.tuple().reduce().put(30).setitem()
    # meta: the other text forms, checked value by value at the pickle level
    p.string_text(py2_repr(b"meta")).put(40).mark().dict_().put(41)
    p.string_text(py2_repr(b"float")).float_text(0.1).setitem()
    p.string_text(py2_repr(b"neg_exp")).float_text(-1.5e-300).setitem()
    p.string_text(py2_repr(b"inf")).text(b"F", "inf").setitem()
    p.string_text(py2_repr(b"long")).long_text(-(2**80) - 12345).setitem()
    p.string_text(py2_repr(b"small_long")).long_text(42).setitem()
    p.string_text(py2_repr(b"true")).int_text(True).setitem()
    p.string_text(py2_repr(b"false")).int_text(False).setitem()
    p.string_text(py2_repr(b"int")).int_text(-7).setitem()
    p.string_text(py2_repr(b"escapes")).string_text(b"'a\\x41\\101\\n\\q\\\\'").setitem()
    p.string_text(py2_repr(b"unicode")).unicode_text(py2_raw_unicode("\u00e9\u4e2d\U0001f600 back\\slash\nnl")).put(42).setitem()
    p.string_text(py2_repr(b"again")).get(42).setitem()
    p.string_text(py2_repr(b"tuple")).mark().int_text(1).string_text(py2_repr(b"two")).tuple().setitem()
    p.string_text(py2_repr(b"list")).mark().list_().int_text(3).append().int_text(4).append().setitem()
    p.setitem().stop()
    return lg, lg.file(p.bytes(), text=True)


def case_lightning_like():
    """A Lightning-like checkpoint: 'state_dict' plus 'hyper_parameters' holding objects of
    classes that are not on the allowlist -- an omegaconf-like config built with REDUCE + BUILD
    whose child points back at it before its BUILD (as omegaconf's `_parent` does), an
    argparse.Namespace with NEWOBJ + BUILD, a dict subclass filled with SETITEMS, a list subclass
    with APPENDS, NEWOBJ_EX, and Python 2's INST/OBJ (classic classes)."""
    lg = Legacy()
    lg.add("0", "FloatStorage", [0.5, 1.5, 2.5, 3.5, 4.5, 5.5])
    p = P()
    p.empty_dict().binput(0).mark()
    p.binunicode("epoch").binint(3)
    p.binunicode("global_step").binint(120)
    p.binunicode("pytorch-lightning_version").binunicode("1.9.0")
    p.binunicode("state_dict")
    py2_ordered_dict(p, [
        ("model.w", lambda p: tensor_v2(p, "FloatStorage", "0", "cuda:0", 6, 0, [2, 2], [2, 1])),
        ("model.b", lambda p: tensor_v2(p, "FloatStorage", "0", "cuda:0", 6, 4, [2], [1])),
    ], metadata=version_metadata(["", "model"]))
    p.binunicode("hparams_name").binunicode("kwargs")
    p.binunicode("hyper_parameters").empty_dict().mark()
    # cfg: DictConfig REDUCE'd, its content node's _parent is the config itself (BINGET 10)
    # before the config's own BUILD
    p.binunicode("cfg").global_("omegaconf.dictconfig", "DictConfig").empty_tuple().reduce().binput(10)
    p.empty_dict().mark()
    p.binunicode("_parent").none()
    p.binunicode("_content").empty_dict().mark()
    p.binunicode("lr").global_("omegaconf.nodes", "AnyNode").empty_tuple().reduce().binput(11)
    p.empty_dict().mark().binunicode("_parent").binget(10).binunicode("_val").binfloat(0.001).setitems().build()
    p.binunicode("name").global_("omegaconf.nodes", "AnyNode").empty_tuple().reduce()
    p.empty_dict().mark().binunicode("_parent").binget(10).binunicode("_val").binunicode("clip").setitems().build()
    p.setitems()
    p.setitems().build()
    # args: argparse.Namespace via NEWOBJ + BUILD, as copyreg.__reduce_ex__(2) pickles it
    p.binunicode("args").global_("argparse", "Namespace").binput(12).empty_tuple().newobj()
    p.empty_dict().mark().binunicode("batch_size").binint(32).binunicode("amp").true().setitems().build()
    # attr: a dict subclass (Lightning's AttributeDict) filled with SETITEMS
    p.binunicode("attr").global_("lightning.fabric.utilities.data", "AttributeDict").empty_tuple().newobj()
    p.mark().binunicode("lr").binfloat(0.01).binunicode("depth").binint(4).setitems()
    # layers: a list subclass filled with APPENDS, with BUILD state as well
    p.binunicode("layers").global_("omegaconf.listconfig", "ListConfig").empty_tuple().newobj()
    p.mark().binint(1).binint(2).appends().empty_dict().binunicode("_parent").none().setitem().build()
    # ex: NEWOBJ_EX with keyword arguments
    p.binunicode("ex").global_("mypkg.config", "Frozen").empty_tuple().empty_dict().binunicode("seed").binint(7).setitem().newobj_ex()
    # classic: INST and OBJ (Python 2 classic classes)
    p.binunicode("classic_inst").mark().short_binstring("a").inst("oldcfg", "Options").empty_dict().short_binstring("x").binint(1).setitem().build()
    p.binunicode("classic_obj").mark().global_("oldcfg", "Options").short_binstring("b").obj()
    # class references never instantiated
    p.binunicode("optimizer").global_("torch.optim.adamw", "AdamW")
    p.binunicode("dtype_ref").global_("__builtin__", "dict")
    p.setitems()
    p.setitems().stop()
    return lg, lg.file(p.bytes())


def hostile(obj_pickle, storages=()):
    lg = Legacy()
    for key, cls, values in storages:
        lg.add(key, cls, values)
    return lg.file(obj_pickle)


def case_placeholder_storage():
    """_rebuild_tensor_v2 whose storage argument is a placeholder object, not a persistent id."""
    p = P().empty_dict().short_binstring("w").global_("torch._utils", "_rebuild_tensor_v2").mark()
    p.global_("mymod", "FakeStorage").empty_tuple().reduce()
    p.binint(0).mark().binint(2).tuple().mark().binint(1).tuple().false().none().tuple().reduce().setitem().stop()
    return hostile(p.bytes()), "disallowedGlobal"


def case_placeholder_pid_type():
    """A persistent id whose storage type is a placeholder class."""
    p = P().empty_dict().short_binstring("w").global_("torch._utils", "_rebuild_tensor_v2").mark()
    p.mark().short_binstring("storage").global_("mymod", "EvilStorage").short_binstring("0").short_binstring("cpu").long1(2).none().tuple().binpersid()
    p.binint(0).mark().binint(2).tuple().mark().binint(1).tuple().false().none().tuple().reduce().setitem().stop()
    return hostile(p.bytes(), [("0", "FloatStorage", [1.0, 2.0])]), "disallowedGlobal"


def case_deep_placeholders():
    """150 placeholder objects, each the BUILD state of the one before: past the nesting cap."""
    p = P().empty_dict().short_binstring("state_dict").empty_dict().short_binstring("hp")
    p.global_("mymod", "Node").binput(0).pop()
    for _ in range(150):
        p.binget(0).empty_tuple().newobj()
    for _ in range(149):
        p.build()
    p.setitem().setitem().stop()
    return hostile(p.bytes()), "limitExceeded"


def case_placeholder_top():
    """The object pickle's top level is a placeholder (a whole pickled object), not a dict."""
    p = P().global_("mypkg.models", "Net").empty_tuple().newobj().empty_dict().short_binstring("training").true().setitem().build().stop()
    return hostile(p.bytes()), "noStateDict"


def case_main_top():
    """A whole pickled model of a class from __main__: named as such."""
    p = P().global_("__main__", "Net").empty_tuple().newobj().empty_dict().build().stop()
    return hostile(p.bytes()), "wholeModule"


def case_py2_eval():
    """Python 2 spelling of a code-execution global: refused outright, never a placeholder."""
    p = P().empty_dict().short_binstring("x").global_("__builtin__", "eval").short_binstring("1+1").tuple1().reduce().setitem().stop()
    return hostile(p.bytes()), "disallowedGlobal"


def case_py2_not_utf8():
    """A Python 2 str that is Latin-1, not UTF-8: torch.load (encoding='utf-8') fails on it too."""
    p = P().empty_dict().short_binstring(b"caf\xe9").none().setitem().stop()
    return hostile(p.bytes()), "malformedPickle"


def case_shared_doubling():
    """Tuples of two references to the previous one, 40 deep: 2^40 values walked as a tree."""
    p = P().empty_dict().short_binstring("state_dict").empty_dict().short_binstring("t").none()
    for i in range(40):
        p.binput(0).binget(0).tuple2()
    p.setitem().setitem().stop()
    return hostile(p.bytes()), "limitExceeded"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "cases", "pickle"))
    ap.add_argument("--fuzz-seeds", default=os.path.join(HERE, "fuzz", "pickle"),
                    help="where the cases' pickles go as fuzz seeds ('' for none)")
    args = ap.parse_args()
    out, seeds = args.out, args.fuzz_seeds
    # escape_decode warns about the unknown escape '\\q' that one STRING case keeps on purpose
    warnings.simplefilter("ignore", DeprecationWarning)
    os.makedirs(out, exist_ok=True)
    expected = {"generator": "golden/generate_pickle_cases.py", "python": sys.version.split()[0], "cases": {}}

    for name, make in [("py2_binary.pt", case_py2_binary), ("py2_text.pt", case_py2_text),
                       ("lightning_like.pt", case_lightning_like)]:
        lg, data = make()
        pickles, end = legacy_pickles(data)
        assert pickles[0][0] == MAGIC and pickles[1][0] == 1001, name
        assert pickles[4][0] == list(lg.storages), name
        # the raw storages follow, in key-list order
        pos = end
        for key, (cls, values) in lg.storages.items():
            assert struct.unpack_from("<q", data, pos)[0] == len(values)
            pos += 8 + len(values) * struct.calcsize(STORAGES[cls][0])
        assert pos == len(data), name
        obj, oracle = pickles[3]
        case = {"tensors": expected_tensors(lg, obj), "placeholders": sorted(oracle.placeholders),
                "sys_info": jsonable(pickles[2][0])}
        if isinstance(obj, dict) and "meta" in obj:
            case["meta"] = jsonable(obj["meta"])
        if isinstance(obj, dict) and "hyper_parameters" in obj:
            case["hyper_parameters"] = {k: jsonable(v) for k, v in obj["hyper_parameters"].items()}
            cfg = obj["hyper_parameters"]["cfg"]
            assert cfg.state["_content"]["lr"].state["_parent"] is cfg   # the back-reference is real
        expected["cases"][name] = case
        open(os.path.join(out, name), "wb").write(data)

    for name, make in [("hostile_placeholder_storage.pt", case_placeholder_storage),
                       ("hostile_placeholder_pid_type.pt", case_placeholder_pid_type),
                       ("hostile_deep_placeholders.pt", case_deep_placeholders),
                       ("hostile_placeholder_top.pt", case_placeholder_top),
                       ("hostile_main_top.pt", case_main_top),
                       ("hostile_py2_eval.pt", case_py2_eval),
                       ("hostile_py2_not_utf8.pt", case_py2_not_utf8),
                       ("hostile_shared_doubling.pt", case_shared_doubling)]:
        data, code = make()
        expected["cases"][name] = {"error": code, "doc": make.__doc__.strip()}
        open(os.path.join(out, name), "wb").write(data)

    if seeds:   # every distinct pickle of every case, one per file: seeds for `scripts/fuzz pickle`
        os.makedirs(seeds, exist_ok=True)
        import hashlib
        import io
        import pickletools
        written = set()
        for name in sorted(expected["cases"]):
            data = open(os.path.join(out, name), "rb").read()
            f = io.BytesIO(data)
            for i in range(5):
                start = f.tell()
                try:
                    for _ in pickletools.genops(f):
                        pass
                except Exception:
                    break
                one = data[start:f.tell()]
                digest = hashlib.sha1(one).hexdigest()[:12]
                if digest not in written:
                    written.add(digest)
                    open(os.path.join(seeds, "seed-%s-%d-%s" % (name[:-3], i, digest)), "wb").write(one)
        print(f"wrote {len(written)} fuzz seeds to {seeds}")

    with open(os.path.join(out, "expected.json"), "w") as f:   # one line per case
        compact = lambda v: json.dumps(v, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
        f.write("{\"generator\":%s,\"python\":%s,\"cases\":{\n" % (compact(expected["generator"]), compact(expected["python"])))
        f.write(",\n".join("%s:%s" % (compact(k), compact(v)) for k, v in sorted(expected["cases"].items())))
        f.write("\n}}\n")
    total = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
    print(f"wrote {len(expected['cases'])} cases to {out} ({total} bytes)")


if __name__ == "__main__":
    main()
