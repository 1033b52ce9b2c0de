"""Hugging Face BERT-base from token ids: transformers' BertModel(BertConfig()) (12 layers, hidden 768, 30522-token
vocabulary, random weights, no download), exported with torch.onnx.export from int64 `input_ids` and
`attention_mask` at sequence 128, compiled fp16 with `chips="auto"`, simulated and compared with onnxruntime.
The export is kept in ~/.cache/lpusim/models (or --cache DIR). Needs torch and transformers.

    python bench/hf_bert.py [--seq 128] [--layers 12] [--chips auto] [--timing-only] [--json out.json]

Prints one JSON line: matched, max errors, cycles, latency (us at the chip's clock), chips, SRAM per chip, compile
time, and the embedding lookups: per Gather of a constant table by computed ids (word, position and token type
embeddings), the cycles from its first issue to its last effect (`span`) and the cycles `lpusim run --explain`
gives it (`owned`: the cycles in which it is the oldest work in flight), on the chip that runs it.
"""
import json
import os
import sys
import time

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(__file__))
from light_models import option  # noqa: E402


def export(path: str, seq: int, layers: int) -> None:
    import torch
    import transformers

    class FromIds(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask):
            return self.m(input_ids=ids, attention_mask=mask).last_hidden_state

    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(num_hidden_layers=layers), add_pooling_layer=False)
    args = (torch.randint(0, bert.config.vocab_size, (1, seq)), torch.ones(1, seq, dtype=torch.int64))
    tmp = path + ".tmp"
    torch.onnx.export(FromIds(bert).eval(), args, tmp, dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"])
    os.replace(tmp, path)


def model_path(cache: str, seq: int, layers: int) -> str:
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, f"hf_bert_ids_l{layers}_s{seq}.onnx")
    if not os.path.exists(path):
        export(path, seq, layers)
    return path


def embedding_nodes(model: onnx.ModelProto) -> set:
    """The Gathers of a constant table (an initializer) by ids computed on the chip."""
    consts = {i.name for i in model.graph.initializer}
    return {n.name for n in model.graph.node if n.op_type == "Gather" and n.input[0] in consts
            and n.input[1] not in consts}


def embedding_cycles(program, names: set) -> dict:
    """Per embedding Gather: the chip it runs on, `span` (first issue to last effect) and `owned` (explain.py)."""
    from lpusim.check.explain import explain

    chips = getattr(program, "stages", [program])
    out = {}
    for c, p in enumerate(chips):
        sched, nodes = p._schedule, p._graph.nodes
        marks = list(sched.node_marks) + [len(sched.issues)]
        spans = {}
        for i, node in enumerate(nodes):
            if node.name not in names:
                continue
            for iss in sched.issues[marks[i]:marks[i + 1]]:
                lo, hi = spans.get(node.name, (iss.cycle, iss.last_effect))
                spans[node.name] = (min(lo, iss.cycle), max(hi, iss.last_effect))
        if not spans:
            continue
        owned = {r["name"]: r["cycles"] for r in explain(p, top=10 ** 9)["top_nodes"]}
        for name, (lo, hi) in sorted(spans.items()):
            out[name] = {"chip": c, "first": lo, "span": hi - lo + 1, "owned": owned.get(name, 0)}
    return out


def main(argv):
    import lpusim
    from lpusim.check.compare import compare, run_onnxruntime

    argv, out = option(argv, "--json", None)
    argv, seq = option(argv, "--seq", "128")
    argv, layers = option(argv, "--layers", "12")
    argv, chips = option(argv, "--chips", "auto")
    argv, cache = option(argv, "--cache", os.path.join(os.path.expanduser("~"), ".cache", "lpusim", "models"))
    timing_only = "--timing-only" in argv
    chips = chips if chips == "auto" else int(chips)
    path = model_path(cache, int(seq), int(layers))
    model = onnx.load(path)
    row = {"model": os.path.basename(path), "precision": "fp16"}
    t = time.perf_counter()
    program = lpusim.compile(model, chips=chips)
    row["compile_s"] = round(time.perf_counter() - t, 2)
    x = program.random_inputs(0)
    t = time.perf_counter()
    result = program.run(x, timing_only=timing_only)
    row["simulate_s"] = round(time.perf_counter() - t, 2)
    if not timing_only:
        ref, _ = run_onnxruntime(model, x)
        cmp = compare(result.outputs, ref)
        name = model.graph.output[0].name
        diff = np.abs(result.outputs[name].astype(np.float64) - ref[name].astype(np.float64))
        row.update(matched=cmp["outputs_match"], max_abs_error=cmp["max_abs_error"],
                   max_rel_error=cmp["max_rel_error"], mean_abs_error=float(diff.mean()))
    row.update(cycles=result.cycles, predicted_cycles=program.predicted_cycles,
               latency_us=round(result.latency_us, 1), chips=getattr(program, "chips", 1),
               sram_mib=[round(p.sram_bytes / 2 ** 20, 1) for p in getattr(program, "stages", [program])])
    if hasattr(result, "chip_cycles"):
        row["chip_cycles"] = result.chip_cycles
        row["stages"] = [[s["nodes"], s["first"], s["last"]] for s in program.partition["stages"]]
        row["reason"] = program.partition["reason"]
    row["embeddings"] = embedding_cycles(program, embedding_nodes(model))
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "w") as f:
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
