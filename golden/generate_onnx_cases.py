"""Writes the ONNX test models in golden/onnx_cases/ and their manifest.

Run with the project's venv (onnx 1.23, numpy): /work/venv/bin/python golden/generate_onnx_cases.py
Deterministic (fixed values, no randomness, no network). Read by Tests/TensorIOTests/ONNXReaderTests.swift;
what each hostile file checks is listed in HOSTILE below and in formats/onnx.md.

manifest.json: for every valid model, each top-level initializer's name, dtype, shape and the SHA-256
of its contiguous little-endian bytes as onnx.numpy_helper.to_array(...).tobytes() gives them
(float16 / bfloat16 as their raw 16-bit patterns).
"""

import hashlib
import json
import os
import shutil

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onnx_cases")
HOSTILE = os.path.join(OUT, "hostile")

DTYPE_NAMES = {
    TensorProto.FLOAT: "f32", TensorProto.UINT8: "u8", TensorProto.INT8: "i8", TensorProto.INT16: "i16",
    TensorProto.INT32: "i32", TensorProto.INT64: "i64", TensorProto.BOOL: "bool", TensorProto.FLOAT16: "f16",
    TensorProto.DOUBLE: "f64", TensorProto.BFLOAT16: "bf16",
}


def bf16_bits(values):
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (uint16)."""
    f = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (f + 0x7FFF + ((f >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def raw_tensor(name, data_type, array):
    t = TensorProto()
    t.name = name
    t.data_type = data_type
    t.dims.extend(array.shape)
    t.raw_data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    return t


# One array per supported dtype: (name, onnx type, numpy array of the stored bits).
def dtype_arrays():
    return [
        ("w_f32", TensorProto.FLOAT, np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5 - 1.0),
        ("w_u8", TensorProto.UINT8, np.array([0, 1, 127, 255], dtype=np.uint8)),
        ("w_i8", TensorProto.INT8, np.array([-128, -1, 0, 127], dtype=np.int8)),
        ("w_i16", TensorProto.INT16, np.array([[-32768, -2], [3, 32767]], dtype=np.int16)),
        ("w_i32", TensorProto.INT32, np.array([-2147483648, 7, 2147483647], dtype=np.int32)),
        ("w_i64", TensorProto.INT64, np.array([-(2 ** 63), 2 ** 40 + 3], dtype=np.int64)),
        ("w_bool", TensorProto.BOOL, np.array([True, False, True], dtype=np.bool_)),
        ("w_f16", TensorProto.FLOAT16, np.array([[1.0, -2.5], [65504.0, 0.000061035156]], dtype=np.float16)),
        ("w_f64", TensorProto.DOUBLE, np.array([3.141592653589793, -1e300], dtype=np.float64)),
        ("w_bf16", TensorProto.BFLOAT16, bf16_bits([1.0, -3.5, 1e30])),
        ("w_scalar", TensorProto.FLOAT, np.array(42.25, dtype=np.float32)),
        ("w_empty", TensorProto.FLOAT, np.zeros((0, 3), dtype=np.float32)),
    ]


def typed_tensor(name, data_type, array):
    """The same values stored in ONNX's typed repeated fields instead of raw_data."""
    t = TensorProto()
    t.name = name
    t.data_type = data_type
    t.dims.extend(array.shape)
    flat = array.reshape(-1)
    if data_type == TensorProto.FLOAT:
        t.float_data.extend(flat.tolist())
    elif data_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
        t.int32_data.extend(flat.view(np.uint16).astype(np.int32).tolist())  # bit patterns, low 16 bits
    elif data_type in (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.BOOL):
        t.int32_data.extend(flat.astype(np.int32).tolist())
    elif data_type == TensorProto.INT64:
        t.int64_data.extend(flat.tolist())
    elif data_type == TensorProto.DOUBLE:
        t.double_data.extend(flat.tolist())
    else:
        raise ValueError(data_type)
    return t


def graph_nodes():
    """A few nodes exercising every attribute kind the reader decodes."""
    const = helper.make_node("Constant", [], ["c0"], name="const0",
                             value=helper.make_tensor("c0_value", TensorProto.FLOAT, [2], [1.5, -2.0]))
    gemm = helper.make_node("Gemm", ["x", "w_f32", "c0"], ["y"], name="/m/fc1/Gemm", alpha=0.25, transB=1)
    p = gemm.metadata_props.add()
    p.key, p.value = "pkg.torch.onnx.name_scopes", "['', 'm', 'm.fc1']"
    custom = helper.make_node("Custom", ["y"], ["z"], name="custom0", domain="com.example",
                              ints=[1, -2, 3], floats=[0.5, 2.0], strings=["a", "bc"], mode="fast")
    return [const, gemm, custom]


def model(initializers, nodes=None, name="golden"):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 3])
    g = helper.make_graph(nodes if nodes is not None else graph_nodes(), name, [x], [z], initializer=initializers)
    m = helper.make_model(g, producer_name="liteclip-golden", producer_version="1.0",
                          opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    m.ir_version = 8
    return m


def save(m, rel):
    path = os.path.join(OUT, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(m.SerializeToString(deterministic=True))
    return path


def describe(path):
    """Manifest entry: every initializer as onnx itself decodes it."""
    m = onnx.load(path, load_external_data=False)
    base = os.path.dirname(path)
    out = []
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t, base_dir=base)
        out.append({"name": t.name, "dtype": DTYPE_NAMES[t.data_type], "shape": list(a.shape),
                    "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()})
    return {"tensors": out, "nodes": len(m.graph.node)}


def external(t, location, offset=None, length=None):
    """Marks `t` as stored externally (its payload is written by the caller)."""
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    entries = [("location", location)]
    if offset is not None:
        entries.append(("offset", str(offset)))
    if length is not None:
        entries.append(("length", str(length)))
    for k, v in entries:
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number, payload):
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def nested_graph_model(depth):
    """`depth` GraphProtos nested through If-node `then_branch` attributes (the top graph counts as 1).

    Encoded by hand: Python's protobuf refuses to build messages nested this deep."""
    graph = _field(2, b"g%d" % depth)  # GraphProto.name
    for d in range(depth - 1, 0, -1):
        attribute = _field(1, b"then_branch") + _varint(20 << 3) + _varint(5) + _field(6, graph)  # name, type=GRAPH, g
        node = _field(4, b"If") + _field(5, attribute) + _field(1, b"cond")  # op_type, attribute, input
        graph = _field(1, node) + _field(2, b"g%d" % d)  # node, name
    opset = _field(1, b"") + _varint(2 << 3) + _varint(17)
    return _varint(1 << 3) + _varint(8) + _field(8, opset) + _field(7, graph)  # ir_version, opset_import, graph


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(HOSTILE)
    manifest = {}

    # Valid: every dtype in raw_data, then the same values in typed fields.
    arrays = dtype_arrays()
    p = save(model([raw_tensor(n, dt, a) for n, dt, a in arrays]), "dtypes_raw.onnx")
    manifest["dtypes_raw.onnx"] = describe(p)
    typed = [typed_tensor(n, dt, a) for n, dt, a in arrays if n not in ("w_u8", "w_i8")]
    # u8 / i8 / bool / i16 / i32 / f16 / bf16 all travel in int32_data; keep u8 and i8 too.
    typed += [typed_tensor("w_u8", TensorProto.UINT8, arrays[1][2]), typed_tensor("w_i8", TensorProto.INT8, arrays[2][2])]
    p = save(model(typed), "dtypes_typed.onnx")
    manifest["dtypes_typed.onnx"] = describe(p)

    # Valid: external data, two tensors in one file at aligned offsets, one tensor inline.
    a = np.arange(12, dtype=np.float32).reshape(3, 4) / 8
    b = np.array([[1, -2], [3, -4]], dtype=np.int64)
    blob = bytearray(a.tobytes())
    blob += b"\0" * (64 - len(blob) % 64)
    b_offset = len(blob)
    blob += b.tobytes()
    blob += b"\0" * 16  # trailing bytes are allowed: offset/length pick the slice
    os.makedirs(os.path.join(OUT, "external"), exist_ok=True)
    with open(os.path.join(OUT, "external", "model.onnx.data"), "wb") as f:
        f.write(blob)
    ext = [external(raw_tensor("enc.weight", TensorProto.FLOAT, a), "model.onnx.data", 0, a.nbytes),
           external(raw_tensor("enc.index", TensorProto.INT64, b), "model.onnx.data", b_offset, b.nbytes),
           raw_tensor("enc.bias", TensorProto.FLOAT, np.array([0.5, -0.5, 1.0], dtype=np.float32))]
    p = save(model(ext), "external/model.onnx")
    manifest["external/model.onnx"] = describe(p)

    # Hostile files, all next to hostile/weights.data (256 bytes).
    with open(os.path.join(HOSTILE, "weights.data"), "wb") as f:
        f.write(bytes(range(256)))
    f4 = np.zeros((2, 2), dtype=np.float32)  # 16 bytes

    def ext_case(rel, location, offset=0, length=16):
        save(model([external(raw_tensor("t", TensorProto.FLOAT, f4), location, offset, length)]), "hostile/" + rel)

    ext_case("ext_parent.onnx", "../x")
    ext_case("ext_absolute.onnx", "/etc/passwd")
    ext_case("ext_inner_dotdot.onnx", "a/../../x")
    ext_case("ext_symlink.onnx", "link.data")          # the test makes link.data a symlink at runtime
    ext_case("ext_symlink_dir.onnx", "linkdir/weights.data")  # ... and linkdir a symlinked folder
    ext_case("ext_directory.onnx", ".")                # not a regular file
    ext_case("ext_missing.onnx", "nope.data")
    ext_case("ext_offset_past_eof.onnx", "weights.data", offset=300, length=16)
    ext_case("ext_range_past_eof.onnx", "weights.data", offset=248, length=16)
    ext_case("ext_length_mismatch.onnx", "weights.data", offset=0, length=12)
    ext_case("ext_negative_offset.onnx", "weights.data", offset=-16)
    ext_case("ext_nonnumeric_length.onnx", "weights.data", length="16abc")
    ext_case("ext_no_length_mismatch.onnx", "weights.data", offset=0, length=None)  # to EOF: 256 != 16
    t = external(raw_tensor("t", TensorProto.FLOAT, f4), "weights.data", 0, 16)
    t.raw_data = f4.tobytes()
    save(model([t]), "hostile/ext_and_raw.onnx")

    t = raw_tensor("t", TensorProto.FLOAT, f4)
    t.raw_data = t.raw_data[:-4]
    save(model([t]), "hostile/raw_size_mismatch.onnx")
    t = raw_tensor("t", TensorProto.FLOAT, f4)
    t.float_data.extend([0.0] * 4)
    save(model([t]), "hostile/two_data_fields.onnx")
    t = raw_tensor("t", TensorProto.FLOAT, f4)
    t.ClearField("dims")
    t.dims.extend([-2, -2])
    save(model([t]), "hostile/negative_dim.onnx")
    t = raw_tensor("t", TensorProto.FLOAT, np.zeros(2, dtype=np.float32))
    t.data_type = TensorProto.STRING
    save(model([t]), "hostile/dtype_string.onnx")
    t = raw_tensor("t", TensorProto.FLOAT, np.zeros(2, dtype=np.float32))
    t.data_type = 100
    save(model([t]), "hostile/dtype_100.onnx")
    save(model([raw_tensor("t", TensorProto.FLOAT, f4), raw_tensor("t", TensorProto.FLOAT, f4)]),
         "hostile/duplicate_names.onnx")
    t = typed_tensor("t", TensorProto.FLOAT, f4)
    t.float_data.append(1.0)
    save(model([t]), "hostile/typed_count_mismatch.onnx")
    t = typed_tensor("t", TensorProto.INT64, np.zeros(4, dtype=np.int64))
    t.data_type = TensorProto.FLOAT
    save(model([t]), "hostile/typed_wrong_field.onnx")
    t = typed_tensor("t", TensorProto.UINT8, np.zeros(4, dtype=np.uint8))
    t.int32_data[2] = 256
    save(model([t]), "hostile/typed_out_of_range.onnx")
    t = raw_tensor("t", TensorProto.FLOAT, f4)
    t.ClearField("dims")
    t.dims.extend([2 ** 62, 2 ** 62])
    save(model([t]), "hostile/dims_overflow.onnx")

    # Graph nesting: 100 levels are read, 101 are refused.
    for depth, rel in ((100, "nest_100.onnx"), (101, "hostile/nest_101.onnx")):
        with open(os.path.join(OUT, rel), "wb") as f:
            f.write(nested_graph_model(depth))

    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
