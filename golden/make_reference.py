#!/usr/bin/env python3
"""Write a liteCLIP reference file: PyTorch's outputs for given images and texts, for
`liteclip verify MODEL.lcw --reference REF` to compare the Swift model against.

Run it in your own PyTorch environment (torch, timm, transformers, torchvision, pillow,
safetensors) on the same checkpoint you converted:

    python golden/make_reference.py --checkpoint model/liteclip2.pt \
        --tokenizer model/ --images cat.jpg dog.jpg --texts "a photo of a cat" "a photo of a dog" \
        --out liteclip2.ref.safetensors

`--tokenizer` is the folder with the tokenizer files and the BERT config.json (the seed's
`model/` folder). The model is the seed's CLIP (shreydan/liteCLIP model.py) built at the sizes
the checkpoint's tensor shapes give, loaded with strict=True (BERT's pooler may be absent).
`--weights-dtype f16|bf16` rounds every float weight to that dtype first, to match an .lcw
converted with --dtype f16/bf16. The file format is specified in formats/reference.md.
Everything is computed in float32 on CPU, in eval mode (dropout off), deterministically.
"""
import argparse, hashlib, json, os, re, sys

import numpy as np
import torch
import torch.nn as nn
import torchvision.transforms as T
from torchvision.transforms import InterpolationMode
from PIL import Image
from transformers import AutoModel, AutoTokenizer, BertConfig
import timm

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
MAX_LENGTH = 128
NEST_KEYS = ["state_dict", "model_state_dict", "model", "module", "net", "network", "weights", "params", "ema"]
ANCHORS = ["logit_scale", "img_projection.proj.weight", "txt_projection.proj.weight",
           "image_encoder.backbone.stem.0.weight", "text_encoder.backbone.embeddings.word_embeddings.weight"]


# The seed's model (liteCLIP model.py), at any size.
class ImageEncoder(nn.Module):
    def __init__(self, dims, depths):
        super().__init__()
        self.backbone = timm.create_model("convnext_tiny", pretrained=False, num_classes=1,
                                          dims=tuple(dims), depths=tuple(depths))
        self.backbone.head.fc = nn.Identity()

    def forward(self, x):
        return self.backbone(x)


class TextEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.backbone = AutoModel.from_config(config)

    def forward(self, inputs):
        out = self.backbone(**inputs)["last_hidden_state"]
        mask = inputs["attention_mask"].unsqueeze(-1).expand(out.size()).float()
        return torch.sum(out * mask, 1) / torch.clamp(mask.sum(1), min=1e-9)


class ProjectionHead(nn.Module):
    def __init__(self, embed_dim, proj_dim):
        super().__init__()
        self.proj = nn.Linear(embed_dim, proj_dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(0.1)
        self.ln = nn.LayerNorm(proj_dim)

    def forward(self, x):
        x = self.proj(x)
        out = self.drop(self.act(x))
        return x + self.ln(out)


class CLIP(nn.Module):
    def __init__(self, dims, depths, bert, proj_dim):
        super().__init__()
        self.image_encoder = ImageEncoder(dims, depths)
        self.text_encoder = TextEncoder(bert)
        self.img_projection = ProjectionHead(dims[-1], proj_dim)
        self.txt_projection = ProjectionHead(bert.hidden_size, proj_dim)
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))


def state_dict_of(obj):
    """The tensor dict inside a torch.load result, and its key prefix removed."""
    if isinstance(obj, dict) and not all(torch.is_tensor(v) for v in obj.values()):
        for k in NEST_KEYS:
            if isinstance(obj.get(k), dict) and all(torch.is_tensor(v) for v in obj[k].values()):
                obj = obj[k]
                break
    prefix = None
    for a in ANCHORS:
        for k in obj:
            if k == a or k.endswith("." + a):
                prefix = k[: len(k) - len(a)]
                break
        if prefix is not None:
            break
    if prefix is None:
        sys.exit("not a liteCLIP checkpoint")
    return {k[len(prefix):]: v for k, v in obj.items() if k.startswith(prefix)}


def build(sd, bert_json):
    cb = "image_encoder.backbone."
    dims, depths = [], []
    while f"{cb}stages.{len(dims)}.blocks.0.conv_dw.weight" in sd:
        i = len(dims)
        dims.append(sd[f"{cb}stages.{i}.blocks.0.conv_dw.weight"].shape[0])
        depths.append(len({k.split(".")[5] for k in sd if k.startswith(f"{cb}stages.{i}.blocks.")}))
    tb = "text_encoder.backbone."
    vocab, hidden = sd[tb + "embeddings.word_embeddings.weight"].shape
    layers = len({k.split(".")[4] for k in sd if k.startswith(tb + "encoder.layer.")})
    cfg = json.load(open(bert_json)) if bert_json and os.path.exists(bert_json) else {}
    bert = BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=cfg.get("num_attention_heads", max(1, hidden // 64)),
        intermediate_size=sd[tb + "encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=sd[tb + "embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=sd[tb + "embeddings.token_type_embeddings.weight"].shape[0],
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-12), hidden_act=cfg.get("hidden_act", "gelu"))
    model = CLIP(dims, depths, bert, sd["img_projection.proj.weight"].shape[0])
    sd = {k: v for k, v in sd.items() if k != tb + "embeddings.position_ids"}
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    missing = [k for k in missing if ".pooler." not in k]
    if missing or unexpected:
        sys.exit(f"checkpoint does not fit liteCLIP: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval(), dict(dims=dims, depths=depths, hidden=hidden, layers=layers, heads=bert.num_attention_heads)


def write_safetensors(path, tensors, meta):
    """safetensors with a sorted, compact header, so regenerating gives identical bytes
    (the safetensors package orders __metadata__ differently from run to run)."""
    kinds = {torch.float32: ("F32", np.float32), torch.int64: ("I64", np.int64)}
    header, blobs, offset = {"__metadata__": meta}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        code, npt = kinds[t.dtype]
        blob = t.contiguous().numpy().astype(npt, copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--tokenizer", required=True, help="folder with vocab.txt/tokenizer.json and the BERT config.json")
    ap.add_argument("--text-config", help="BERT config.json (default: <tokenizer>/config.json)")
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--texts", nargs="+", required=True)
    ap.add_argument("--weights-dtype", choices=["f32", "f16", "bf16"], default="f32")
    ap.add_argument("--base", help="image names are recorded relative to this folder (default: the output's folder)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)   # deterministic summation order
    raw = open(a.checkpoint, "rb").read()
    sd = state_dict_of(torch.load(a.checkpoint, map_location="cpu", weights_only=True))
    if a.weights_dtype != "f32":
        dt = torch.float16 if a.weights_dtype == "f16" else torch.bfloat16
        sd = {k: (v.to(dt).float() if v.is_floating_point() else v) for k, v in sd.items()}
    model, cfg = build(sd, a.text_config or os.path.join(a.tokenizer, "config.json"))
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    tfm = T.Compose([T.Resize(224, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(224),
                     T.ToTensor(), T.Normalize(mean=MEAN, std=STD)])

    with torch.no_grad():
        pixels = torch.stack([tfm(Image.open(p).convert("RGB")) for p in a.images])
        # The seed calls batch_encode_plus, which transformers 5 folded into __call__ (same result).
        text = tok(a.texts, padding="max_length", truncation=True,
                                     max_length=MAX_LENGTH, return_tensors="pt")
        img_feat = model.image_encoder(pixels)
        txt_feat = model.text_encoder(text)
        img = model.img_projection(img_feat)
        img = img / img.norm(dim=1, keepdim=True)
        txt = model.txt_projection(txt_feat)
        txt = txt / txt.norm(dim=1, keepdim=True)
        logits = model.logit_scale.exp() * (img @ txt.t())
        probs = torch.softmax(logits, dim=1)

    base = a.base or os.path.dirname(os.path.abspath(a.out))
    meta = {
        "format": "liteclip-reference", "version": "1",
        "images": json.dumps([os.path.relpath(os.path.abspath(p), base) for p in a.images]),
        "texts": json.dumps(a.texts),
        "checkpoint": os.path.basename(a.checkpoint),
        "checkpoint_sha256": hashlib.sha256(raw).hexdigest(),
        "weights_dtype": a.weights_dtype,
        "config": json.dumps(cfg),
        "torch": torch.__version__,
        "tolerance": json.dumps({"logits_abs": 1e-4, "embeds_abs": 1e-5}),
    }
    tensors = {
        "pixel_values": pixels.contiguous(),
        "input_ids": text["input_ids"].to(torch.int64).contiguous(),
        "attention_mask": text["attention_mask"].to(torch.int64).contiguous(),
        "image_features": img_feat.contiguous(),
        "text_features": txt_feat.contiguous(),
        "image_embeds": img.contiguous(),
        "text_embeds": txt.contiguous(),
        "logits_per_image": logits.contiguous(),
        "probs_per_image": probs.contiguous(),
    }
    write_safetensors(a.out, tensors, meta)
    print(f"wrote {a.out}: {len(a.images)} images x {len(a.texts)} texts; logits[0] = {logits[0].tolist()}")


if __name__ == "__main__":
    main()
