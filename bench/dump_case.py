"""Write a compiled MLP's simulate() inputs to files for the Rust-level benchmark (rust/examples/simbench.rs).

usage: python bench/dump_case.py 784,300,10 /tmp/case_small
writes <out>.prog (program binary), <out>.mem (mem_init images) and <out>.cfg (chip JSON).
"""
import struct
import sys

import lpusim
from lpusim.models import mlp


def main():
    sizes = tuple(int(s) for s in sys.argv[1].split(","))
    out = sys.argv[2]
    p = lpusim.compile(mlp(sizes, seed=0))
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
