"""The energy model (lpusim/energy.py, docs/energy.md): events times configured energies, static power over time."""
from __future__ import annotations

import json

import pytest

from lpusim.chip import Chip
from lpusim.energy import (Energy, TERMS, add_events, chips_energy, dynamic_energy, powered_fraction, run_energy,
                           static_energy)
from lpusim.errors import ConfigError
from lpusim.llm.plan_energy import concurrency_points, plan_energy, tokens_per_s

CHIP = Chip.load()
C = CHIP.config


def test_each_event_costs_its_configured_energy():
    events = {"mxm_int8_vectors": 3, "mxm_fp16_vectors": 2, "mxm_weight_vectors": 5, "mem_read_vectors": 7,
              "mem_write_vectors": 11, "stream_hops": 13, "vxm_ops": 17, "vxm_transcendental_ops": 4,
              "sxm_ops": 19, "c2c_vectors": 23, "instructions": 29}
    j = dynamic_energy(CHIP, events)
    pj = 1e-12
    assert j["mxm"] == pytest.approx(320 * 320 * (3 * 0.075 + 2 * 0.5) * pj)
    assert j["weight_load"] == pytest.approx(5 * 320 * 0.15 * pj)
    assert j["sram"] == pytest.approx((7 + 11) * 320 * 1.25 * pj)
    assert j["streams"] == pytest.approx(13 * 320 * 0.15 * pj)
    assert j["vxm"] == pytest.approx(320 * (13 * 0.575 + 4 * 3.7) * pj)
    assert j["sxm"] == pytest.approx(19 * 320 * 0.3 * pj)
    assert j["c2c"] == pytest.approx(23 * 320 * 8 * 4.0 * pj)
    assert j["instructions"] == pytest.approx(29 * 17.5 * pj)
    assert set(j) == set(TERMS) - {"static"}


def test_static_power_and_superlane_masks():
    assert powered_fraction(CHIP, 100) == 1.0
    # all 20 superlanes for 50 cycles, then 10 of them for 50: three quarters on average
    assert powered_fraction(CHIP, 100, [{"cycle": 50, "queue": "ICU", "mask": (1 << 10) - 1}]) == 0.75
    # masks apply in cycle order, and the last holds to the end
    masks = [{"cycle": 80, "queue": "a", "mask": 0}, {"cycle": 20, "queue": "b", "mask": (1 << 20) - 1}]
    assert powered_fraction(CHIP, 100, masks) == 0.8
    one_second = static_energy(CHIP, 1.0)
    assert one_second == C["static_power_superlanes_w"] + C["static_power_uncore_w"]
    assert static_energy(CHIP, 1.0, powered=0.0, chips=3) == 3 * C["static_power_uncore_w"]


def test_a_run_adds_up():
    cycles = 9000
    e = run_energy(CHIP, {"mxm_int8_vectors": 1000}, cycles)
    assert e.seconds == cycles / C["clock_hz"]
    assert e.total_j == pytest.approx(sum(e.joules.values()))
    assert e.power_w == pytest.approx(e.total_j / e.seconds)
    assert e.joules["static"] == pytest.approx(55.0 * e.seconds)
    report = e.to_json()
    assert report["energy_j"] == pytest.approx(sum(report["breakdown_j"].values()))
    two = chips_energy(CHIP, [{"mxm_int8_vectors": 500}, {"mxm_int8_vectors": 500}], cycles)
    assert two.joules["mxm"] == pytest.approx(e.joules["mxm"])
    assert two.joules["static"] == pytest.approx(2 * e.joules["static"])
    assert add_events(({"a": 1}, 2), ({"a": 1, "b": 4}, 1)) == {"a": 3, "b": 4}


@pytest.mark.parametrize("field,value", [("energy_int8_mac_pj", -0.1), ("static_power_uncore_w", 1e9),
                                         ("energy_c2c_pj_per_bit", "fast")])
def test_bad_energy_fields_name_the_field(field, value):
    cfg = dict(C, **{field: value})
    with pytest.raises(ConfigError, match=field):
        Chip.load(cfg)


def test_a_compiled_run_reports_energy(tmp_path):
    from lpusim.check.report import run_report
    from lpusim.models import mlp

    path = tmp_path / "mlp.onnx"
    path.write_bytes(mlp((64, 32, 8), batch=1, seed=0).SerializeToString())
    r = run_report(str(path))
    e = r["energy"]
    assert e["energy_j"] == pytest.approx(sum(e["breakdown_j"].values()))
    assert e["breakdown_j"]["mxm"] > 0 and e["breakdown_j"]["sram"] > 0
    assert e["breakdown_j"]["static"] == pytest.approx(55.0 * r["cycles"] / C["clock_hz"])
    timing = run_report(str(path), timing_only=True)
    assert timing["energy"] == e  # the events are the same with or without values
    json.dumps(r["energy"])


def test_plan_energy_shares_static_power_among_sequences():
    per_token_s, beat_s = 1e-3, 2.5e-4  # 4 groups' worth: the pipeline saturates at 4 in flight
    e = plan_energy(CHIP, 8, {"mxm_int8_vectors": 10_000}, {"mxm_int8_vectors": 40_000}, per_token_s, beat_s,
                    2e-3, 1, 16)
    static_w = 8 * 55.0
    dynamic = sum(dynamic_energy(CHIP, {"mxm_int8_vectors": 10_000}).values())
    assert e["static_power_w"] == pytest.approx(static_w)
    assert e["j_per_token"] == pytest.approx(dynamic + static_w * per_token_s)
    assert e["saturation_concurrency"] == 4
    curve = e["by_concurrency"]
    assert [p["concurrency"] for p in curve] == [1, 2, 4, 8]
    assert [p["tokens_per_s"] for p in curve] == [1000, 2000, 4000, 4000]
    assert all(a["j_per_token"] > b["j_per_token"] for a, b in zip(curve[:2], curve[1:3]))
    assert curve[2]["j_per_token"] == curve[3]["j_per_token"]  # past saturation nothing is shared further
    assert e["prefill_j"] == pytest.approx(4 * dynamic + static_w * 2e-3)
    assert tokens_per_s(3, per_token_s, beat_s) == 3000
    assert concurrency_points(2, 4) == [1, 2]  # only what fits
    assert concurrency_points(1, 1) == [1]


def test_energy_is_a_value():
    e = Energy({"mxm": 1.0, "static": 1.0}, 2.0)
    assert e.dynamic_j == 1.0 and e.power_w == 1.0
