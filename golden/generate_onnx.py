#!/usr/bin/env python3
"""Exports a liteCLIP checkpoint to ONNX with both of PyTorch's exporters, as users do:
`torch.onnx.export(..., dynamo=False)` (TorchScript: transposed MatMul weights under generated
names, gamma reshaped, identical tensors de-duplicated) and `dynamo=True, optimize=False`
(parameter names kept under the wrapper's prefix, weights in external data), and
`dynamo=True` with its default optimize=True, which folds the position/token-type embedding
lookups for the example's sequence length (rows of those parameters are lost) and
logit_scale.exp(): liteclip-convert refuses that file unless given --allow-partial.

    python golden/generate_onnx.py                       # golden/liteclip2.pt -> golden/onnx/
    python golden/generate_onnx.py --checkpoint golden/full/liteclip2.pt --out golden/full/onnx

The exported graph maps (pixel_values, input_ids, attention_mask) to logits_per_image through
the seed's CLIP held as attribute `m` of a wrapper module (so names carry an `m.` prefix).
"""
import argparse, os, sys, warnings

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import make_reference as mr  # noqa: E402


class Export(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, pixel_values, input_ids, attention_mask):
        m = self.m
        img = m.img_projection(m.image_encoder(pixel_values))
        img = img / img.norm(dim=1, keepdim=True)
        txt = m.txt_projection(m.text_encoder({"input_ids": input_ids, "attention_mask": attention_mask,
                                               "token_type_ids": torch.zeros_like(input_ids)}))
        txt = txt / txt.norm(dim=1, keepdim=True)
        return m.logit_scale.exp() * img @ txt.T


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=os.path.join(here, "liteclip2.pt"))
    ap.add_argument("--text-config", default=None, help="BERT config.json (default: beside the checkpoint)")
    ap.add_argument("--out", default=os.path.join(here, "onnx"))
    a = ap.parse_args()
    torch.manual_seed(0)
    sd = mr.state_dict_of(torch.load(a.checkpoint, map_location="cpu", weights_only=True))
    model, _ = mr.build(sd, a.text_config or os.path.join(os.path.dirname(a.checkpoint), "config.json"))
    w = Export(model).eval()
    args = (torch.zeros(1, 3, 224, 224), torch.ones(2, 128, dtype=torch.long), torch.ones(2, 128, dtype=torch.long))
    names = dict(input_names=["pixel_values", "input_ids", "attention_mask"], output_names=["logits_per_image"])
    os.makedirs(a.out, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(w, args, os.path.join(a.out, "liteclip2_torchscript.onnx"), dynamo=False, **names)
        # optimize=False: the default optimisation folds the position/token-type embedding
        # lookups for the example's sequence length, which loses rows of those parameters.
        torch.onnx.export(w, args, os.path.join(a.out, "liteclip2_dynamo.onnx"), dynamo=True, external_data=True,
                          optimize=False, **names)
        torch.onnx.export(w, args, os.path.join(a.out, "liteclip2_dynamo_optimized.onnx"), dynamo=True,
                          external_data=True, **names)
    # The dynamo exporter records Python stack traces with absolute paths in node metadata;
    # drop them so that regenerating on another machine gives the same bytes.
    import onnx
    for name in ("liteclip2_dynamo.onnx", "liteclip2_dynamo_optimized.onnx"):
        path = os.path.join(a.out, name)
        model = onnx.load(path, load_external_data=False)
        for node in model.graph.node:
            keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
        onnx.save(model, path)
    for f in sorted(os.listdir(a.out)):
        print(f, os.path.getsize(os.path.join(a.out, f)))


if __name__ == "__main__":
    main()
