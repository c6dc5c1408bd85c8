#!/usr/bin/env python3
"""PyTorch's training numbers for liteCLIP, for the Swift trainer to match (formats/training.md).

Two uses:

1. The committed gradient-parity fixtures (run by golden/generate.py):
       python golden/make_training.py --golden
   writes golden/training/{grads,adam,adamw_clip}.safetensors for golden/liteclip2.pt on one
   batch of the seed's 4 example photos (at 64 px, to keep the fixture small) and 4 captions,
   dropout off: the loss, the logits and the gradient of every parameter; then the losses and
   the final weights after 5 Adam steps (lr 2e-4), and after 5 AdamW steps (weight decay 0.01)
   with the gradient norm clipped to 0.5.

2. The full-size check (scripts/check-train-full), on a captions file as `liteclip train` reads it:
       python golden/make_training.py --checkpoint golden/full/liteclip2.pt --tokenizer golden/full \
           --captions captions.csv --images Images/ --batch-size 4 --steps 3 --out torch_after.safetensors
   in file order (no shuffle, no validation split), dropout off, Adam lr 2e-4: writes the
   losses and the final weights.

Everything runs in float32 on CPU with one thread (deterministic), the model in eval mode
(dropout off; liteCLIP has no batch norm, so this is training with dropout 0).
"""
import argparse, csv, json, os, sys

import torch
import torchvision.transforms as T
from torchvision.transforms import InterpolationMode
from PIL import Image
from transformers import AutoTokenizer

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import make_reference as mr  # noqa: E402


def loss_fn(model, pixels, text):
    img = model.img_projection(model.image_encoder(pixels))
    img = img / img.norm(dim=1, keepdim=True)
    txt = model.txt_projection(model.text_encoder(text))
    txt = txt / txt.norm(dim=1, keepdim=True)
    logits = model.logit_scale.exp() * img @ txt.T
    labels = torch.arange(logits.shape[0])
    loss = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
    return loss, logits


def make_optimizer(model, kind, lr, wd):
    params = [p for p in model.parameters()]
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, foreach=False)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd, foreach=False)


def train(model, batches, steps, kind="adam", lr=2e-4, wd=0.0, clip=None):
    opt = make_optimizer(model, kind, lr, wd)
    losses = []
    for i in range(steps):
        pixels, text = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model, pixels, text)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=False)
        opt.step()
        losses.append(loss.item())
    return losses


def load(checkpoint, config_json):
    sd = mr.state_dict_of(torch.load(checkpoint, map_location="cpu", weights_only=True))
    model, _ = mr.build(sd, config_json)
    # Start from the checkpoint's own values for everything (pooler included, if present).
    model.load_state_dict({k: v.float() for k, v in sd.items() if k != "text_encoder.backbone.embeddings.position_ids"}, strict=False)
    return model.eval()


def weights(model):
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def golden():
    seed = os.environ.get("LITECLIP_SEED", os.path.join(here, "..", "..", "shared", "liteclip-seed"))
    ck, cfg = os.path.join(here, "liteclip2.pt"), os.path.join(here, "config.json")
    tok = AutoTokenizer.from_pretrained(os.path.join(seed, "model"))
    tfm = T.Compose([T.Resize(64, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(64),
                     T.ToTensor(), T.Normalize(mean=mr.MEAN, std=mr.STD)])
    photos = ["cat.jpg", "car.jpg", "dancing.jpg", "catstuckindoor.jpeg"]
    captions = ["a cat sitting on a sofa", "a red car parked on the street",
                "two people dancing on a stage", "a cat stuck in a door"]
    pixels = torch.stack([tfm(Image.open(os.path.join(seed, "examples", p)).convert("RGB")) for p in photos])
    text = tok(captions, padding="max_length", truncation=True, max_length=mr.MAX_LENGTH, return_tensors="pt")
    out = os.path.join(here, "training")
    os.makedirs(out, exist_ok=True)
    batch = {"pixel_values": pixels.contiguous(), "input_ids": text["input_ids"].to(torch.int64).contiguous(),
             "attention_mask": text["attention_mask"].to(torch.int64).contiguous()}
    meta = {"format": "liteclip-training", "version": "1", "checkpoint": "liteclip2.pt", "torch": torch.__version__,
            "images": json.dumps(photos), "texts": json.dumps(captions)}

    model = load(ck, cfg)
    loss, logits = loss_fn(model, pixels, text)
    loss.backward()
    grads = {"grad." + k: p.grad.detach().contiguous() for k, p in model.named_parameters() if p.grad is not None}
    mr.write_safetensors(os.path.join(out, "grads.safetensors"),
                         {**batch, **grads, "loss": loss.detach().reshape(1), "logits_per_image": logits.detach().contiguous()},
                         {**meta, "what": "one batch, dropout off: loss, logits, gradient of every parameter the loss reaches"})

    for name, kind, wd, clip in [("adam", "adam", 0.0, None), ("adamw_clip", "adamw", 0.01, 0.5)]:
        model = load(ck, cfg)
        losses = train(model, [(pixels, text)], 5, kind=kind, wd=wd, clip=clip)
        final = {"final." + k: v for k, v in weights(model).items()}
        mr.write_safetensors(os.path.join(out, name + ".safetensors"), {**final, "losses": torch.tensor(losses)},
                             {**meta, "what": f"5 {kind} steps on the batch of grads.safetensors, lr 2e-4, weight decay {wd}, "
                                              f"clip {clip}: losses before each step and the final weights",
                              "optimizer": json.dumps({"kind": kind, "lr": 2e-4, "weight_decay": wd, "clip_norm": clip})})
        print(f"{name}: losses {losses}")
    print(f"grads: loss {loss.item()}, {len(grads)} gradients -> {out}")


def from_captions(a):
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    tfm = T.Compose([T.Resize(224, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(224),
                     T.ToTensor(), T.Normalize(mean=mr.MEAN, std=mr.STD)])
    with open(a.captions, newline="", encoding="utf-8-sig") as f:
        rows = [(r["image"], r["caption"]) for r in csv.DictReader(f)]
    batches = []
    for i in range(0, len(rows), a.batch_size):
        chunk = rows[i:i + a.batch_size]
        pixels = torch.stack([tfm(Image.open(os.path.join(a.images, im)).convert("RGB")) for im, _ in chunk])
        text = tok([c for _, c in chunk], padding="max_length", truncation=True, max_length=mr.MAX_LENGTH, return_tensors="pt")
        batches.append((pixels, text))
    model = load(a.checkpoint, a.text_config or os.path.join(a.tokenizer, "config.json"))
    losses = train(model, batches, a.steps, kind=a.optimizer, lr=a.lr, wd=a.weight_decay)
    mr.write_safetensors(a.out, {**{k: v for k, v in weights(model).items()}, "__losses__": torch.tensor(losses)},
                         {"format": "liteclip-training", "version": "1", "torch": torch.__version__})
    print(f"losses {losses} -> {a.out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--golden", action="store_true")
    ap.add_argument("--checkpoint")
    ap.add_argument("--tokenizer")
    ap.add_argument("--text-config")
    ap.add_argument("--captions")
    ap.add_argument("--images")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--optimizer", choices=["adam", "adamw"], default="adam")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    if a.golden:
        golden()
    else:
        from_captions(a)


if __name__ == "__main__":
    main()
