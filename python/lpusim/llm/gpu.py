"""The GPU baseline beside an LPU plan: a roofline model of decoding on GPUs (`lpusim llm CONFIG --compare h100`,
docs/llm.md section 5).

One decode step of `concurrency` sequences on `n` GPUs (tensor parallel within a node, whole nodes as pipeline
stages beyond it) takes

    max(bytes read / (tp x HBM bandwidth x bandwidth utilisation), FLOPs / (tp x peak x compute utilisation))
    + 2 all-reduces per layer (NCCL's ring: base + 2 (tp - 1) steps + 2 (tp - 1) / tp x bytes / NVLink bandwidth)

where the bytes are the weights a step reads (a mixture's routed experts only) and every sequence's KV cache, and
`tp` is the GPUs of one stage: pipeline stages run one after another for a token. Every number of a GPU is a field
of its JSON file with its source (llm/gpus/); nothing here is fitted to an LPU figure or a claim.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any

from lpusim.errors import ConfigError
from lpusim.llm.configs import model_size
from lpusim.llm.shard import DecoderShape

BUILT_IN = {"h100": "h100_sxm.json", "h100_sxm": "h100_sxm.json", "a100": "a100_sxm.json", "a100_sxm": "a100_sxm.json"}
ACTIVATION_BYTES = 2  # engines all-reduce bf16/fp16 activations, also with 8-bit weights
MAX_FILE_BYTES = 1 << 16
MAX_NODES = 64  # a plan past 512 GPUs is not a decode deployment anyone publishes


@dataclass(frozen=True)
class Gpu:
    """One GPU model's numbers (SI units: bytes, bytes/s, FLOP/s, W, s), each with a source in `sources`."""

    name: str
    hbm_bytes: float
    hbm_bytes_per_s: float
    bandwidth_utilisation: float
    peak_flops_16bit: float
    peak_flops_8bit: float
    eight_bit_format: str
    compute_utilisation: float
    power_w: float
    nvlink_bytes_per_s: float
    allreduce_base_s: float
    allreduce_step_s: float
    gpus_per_node: int
    memory_reserve: float
    sources: dict

    @classmethod
    def load(cls, spec: str) -> "Gpu":
        """A built-in name (h100, a100) or a JSON file of the same fields."""
        if spec in BUILT_IN:
            text = (resources.files("lpusim.llm") / "gpus" / BUILT_IN[spec]).read_text(encoding="utf-8")
            return cls.from_json(text, spec)
        if not os.path.isfile(spec):
            raise ConfigError(f"--compare {spec}: not a built-in GPU ({', '.join(sorted(BUILT_IN))}) and not a "
                              f"JSON file")
        if os.path.getsize(spec) > MAX_FILE_BYTES:
            raise ConfigError(f"{spec}: {os.path.getsize(spec):,} bytes is not a GPU configuration (at most "
                              f"{MAX_FILE_BYTES:,})")
        try:
            with open(spec, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{spec}: not readable: {e}") from None
        return cls.from_json(text, spec)

    @classmethod
    def from_json(cls, text: str, where: str) -> "Gpu":
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{where}: not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: a GPU configuration is one JSON object")
        values, sources = {"name": str(raw.get("name", os.path.basename(where)))}, {}
        for f in fields(cls):
            if f.name in ("name", "sources"):
                continue
            entry = raw.get(f.name)
            if not isinstance(entry, dict) or "value" not in entry or not str(entry.get("source", "")).strip():
                raise ConfigError(f"{where}: field '{f.name}' must be {{\"value\": ..., \"source\": \"...\"}} "
                                  f"(every number names where it comes from)")
            values[f.name], sources[f.name] = _checked(where, f.name, entry["value"]), entry["source"]
        return cls(**values, sources=sources)

    def peak_flops(self, precision: str) -> float:
        return self.peak_flops_8bit if precision == "int8" else self.peak_flops_16bit

    def weight_format(self, precision: str) -> str:
        return self.eight_bit_format if precision == "int8" else "bf16"


def _checked(where: str, name: str, value: Any):
    if name == "eight_bit_format":
        if value not in ("fp8", "int8"):
            raise ConfigError(f"{where}: eight_bit_format {value!r}: fp8 or int8")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: field '{name}' is {value!r}; a number is needed")
    if name == "gpus_per_node" and (value != int(value) or value < 1):
        raise ConfigError(f"{where}: gpus_per_node {value}: a whole number, at least 1")
    if name in ("bandwidth_utilisation", "compute_utilisation") and not 0 < value <= 1:
        raise ConfigError(f"{where}: {name} {value}: between 0 (excluded) and 1")
    if name == "memory_reserve" and not 0 <= value < 1:
        raise ConfigError(f"{where}: memory_reserve {value}: between 0 and 1 (excluded)")
    if name not in ("memory_reserve", "allreduce_base_s", "allreduce_step_s") and value <= 0:
        raise ConfigError(f"{where}: field '{name}' is {value}; it must be positive")
    if value < 0:
        raise ConfigError(f"{where}: field '{name}' is {value}; it cannot be negative")
    return int(value) if name == "gpus_per_node" else float(value)


def expert_fraction(shape: DecoderShape, batch: int) -> float:
    """The share of a mixture's experts one step reads: with `batch` tokens each routed to top_k of E experts
    uniformly, E (1 - (1 - k/E)^batch) distinct experts per layer, in expectation (1 for a dense model)."""
    if not shape.experts:
        return 1.0
    k, e = shape.top_k or shape.experts, shape.experts
    return 1 - (1 - k / e) ** batch


def _layout(gpu: Gpu, shape: DecoderShape, need: float, kv: float, gpus: int | None) -> tuple[int, int]:
    """(tensor-parallel GPUs per stage, stages): the fewest that hold `need` bytes (weights and every sequence's
    cache) in HBM less the reserve, or the `gpus` asked for."""
    node = gpu.gpus_per_node
    tps = [t for t in (1, 2, 4, 8, 16) if t <= node and shape.heads % t == 0]
    usable = gpu.hbm_bytes * (1 - gpu.memory_reserve)

    def per_gpu(tp: int, stages: int) -> float:
        # past kv_heads GPUs, each keeps a replicated key/value head (Megatron): the cache does not shrink further
        replicas = max(1, tp // shape.kv_heads)
        return (need - kv) / (tp * stages) + kv * replicas / (tp * stages)

    if gpus is not None:
        tp = min(gpus, max(tps)) if gpus >= 1 else 0
        stages = gpus // tp if tp else 0
        if tp not in tps or tp * stages != gpus:
            raise ConfigError(f"{gpus} GPUs: 1, 2, 4, 8 dividing the {shape.heads} heads, or whole nodes of {node}")
        if per_gpu(tp, stages) > usable:
            raise ConfigError(f"{gpus} GPUs hold {usable * gpus / 1e9:.1f} GB; {shape.name} needs {need / 1e9:.1f} GB")
        return tp, stages
    for tp in tps:
        if per_gpu(tp, 1) <= usable:
            return tp, 1
    tp = max(tps)
    for stages in range(2, MAX_NODES + 1):
        if per_gpu(tp, stages) <= usable:
            return tp, stages
    raise ConfigError(f"{shape.name} needs {need / 1e9:.0f} GB: more than {MAX_NODES} nodes of {node} GPUs")


def allreduce_s(gpu: Gpu, tp: int, batch: int, hidden: int) -> float:
    """One ring all-reduce of [batch, hidden] activations over `tp` GPUs of a node (NCCL's cost model)."""
    if tp == 1:
        return 0.0
    steps = 2 * (tp - 1)
    return gpu.allreduce_base_s + steps * gpu.allreduce_step_s + \
        steps / tp * batch * hidden * ACTIVATION_BYTES / gpu.nvlink_bytes_per_s


def gpu_decode(config, gpu: Gpu | str, *, precision: str = "int8", context: int = 4096, concurrency: int = 1,
               gpus: int | None = None) -> dict[str, Any]:
    """The roofline of one decode step of `concurrency` sequences (each attending over `context` positions) of a
    decoder configuration on `gpu`: the fewest GPUs that hold it (or `gpus`), time per step and its parts,
    tokens/s per user and in all, J/token at the GPU's TDP. docs/llm.md section 5."""
    gpu = Gpu.load(gpu) if isinstance(gpu, str) else gpu
    shape = DecoderShape.from_config(config)
    size = model_size(config, precision, context, concurrency)
    per_weight = size.weights_bytes // size.parameters
    tp, stages = _layout(gpu, shape, size.weights_bytes + size.kv_cache_bytes, size.kv_cache_bytes, gpus)
    n = tp * stages

    # a step reads every installed weight once (the embedding table is a gather of one row per token), of a
    # mixture only the experts its tokens were routed to, and every sequence's cache
    experts = shape.layers * shape.experts * 3 * shape.hidden * shape.ffn
    fraction = expert_fraction(shape, concurrency)
    weights_read = (size.installed_parameters - experts + experts * fraction) * per_weight
    active = size.installed_parameters - experts + experts * (shape.top_k / shape.experts if shape.experts else 0)
    attention = 4 * shape.layers * shape.heads * shape.head_dim * context  # q.k and p.v over the cache
    flops = concurrency * (2 * active + attention)

    # stages run one after another for a token, so a step's time divides by one stage's GPUs, not by n
    bandwidth = tp * gpu.hbm_bytes_per_s * gpu.bandwidth_utilisation
    weights_s, kv_s = weights_read / bandwidth, size.kv_cache_bytes / bandwidth
    compute_s = flops / (tp * gpu.peak_flops(precision) * gpu.compute_utilisation)
    reduce_s = 2 * shape.layers * allreduce_s(gpu, tp, concurrency, shape.hidden)
    step_s = max(weights_s + kv_s, compute_s) + reduce_s
    return {
        "gpu": gpu.name, "gpus": n, "tp": tp, "pipeline_stages": stages, "precision": precision,
        "weight_format": gpu.weight_format(precision), "context": context, "concurrency": concurrency,
        "bound": "memory" if weights_s + kv_s >= compute_s else "compute",
        "hbm_used_fraction": round((size.weights_bytes + size.kv_cache_bytes) / (n * gpu.hbm_bytes), 4),
        "bytes_per_step": round(weights_read + size.kv_cache_bytes), "flops_per_step": round(flops),
        "time_per_token_ms": round(step_s * 1e3, 4),
        "breakdown_ms": {"weights": round(weights_s * 1e3, 4), "kv_cache": round(kv_s * 1e3, 4),
                         "compute": round(compute_s * 1e3, 4), "all_reduce": round(reduce_s * 1e3, 4)},
        "tokens_per_s": round(1 / step_s, 2), "throughput_tokens_per_s": round(concurrency / step_s, 2),
        "power_w": n * gpu.power_w, "power": "TDP (an upper bound on the draw)",
        "j_per_token": round(n * gpu.power_w * step_s / concurrency, 4),
        "model": "roofline, docs/llm.md section 5",
    }


def compare(plan: dict[str, Any], config, gpu: Gpu | str) -> dict[str, Any]:
    """The GPU baseline of a plan's model at the plan's precision, context and concurrency."""
    return gpu_decode(config, gpu, precision=plan["precision"], context=plan["context"],
                      concurrency=plan["concurrency"])


def lpu_j_per_token(plan: dict[str, Any]) -> float | None:
    """The plan's energy per token when the plan carries an energy model's result, else None (never estimated
    here)."""
    energy = plan.get("energy")
    value = energy.get("j_per_token") if isinstance(energy, dict) else None
    return value if isinstance(value, (int, float)) else None


def format_comparison(plan: dict[str, Any]) -> str:
    """The plan and its GPU baseline side by side (the lines after format_plan's)."""
    g = plan["gpu"]
    b = g["breakdown_ms"]
    lpu_j = lpu_j_per_token(plan)
    rows = [
        ("tokens/s per user", f"{plan['tokens_per_s']:,.1f}", f"{g['tokens_per_s']:,.1f}"),
        (f"tokens/s, {plan['concurrency']} in flight", f"{plan['throughput_tokens_per_s']:,.1f}",
         f"{g['throughput_tokens_per_s']:,.1f}"),
        ("J/token", "n/a" if lpu_j is None else f"{lpu_j:,.3g}", f"{g['j_per_token']:,.3g} (at TDP, an upper bound)"),
        ("chips / GPUs", f"{plan['chips']:,}", f"{g['gpus']} (tp {g['tp']} x {g['pipeline_stages']} stage"
                                               f"{'s' if g['pipeline_stages'] > 1 else ''})"),
    ]
    head = f"  against {g['gpu']} ({g['weight_format']} weights; {g['model']})"
    lines = [head, f"  {'':26}{'LPU (simulated)':>18}  {g['gpu']} (model)"]
    lines += [f"  {name:26}{lpu:>18}  {gpu}" for name, lpu, gpu in rows]
    lines.append(f"  GPU time per token {g['time_per_token_ms']:.3f} ms = max(weights {b['weights']:.3f} + KV "
                 f"{b['kv_cache']:.3f}, compute {b['compute']:.3f}) + all-reduces {b['all_reduce']:.3f}: "
                 f"{g['bound']}-bound")
    return "\n".join(lines)
