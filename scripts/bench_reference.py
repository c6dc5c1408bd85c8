#!/usr/bin/env python3
"""PyTorch (eager) and ONNX Runtime timings of the liteCLIP workloads of
`liteclip bench`, on the same inputs, 2 threads each. Prints one JSON object per line:
{"engine": "pytorch"|"onnxruntime", "name": ..., "seconds": best-of-N}.
Used by scripts/bench-inference; needs torch, timm, transformers (+ onnx, onnxruntime)."""
import argparse, json, os, sys, tempfile, time, warnings

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden"))
import make_reference as mr  # the seed's model definition and checkpoint loading

CAPTIONS = [
    "a black dog is running through the grass", "two children play on a sandy beach near the water",
    "a man in a red jacket climbs a steep rock face", "a girl with a pink umbrella walks down a rainy street",
    "a brown and white dog jumps over a fence", "people sit at tables outside a cafe",
    "a cyclist rides along a mountain road at sunset", "a cat sleeps on a sunny windowsill",
]


def pixels(batch, size=224):
    """The LCG of InferenceBenchmark.pixels (Sources/LiteCLIP/Benchmark.swift)."""
    n = batch * 3 * size * size
    out = np.empty(n, dtype=np.float32)
    state = 12345
    for i in range(n):
        state = (state * 1664525 + 1013904223) & 0xFFFFFFFF
        out[i] = np.float32(state >> 8) / np.float32(1 << 24) * np.float32(4) - np.float32(2)
    return torch.from_numpy(out.reshape(batch, 3, size, size))


def best(reps, fn):
    fn()
    t = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); t = min(t, time.perf_counter() - t0)
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--int8", action="store_true",
                    help="only the image tower in ONNX Runtime, f32 and dynamic int8 (quantize_dynamic, QInt8 weights)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    sd = mr.state_dict_of(torch.load(a.checkpoint, map_location="cpu", weights_only=True))
    model, _ = mr.build(sd, os.path.join(a.tokenizer, "config.json"))
    tok = mr.AutoTokenizer.from_pretrained(a.tokenizer)
    px8 = pixels(8)

    def img(x):
        e = model.img_projection(model.image_encoder(x)); return e / e.norm(dim=1, keepdim=True)

    def txt(t):
        e = model.txt_projection(model.text_encoder(t)); return e / e.norm(dim=1, keepdim=True)

    def texts(b):
        return tok([CAPTIONS[i % len(CAPTIONS)] for i in range(b)], padding="max_length", truncation=True,
                   max_length=128, return_tensors="pt")

    work = {
        "image tower, batch 1": lambda: img(px8[:1]),
        "image tower, batch 8": lambda: img(px8),
        "text tower, batch 8, length 128": (lambda t: lambda: txt(t))(texts(8)),
        "text tower, batch 64, length 128": (lambda t: lambda: txt(t))(texts(64)),
        "full forward, 3 images + 4 texts": (lambda t: lambda: model.logit_scale.exp() * img(px8[:3]) @ txt(t).T)(texts(4)),
    }
    if a.int8:
        int8_image_tower(model, img, px8)
        return
    with torch.no_grad():
        for name, fn in work.items():
            print(json.dumps({"engine": "pytorch", "name": name, "seconds": best(a.reps, fn)}), flush=True)
    if a.no_onnx:
        return
    import onnxruntime as ort

    class Img(torch.nn.Module):
        def __init__(s): super().__init__(); s.m = model
        def forward(s, x): return img(x)

    class Txt(torch.nn.Module):
        def __init__(s): super().__init__(); s.m = model
        def forward(s, ids, mask): return txt({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)})

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t8 = texts(8)
        torch.onnx.export(Img(), (px8[:1],), f"{tmp}/img.onnx", input_names=["x"], dynamic_axes={"x": {0: "b"}}, dynamo=False)
        torch.onnx.export(Txt(), (t8["input_ids"], t8["attention_mask"]), f"{tmp}/txt.onnx", input_names=["ids", "mask"],
                          dynamic_axes={"ids": {0: "b"}, "mask": {0: "b"}}, dynamo=False)
        si = ort.InferenceSession(f"{tmp}/img.onnx", opts, providers=["CPUExecutionProvider"])
        st = ort.InferenceSession(f"{tmp}/txt.onnx", opts, providers=["CPUExecutionProvider"])
        x8 = px8.numpy()

        def oimg(x): return si.run(None, {"x": x})[0]

        def otxt(t): return st.run(None, {"ids": t["input_ids"].numpy(), "mask": t["attention_mask"].numpy()})[0]

        t4, t64 = texts(4), texts(64)
        owork = {
            "image tower, batch 1": lambda: oimg(x8[:1]),
            "image tower, batch 8": lambda: oimg(x8),
            "text tower, batch 8, length 128": lambda: otxt(t8),
            "text tower, batch 64, length 128": lambda: otxt(t64),
            "full forward, 3 images + 4 texts": lambda: oimg(x8[:3]) @ otxt(t4).T,
        }
        for name, fn in owork.items():
            print(json.dumps({"engine": "onnxruntime", "name": name, "seconds": best(a.reps, fn)}), flush=True)


def int8_image_tower(model, img, px8, reps=3):
    """ONNX Runtime's image tower, f32 and dynamic int8, at batch 1 and 8; and the int8
    embeddings' minimum cosine to the f32 ones (the bar issue 15 sets: ORT's own int8)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Img(torch.nn.Module):
        def __init__(s): super().__init__(); s.m = model
        def forward(s, x): return img(x)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Img(), (px8[:1],), f"{tmp}/img.onnx", input_names=["x"], dynamic_axes={"x": {0: "b"}}, dynamo=False)
        quantize_dynamic(f"{tmp}/img.onnx", f"{tmp}/img8.onnx", weight_type=QuantType.QInt8)
        x8 = px8.numpy()
        sessions = {"onnxruntime": ort.InferenceSession(f"{tmp}/img.onnx", opts, providers=["CPUExecutionProvider"]),
                    "onnxruntime-int8": ort.InferenceSession(f"{tmp}/img8.onnx", opts, providers=["CPUExecutionProvider"])}
        for engine, sess in sessions.items():
            for name, x in [("image tower, batch 1", x8[:1]), ("image tower, batch 8", x8)]:
                print(json.dumps({"engine": engine, "name": name, "seconds": best(reps, lambda: sess.run(None, {"x": x}))}), flush=True)
        e32 = sessions["onnxruntime"].run(None, {"x": x8})[0]
        e8 = sessions["onnxruntime-int8"].run(None, {"x": x8})[0]
        cos = (e32 * e8).sum(1) / (np.linalg.norm(e32, axis=1) * np.linalg.norm(e8, axis=1))
        print(json.dumps({"engine": "onnxruntime-int8", "name": "min cosine to f32, 8 images", "value": float(cos.min())}), flush=True)


if __name__ == "__main__":
    main()
