"""Is the simulator core faster or slower than an older build? Load two builds of the extension in ONE process and
run the same compiled program on each, interleaved, so both see the same machine load; print the median wall times
and their ratio (new / old), timing-only and functional.

    python tools/compare_extension_speed.py OLD_EXTENSION.so NEW_EXTENSION.so [MODEL.onnx]

(the default model is onnx's light ResNet-50). Build the old one from an older checkout (`maturin develop -r`
there) and copy its `python/lpusim/_lpusim*.so` aside first.
"""
import importlib.machinery
import importlib.util
import os
import statistics
import sys
import time

import onnx

import lpusim


def load(path):
    """The extension module at `path`, under its own name, beside any other copy already loaded."""
    loader = importlib.machinery.ExtensionFileLoader("_lpusim", path)
    spec = importlib.util.spec_from_loader("_lpusim", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def main(argv):
    old, new = load(argv[0]), load(argv[1])
    model = argv[2] if len(argv) > 2 else os.path.join(os.path.dirname(onnx.__file__),
                                                       "backend/test/data/light/light_resnet50.onnx")
    program = lpusim.compile(onnx.load(model))
    mem, dumps = program._input_image(program.random_inputs(0))
    static = list(program._schedule.static_init)
    handles = {"old": old.LoadedProgram(program.chip.to_json(), program.assembly, static),
               "new": new.LoadedProgram(program.chip.to_json(), program.assembly, static)}
    walls = {(name, timing): [] for name in handles for timing in (True, False)}
    for rep in range(6):
        order = ("old", "new") if rep % 2 == 0 else ("new", "old")
        for name in order:
            for timing in (True, False):
                start = time.perf_counter()
                stats, _ = handles[name].run(mem, dumps, timing)
                walls[(name, timing)].append(time.perf_counter() - start)
                assert int(stats["cycles"]) == program.predicted_cycles
    for timing in (True, False):
        o, n = statistics.median(walls[("old", timing)]), statistics.median(walls[("new", timing)])
        print(f"{'timing-only' if timing else 'functional':12} old {o:.4f} s  new {n:.4f} s  new/old {n / o:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
