"""Write a compiled model's simulate() inputs to files for the Rust-level benchmark (rust/examples/simbench.rs).

usage: python bench/dump_case.py MODEL OUT
  MODEL: MLP sizes `784,300,10`, `bert:LAYERS,HIDDEN,HEADS,SEQ`, `light:NAME` (onnx's light_NAME.onnx) or a path
  to an .onnx file.
writes <OUT>.prog (program binary), <OUT>.mem (mem_init images) and <OUT>.cfg (chip JSON).
"""
import os
import struct
import sys

import lpusim
from lpusim.models import bert_encoder, mlp


def load(spec: str):
    if spec.startswith("bert:"):
        layers, hidden, heads, seq = (int(v) for v in spec[5:].split(","))
        return bert_encoder(layers=layers, hidden=hidden, heads=heads, seq=seq)
    if spec.startswith("light:"):
        import onnx
        return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                            f"light_{spec[6:]}.onnx")
    if spec.endswith(".onnx"):
        return spec
    return mlp(tuple(int(s) for s in spec.split(",")), seed=0)


def main():
    out = sys.argv[2]
    p = lpusim.compile(load(sys.argv[1]))
    mem, dumps = p._mem_image(p.random_inputs(0))
    with open(out + ".prog", "wb") as f:
        f.write(p._binary)
    with open(out + ".cfg", "w") as f:
        f.write(p.chip.to_json())
    with open(out + ".mem", "wb") as f:
        f.write(struct.pack("<II", len(mem), len(dumps)))
        for slice_, addr, arr in mem:
            f.write(struct.pack("<III", slice_, addr, arr.shape[0]))
            f.write(arr.tobytes())
        for d in dumps:
            f.write(struct.pack("<III", *d))


if __name__ == "__main__":
    main()
