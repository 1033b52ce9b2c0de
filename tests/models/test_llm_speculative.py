"""Speculative decoding on the rack-scale plan (lpusim.llm.speculative, `lpusim llm --speculative`)."""
from __future__ import annotations

import json

import pytest

from lpusim.cli import main
from lpusim.errors import ModelError
from lpusim.llm.speculative import DEFAULT_ACCEPTANCE, Speculation, expected_tokens, speculative_energy

# The tiny target of test_llm_plan.py, and a smaller draft with its vocabulary.
TINY = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 640, "num_hidden_layers": 4,
        "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 640, "max_position_embeddings": 256}
DRAFT = dict(TINY, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
SMALL = dict(precision="fp16", context=64, prompt=8, new_tokens=4, prefill_chunk=8)


@pytest.fixture(scope="module")
def spec():
    return Speculation(TINY, DRAFT, **SMALL)


@pytest.fixture(scope="module")
def planned(spec):
    return spec.plan(2, tp=2, draft_tokens=3)


def test_expected_tokens_per_round():
    assert expected_tokens(0.0, 5) == 1.0  # every draft rejected: the target's own token alone
    assert expected_tokens(0.5, 1) == pytest.approx(1.5)
    assert expected_tokens(0.8, 4) == pytest.approx(sum(0.8 ** i for i in range(5)))
    assert expected_tokens(0.999999, 3) == pytest.approx(4, rel=1e-5)  # the limit: every draft and one more


def test_verify_pass_is_a_simulated_pass_of_k_plus_1_tokens(spec, planned):
    s = planned["speculative"]
    verify = s["round_breakdown_cycles"]["verify"]
    layout = spec.target.choose(2, 2, None)
    decode = spec.target.decode_cycles(layout)
    assert verify == spec.verify_cycles(layout, 3)["cycles"]
    assert decode < verify < 4 * decode  # more than one decode pass, less than k + 1 of them
    names = {p["name"] for p in planned["pieces"]}
    assert any("4 tokens, past 60" in n for n in names), names  # the attention part at seq 4 after 60 cached
    assert any(n.startswith("head part (tp 2, 4 tokens") for n in names), names  # the head scores all 4


def test_round_composition(planned):
    s = planned["speculative"]
    b = s["round_breakdown_cycles"]
    assert sum(b.values()) == s["round_cycles"]
    assert 2 * s["draft_step_cycles"] < b["draft"] <= 3 * s["draft_step_cycles"]  # the 3rd draft goes to the target
    assert b["handoff"] > 0 and b["handback"] > 0  # the draft's chips are not the target's
    assert s["draft_first_chip"] >= planned["chips"] and s["chips_total"] == planned["chips"] + s["draft"]["chips"]
    tokens = expected_tokens(DEFAULT_ACCEPTANCE, 3)
    assert s["expected_tokens_per_round"] == pytest.approx(tokens, rel=1e-4)
    assert s["tokens_per_s"] == pytest.approx(tokens * 900e6 / s["round_cycles"], rel=1e-3)
    assert s["tokens_per_s_without"] == planned["tokens_per_s"]
    assert s["speedup"] == pytest.approx(s["tokens_per_s"] / s["tokens_per_s_without"], rel=1e-3)
    e = s["energy"]  # a round's dynamic joules plus both models' static power, over its expected tokens
    static_w = planned["energy"]["static_power_w"] + s["draft"]["chips"] * 55.0
    assert e["static_j_per_token"] == pytest.approx(static_w * s["round_us"] * 1e-6 / tokens, rel=1e-3)
    assert e["j_per_token"] > e["static_j_per_token"] and e["verify_dynamic_j"] > 0
    assert e["j_per_token_without"] == planned["energy"]["j_per_token"]


def test_best_draft_length_when_not_given(spec):
    s = spec.plan(2, tp=2)["speculative"]
    assert s["draft_tokens_chosen"] == "the fastest of 1..8" and [x["draft_tokens"] for x in s["search"]] == \
        list(range(1, 9))
    assert s["tokens_per_s"] == max(x["tokens_per_s"] for x in s["search"])
    verify = [x["round_breakdown_cycles"]["verify"] for x in s["search"]]
    assert verify == sorted(verify)  # a longer verify pass for more drafts


def test_no_acceptance_is_one_token_a_round(spec):
    r = spec.plan(2, tp=2, draft_tokens=3, acceptance=0.0)["speculative"]
    assert r["expected_tokens_per_round"] == 1.0 and r["speedup"] < 1  # a round costs more than a decode step


def test_energy_composes_from_the_plans_blocks():
    block = lambda dynamic, static_w, j: {"dynamic_j_per_token": dynamic, "static_power_w": static_w,  # noqa: E731
                                          "j_per_token": j}
    target, draft = {"energy": block(2.0, 100.0, 3.0)}, {"energy": block(0.1, 50.0, 0.2)}
    e = speculative_energy(target, draft, 3.0, 0.01, 4, 0.02, 4.0)
    # 4 draft steps, a verify pass and the hand-offs, plus 100 W + 50 W of static power for 20 ms, over 4 tokens
    assert e["j_per_token"] == pytest.approx((4 * 0.1 + 3.0 + 0.01 + 150 * 0.02) / 4)
    assert e["j_per_token_without"] == pytest.approx(3.0)
    assert e["power_w"] == pytest.approx((4 * 0.1 + 3.01 + 3.0) / 0.02)


def test_cli_json_block_and_text(tmp_path, capsys):
    target, draft = tmp_path / "target.json", tmp_path / "draft.json"
    target.write_text(json.dumps(TINY))
    draft.write_text(json.dumps(DRAFT))
    flags = ["--precision", "fp16", "--context", "64", "--prompt", "8", "--new-tokens", "4", "--chips", "2",
             "--tp", "2"]
    assert main(["llm", str(target), *flags, "--speculative", str(draft), "--draft-tokens", "2",
                 "--acceptance", "0.7", "--draft-chips", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    s = r["speculative"]
    assert (s["draft_tokens"], s["acceptance"], s["draft"]["chips"]) == (2, 0.7, 1)
    assert s["acceptance_source"] == "given (--acceptance)" and len(s["search"]) == 1
    assert main(["llm", str(target), *flags, "--speculative", str(draft), "--draft-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "speculative decoding: draft" in out and "tokens/s, one user" in out and "0.88" in out


@pytest.mark.parametrize("extra, message", [
    (["--acceptance", "1"], "--acceptance 1.0: a probability in [0, 1)"),
    (["--acceptance", "-0.1"], "--acceptance -0.1"),
    (["--draft-tokens", "0"], "--draft-tokens 0: at least 1"),
    (["--other-vocab"], "vocabulary of 512 tokens is not the target"),
])
def test_cli_bad_values_exit_2(tmp_path, capsys, extra, message):
    target, draft = tmp_path / "target.json", tmp_path / "draft.json"
    target.write_text(json.dumps(TINY))
    other = extra == ["--other-vocab"]
    draft.write_text(json.dumps(dict(DRAFT, vocab_size=512) if other else DRAFT))
    args = ["llm", str(target), "--precision", "fp16", "--context", "64", "--prompt", "8", "--new-tokens", "4",
            "--speculative", str(draft)] + ([] if other else extra)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_draft_flags_need_a_draft(capsys):
    assert main(["llm", "llama-3-8b", "--draft-tokens", "3"]) == 2
    assert "--draft-tokens needs --speculative DRAFT" in capsys.readouterr().err


def test_one_sequence_only():
    with pytest.raises(ModelError, match="--concurrency 2 with --speculative"):
        Speculation(TINY, DRAFT, concurrency=2, **SMALL)
