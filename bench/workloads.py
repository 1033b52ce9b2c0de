"""Models the benchmarks run (no downloads): onnx's light ResNet-50 cut before its Softmax, and a large matmul.

Also usable as a script to compile one of them and print the compile time, e.g. for profiling:
    python bench/workloads.py resnet50 [out.asm]
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def light_resnet50_path() -> str:
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_resnet50.onnx")


def resnet50(cut_before: str = "Softmax") -> onnx.ModelProto:
    """onnx's light_resnet50 (batch 1, 3x224x224; its weights are small random-like values), with the graph cut
    before its first `cut_before` node (Softmax: lanes reductions do not compile yet), whose input becomes the
    output (the 1000 logits of the final Gemm)."""
    model = onnx.load(light_resnet50_path())
    g = model.graph
    index = next(i for i, n in enumerate(g.node) if n.op_type == cut_before)
    cut = g.node[index].input[0]
    kept = list(g.node[:index])
    del g.node[:]
    g.node.extend(kept)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(cut, TensorProto.FLOAT, None))
    model = onnx.shape_inference.infer_shapes(model)
    shape = next((vi.type.tensor_type.shape for vi in model.graph.value_info if vi.name == cut), None)
    if shape is not None:  # give the new output its inferred shape
        g = model.graph
        g.output[0].type.tensor_type.shape.CopyFrom(shape)
    onnx.checker.check_model(model)
    return model


def matmul(batch: int = 256, k: int = 2048, n: int = 2048, seed: int = 0) -> onnx.ModelProto:
    """One MatMul of a [batch, k] input by a constant [k, n] weight (Kaiming-scaled normal values)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) * np.sqrt(1.0 / k)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "weight"], ["output"], name="matmul")], "matmul",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, k])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, n])],
        [numpy_helper.from_array(w, "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="lpusim")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def bert_base() -> onnx.ModelProto:
    """A BERT-base encoder (12 layers, hidden 768, 12 heads, sequence 128, batch 1), random weights
    (lpusim.models.bert_encoder: input embeddings in, no attention mask)."""
    from lpusim.models import bert_encoder

    return bert_encoder(layers=12, hidden=768, heads=12, seq=128)


MODELS = {"resnet50": resnet50, "matmul": matmul, "bert_base": bert_base}


if __name__ == "__main__":
    import sys
    import time

    import lpusim

    model = MODELS[sys.argv[1]]()
    start = time.perf_counter()
    program = lpusim.compile(model)
    print(f"compile {time.perf_counter() - start:.2f} s, {program.instructions} instructions, "
          f"predicted {program.predicted_cycles} cycles")
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            f.write(program.assembly)
