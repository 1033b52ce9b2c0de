"""Did a change alter what the compiler emits? Compile a fixed set of models and print one line per model: its
name, the sha256 (first 16 hex digits) of its assembly (each chip's, for several chips), the predicted cycles, and
the sha256 of its constant SRAM image. Uses the public API only (`lpusim.compile`, `Program.assembly`), so the same
script runs on the code before and after a change; diff the two outputs' first four columns (the last, wall time,
always differs).

    python tools/asm_digests.py [--only SUBSTRING] > digests.txt

The set: MLPs (fp16, int8, two chips pipelined and tensor-parallel), a small BERT encoder, onnx's light_* CNNs
(chips="auto": VGG-19, AlexNet and ZFNet take several chips), and torch exports (ResNet-18, MobileNetV2, 2-layer
and full-size BERT and GPT-2) in fp16 and int8, when torch, torchvision and transformers are installed. The exports
(random weights, seeded) are written once to $LPUSIM_MODEL_CACHE (default ~/.cache/lpusim/models) so that runs
before and after a change compare the same ONNX files: a new torch or transformers version exports different
graphs. Takes about 5 minutes on 2 cores with the cache filled.
"""
import hashlib
import os
import sys
import time

import numpy as np
import onnx
import lpusim
from lpusim.models import mlp, bert_encoder

MODELS = os.environ.get("LPUSIM_MODEL_CACHE", os.path.expanduser("~/.cache/lpusim/models"))


def light(name):
    return onnx.load(os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", f"light_{name}.onnx"))


def torch_model(name):
    path = os.path.join(MODELS, name + ".onnx")
    if not os.path.exists(path):
        os.makedirs(MODELS, exist_ok=True)
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
        from torch_int8 import export  # bench/torch_int8.py: the exports its int8 measurements use
        export(name, path)
    return onnx.load(path)


def image_digest(p):
    h = hashlib.sha256()
    stages = getattr(p, "stages", None) or [p]
    for s in stages:
        sched = s._schedule
        for entry in sched.static_init:
            sl, addr, arr = entry
            h.update(f"{sl},{addr}".encode()); h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


CASES = []


def case(name, fn, **kw):
    CASES.append((name, fn, kw))

case("mlp_784_300_10", lambda: mlp((784, 300, 10)))
case("mlp_784_300_10_int8", lambda: mlp((784, 300, 10)), precision="int8")
case("mlp_b8_matmul", lambda: mlp((256, 512, 512, 64), batch=8, use_gemm=False))
case("mlp_big_2chips", lambda: mlp((1024, 4096, 4096, 1024), batch=4), chips=2)
case("mlp_big_tensor2", lambda: mlp((1024, 4096, 4096, 1024), batch=4), chips=2, parallel="tensor")
case("bert_enc_small", lambda: bert_encoder(layers=2, hidden=128, heads=2, seq=16))
for n in ["resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet", "squeezenet", "vgg19",
          "bvlc_alexnet", "zfnet512"]:
    case(f"light_{n}", (lambda n=n: light(n)), chips="auto")
TORCH = ["resnet18", "mobilenet_v2", "bert_2layer", "gpt2_2layer", "bert_base", "gpt2_small"]
for n in TORCH:
    case(f"torch_{n}_int8", (lambda n=n: torch_model(n)), precision="int8")
for n, chips in [("resnet18", 1), ("mobilenet_v2", 1), ("bert_2layer", 1), ("gpt2_2layer", 1), ("bert_base", 1),
                 ("gpt2_small", 2)]:
    case(f"torch_{n}_fp16", (lambda n=n: torch_model(n)), chips=chips)


def have_torch() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) for m in ("torch", "torchvision", "transformers"))


def main(argv):
    only = argv[argv.index("--only") + 1] if "--only" in argv else None
    for name, fn, kw in CASES:
        if only and only not in name:
            continue
        if name.startswith("torch_") and not have_torch():
            print(f"{name}\tSKIPPED (needs torch, torchvision, transformers)", flush=True)
            continue
        t = time.perf_counter()
        try:
            p = lpusim.compile(fn(), **kw)
        except lpusim.LpusimError as e:
            print(f"{name}\tERROR {type(e).__name__}: {e}", flush=True)
            continue
        asm = p.assembly if isinstance(p.assembly, list) else [p.assembly]
        digests = ",".join(hashlib.sha256(a.encode()).hexdigest()[:16] for a in asm)
        print(f"{name}\t{digests}\tpred={p.predicted_cycles}\timg={image_digest(p)}\t# {time.perf_counter() - t:.1f}s",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
