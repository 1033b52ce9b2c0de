"""`lpusim run --explain` (check/explain.py): the cycles by cause sum to the cycles, the MXM work is grouped by
the compiler's purpose tags, the JSON and text forms."""
import json
import subprocess
import sys

import onnx
import pytest

import lpusim
from lpusim.check.explain import CAUSES, WAITING, explain
from lpusim.models import bert_encoder, mlp

MODELS = {"mlp": lambda: mlp(), "wide mlp": lambda: mlp((640, 640, 640), batch=32),
          "attention": lambda: bert_encoder()}


@pytest.fixture(scope="module")
def programs():
    return {name: lpusim.compile(make()) for name, make in MODELS.items()}


@pytest.mark.parametrize("name", MODELS)
def test_causes_sum_to_the_cycles(programs, name):
    p = programs[name]
    e = explain(p, top=10**6)
    run = p.run(timing_only=True)
    assert e["cycles"] == run.cycles == p.predicted_cycles
    assert list(e["cycles_by_cause"]) == [*CAUSES, WAITING]
    assert sum(e["cycles_by_cause"].values()) == run.cycles
    # every owned cycle belongs to exactly one node: the nodes' cycles are the cycles nothing waits in
    assert sum(r["cycles"] for r in e["top_nodes"]) == run.cycles - e["cycles_by_cause"][WAITING]
    for r in e["top_nodes"]:
        assert sum(r["cycles_by_cause"].values()) == r["cycles"]
    for cause in CAUSES:  # a cause wins at most the cycles it is busy in
        assert e["cycles_by_cause"][cause] <= e["cycles_busy"][cause]
    # plane-busy cycles as the simulator counts them
    assert e["mxm_plane_cycles"] == run.busy["mxm"]
    assert e["mxm_utilization"] == pytest.approx(run.utilization["mxm"], rel=1e-12)
    assert sum(w["plane_cycles"] for w in e["mxm_work_by_purpose"].values()) == e["mxm_plane_cycles"]
    assert sum(r["mxm_plane_cycles"] for r in e["top_nodes"]) == e["mxm_plane_cycles"]
    if e["mxm_plane_cycles"]:
        assert 1 <= e["planes_computing"] <= 4


def test_matmul_model_is_mxm_bound(programs):
    p = programs["wide mlp"]
    e = explain(p)
    assert max(e["cycles_by_cause"], key=e["cycles_by_cause"].get) == "mxm_compute"
    assert list(e["mxm_work_by_purpose"]) == ["model matmuls"]
    assert e["model_macs"] == 32 * (640 * 640 + 640 * 640)
    # fp16: a vector every 4 cycles, so the peak is a quarter of 4 planes x 320 x 320 MACs a cycle
    assert e["mac_utilization"] == pytest.approx(e["model_macs"] * 4 / (4 * 320 * 320 * e["cycles"]))
    assert 0 < e["mac_utilization"] <= e["mxm_utilization"] <= 1


def test_attention_helpers_by_purpose(programs):
    e = explain(programs["attention"])
    work = e["mxm_work_by_purpose"]
    assert {"model matmuls", "lane sums (Softmax)", "lane sums (LayerNormalization)"} <= set(work)
    assert "lane max/min (Softmax)" not in work  # 16 rows of 16 lanes per head: turned, the maximum on the VXM
    # heads are read where they lie on the lanes (lower/attention_lanes.py): no selections, no placements
    assert not {"head selection (Transpose)", "head placement (Reshape)"} & set(work)
    assert sum(w["share"] for w in work.values()) == pytest.approx(1.0)
    shares = [w["share"] for w in work.values()]
    assert shares == sorted(shares, reverse=True)
    # deterministic: a second compile explains the same
    assert explain(lpusim.compile(MODELS["attention"]())) == e


def lpusim_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "lpusim.cli", *args], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def mlp_file(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp((784, 300, 10), seed=1), path)
    return str(path)


EXPLAIN_KEYS = {"mxm_utilization", "mac_utilization", "cycles_by_cause", "mxm_work_by_purpose", "top_nodes"}


def test_run_explain_json_and_text(mlp_file):
    code, out, err = lpusim_cli("run", mlp_file, "--explain", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert EXPLAIN_KEYS <= set(r["explain"])
    assert sum(r["explain"]["cycles_by_cause"].values()) == r["cycles"]
    assert {"name", "ops", "cycles", "share", "cycles_by_cause", "mxm_vectors"} <= set(r["explain"]["top_nodes"][0])
    code, out, err = lpusim_cli("run", mlp_file, "--explain", "--timing-only")
    assert code == 0, err
    assert "time by cause" in out and "MXM work" in out and "top nodes" in out


def test_compile_explain(mlp_file):
    code, out, err = lpusim_cli("compile", mlp_file, "--explain", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert sum(s["explain"]["cycles_by_cause"].values()) == s["predicted_cycles"]


def test_explain_is_one_chip(mlp_file):
    code, out, err = lpusim_cli("run", mlp_file, "--explain", "--chips", "2")
    assert code == 2
    assert "--explain" in err
