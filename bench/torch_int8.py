"""int8 whole models: torchvision ResNet-18 and MobileNetV2, a BERT-base encoder and a GPT-2 small decoder
(transformers, from their default configs), random weights, exported with torch.onnx.export, compiled with
`precision="int8"` (onnxruntime's quantiser inside the compile) and compared with onnxruntime on the same quantised
model. Needs torch, torchvision, transformers.

    python bench/torch_int8.py [resnet18 mobilenet_v2 bert_base gpt2_small bert_2layer gpt2_2layer] [--json out.json]
        [--precision fp16] [--chips N|auto]     (the same exports in fp16; GPT-2 small needs --chips auto there)

One line per model: bench/light_models.measure_model's row plus `exact_fraction` (output elements equal to
onnxruntime's bit for bit), `step` (the output's quantisation step, when a DequantizeLinear makes it),
`within_one_step` and `max_steps`, and `f32_units`: the largest difference in units of 2^-23 of the output's largest
magnitude (a float output, e.g. a transformer's last LayerNorm: test_int8.F32_UNITS is the bound the tests hold).
Transformers are also checked segment by segment (lpusim/check/segments.py): `segments`, `segments_matched`,
`segments_codes_off` of `segments_codes`, `segments_max_code_diff`.
"""
import json
import os
import sys
import tempfile

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(__file__))
from light_models import measure_model, option  # noqa: E402

NAMES = ["resnet18", "mobilenet_v2", "bert_base", "gpt2_small"]


def export(name: str, path: str) -> onnx.ModelProto:
    import torch

    class Embeddings(torch.nn.Module):  # the chip path takes embeddings, not token ids
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, e):
            return self.m(inputs_embeds=e).last_hidden_state

    torch.manual_seed(0)
    if name in ("resnet18", "mobilenet_v2"):
        import torchvision
        module, args, inputs = getattr(torchvision.models, name)(weights=None), (torch.randn(1, 3, 224, 224),), \
            ["input"]
    else:
        import transformers
        if name.endswith("_2layer"):  # tests/models/test_torch_models.py's small ones: hidden 128, 2 heads, sequence 16
            model = transformers.BertModel(transformers.BertConfig(
                hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
                add_pooling_layer=False) if name == "bert_2layer" else \
                transformers.GPT2Model(transformers.GPT2Config(n_embd=128, n_layer=2, n_head=2, n_positions=64))
            module, args, inputs = Embeddings(model), (torch.randn(1, 16, 128),), ["inputs_embeds"]
        else:
            model = transformers.BertModel(transformers.BertConfig(), add_pooling_layer=False) \
                if name == "bert_base" else transformers.GPT2Model(transformers.GPT2Config())
            module, args, inputs = Embeddings(model), (torch.randn(1, 128, 768),), ["inputs_embeds"]
    torch.onnx.export(module.eval(), args, path, dynamo=False, opset_version=17, input_names=inputs)
    return onnx.load(path)


def output_steps(model: onnx.ModelProto) -> dict:
    """Graph output -> the scale of the DequantizeLinear producing it."""
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    return {n.output[0]: float(consts[n.input[1]].reshape(())) for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.output[0] in outputs and n.input[1] in consts}


def measure(name: str, precision: str = "int8", chips=1) -> dict:
    import lpusim
    from lpusim.check.compare import run_onnxruntime
    from lpusim.compiler.frontend.quantize import quantize_model

    with tempfile.TemporaryDirectory() as d:
        model = export(name, os.path.join(d, f"{name}.onnx"))
    row = measure_model(model, name, precision=precision, chips=chips)
    if "cycles" not in row or precision != "int8":
        row.pop("utilization", None)
        return row
    program = lpusim.compile(model, precision="int8")  # the outputs themselves (measure_model keeps only errors)
    x = program.random_inputs(0)
    sim = program.run(x).outputs
    q = quantize_model(model, x)
    ref, _ = run_onnxruntime(q, x)
    steps = output_steps(q)
    exact = total = within = 0
    max_steps = f32_units = 0.0
    for k, r in ref.items():
        diff = np.abs(sim[k].astype(np.float64) - r)
        f32_units = max(f32_units, float(diff.max() / np.abs(r).max() / 2.0 ** -23))
        exact += int((diff == 0).sum())
        total += r.size
        if k in steps:
            n = diff / steps[k]
            within += int((n <= 1 + 1e-5).sum())
            max_steps = max(max_steps, float(n.max()))
    row.update(exact_fraction=exact / total, step=steps.get(next(iter(ref))),
               within_one_step=within / total if within else None, max_steps=max_steps if within else None,
               f32_units=f32_units)
    if name not in ("resnet18", "mobilenet_v2"):  # transformers: also segment by segment (lpusim/check/segments.py)
        from lpusim.check.segments import check_segments, summarize
        summary = summarize(check_segments(q, x))
        row.update({f"segments_{k}": v for k, v in summary.items() if k != "segments"}, segments=summary["segments"])
    row.pop("utilization", None)
    return row


def main(argv):
    argv, out = option(argv, "--json", None)
    argv, precision = option(argv, "--precision", "int8")
    argv, chips = option(argv, "--chips", "1")
    chips = chips if chips == "auto" else int(chips)
    rows = []
    for name in argv or NAMES:
        row = measure(name, precision, chips)
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
    if out:
        with open(out, "w") as f:
            json.dump(rows, f, indent=1, default=str)


if __name__ == "__main__":
    main(sys.argv[1:])
