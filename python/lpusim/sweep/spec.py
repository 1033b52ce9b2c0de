"""What a sweep covers (docs/llm.md 4.4): a value list per axis, from `lpusim sweep` flags or a JSON file, and the
points of their cartesian product.

Axes, in the order the points enumerate them (the last varies fastest): model, chips, tp, pp, precision, context,
concurrency, prompt, new_tokens, prefill_chunk. chips, tp, pp and prefill_chunk take "auto" (the planner
chooses) beside numbers. Every value is checked before any point runs, so a bad one is one error, not a sweep of
failed rows; a combination the planner rejects (too few chips, a prompt longer than the context) is a row with an
`error`.
"""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from typing import Any

from lpusim.chip import Chip
from lpusim.errors import ModelError
from lpusim.llm.configs import BUILT_IN, config_fields
from lpusim.llm.plan import PRECISIONS

AXES = ("model", "chips", "tp", "pp", "precision", "context", "concurrency", "prompt", "new_tokens", "prefill_chunk")
DEFAULTS: dict[str, list] = {"chips": ["auto"], "tp": ["auto"], "pp": ["auto"], "precision": ["int8"],
                             "context": [4096], "concurrency": [1], "prompt": [128], "new_tokens": [128],
                             "prefill_chunk": ["auto"]}
TP = (1, 2, 4, 8)
LOWEST = {"chips": 1, "pp": 1, "context": 2, "concurrency": 1, "prompt": 1, "new_tokens": 1, "prefill_chunk": 1}
AUTO_AXES = ("chips", "tp", "pp", "prefill_chunk")
# A row names the layout axes as asked: the plan's own chips, tp, pp and prefill_chunk are what it chose.
ASKED = {"chips": "chips_asked", "tp": "tp_asked", "pp": "pp_asked", "prefill_chunk": "prefill_chunk_asked"}


def flag(axis: str) -> str:
    return "--" + axis.replace("_", "-")


def check_value(axis: str, value: Any) -> Any:
    """`value` as the axis holds it (an int, "auto", a precision), or ModelError naming the flag."""
    if isinstance(value, str) and axis != "precision":
        text = value.strip()
        value = "auto" if text == "auto" else int(text) if text.lstrip("-").isdigit() else text
    if axis == "precision":
        if value not in PRECISIONS:
            raise ModelError(f"--precision {value}: one of {', '.join(PRECISIONS)}")
        return value
    if value == "auto" or value is None:
        if axis not in AUTO_AXES:
            raise ModelError(f"{flag(axis)} {value}: expected a number")
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int):
        what = "a number or 'auto'" if axis in AUTO_AXES else "a number"
        raise ModelError(f"{flag(axis)} {value}: expected {what}")
    if axis == "tp" and value not in TP:
        raise ModelError(f"--tp {value}: a tensor-parallel group is 1, 2, 4 or 8 chips (or 'auto')")
    if axis in LOWEST and value < LOWEST[axis]:
        raise ModelError(f"{flag(axis)} {value}: at least {LOWEST[axis]}")
    return value


def model_label(model: Any, index: int) -> str:
    """A model's name in the rows: a built-in name or path as given, a dict's `_name_or_path`, else `model<i>`."""
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    if isinstance(model, dict) and isinstance(model.get("_name_or_path"), str):
        return model["_name_or_path"]
    return f"model{index}"


@dataclass
class SweepSpec:
    """The axes' values (`axes[name]`: a list), the models' configurations by label, and the chip configuration
    (None: tsp_v1)."""

    axes: dict[str, list]
    configs: dict[str, Any] = field(default_factory=dict)
    chip: Any = None

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> "SweepSpec":
        """`{"model": name, path, config dict or a list of them, "chips": [8, 16, "auto"], ..., "chip": ...}`;
        an axis given as one value is a list of one, an axis left out takes `DEFAULTS`."""
        unknown = sorted(set(spec) - set(AXES) - {"chip"})
        if unknown:
            raise ModelError(f"unknown sweep field(s) {', '.join(unknown)}: the axes are {', '.join(AXES)}, "
                             f"and chip")
        models = spec.get("model")
        if models is None or models == []:
            raise ModelError("a sweep needs a model: a built-in name, a config.json path or a config dict")
        models = models if isinstance(models, list) else [models]
        configs: dict[str, Any] = {}
        for i, model in enumerate(models):
            label = model_label(model, i)
            # a path is read here, once: a Ray worker on another machine has no such file
            configs[label] = model if isinstance(model, str) and model in BUILT_IN else config_fields(model)
        axes = {"model": list(configs)}
        for axis in AXES[1:]:
            values = spec.get(axis, DEFAULTS[axis])
            values = values if isinstance(values, list) else [values]
            if not values:
                raise ModelError(f"{flag(axis)}: no values given")
            axes[axis] = [check_value(axis, v) for v in values]
        # checked here, and sent to the workers as its configuration: a chip file may be on this machine only
        chip = None if spec.get("chip") is None else Chip.load(spec["chip"]).config
        return cls(axes, configs, chip)

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the axes' values, in `AXES` order: a row's inputs (`ASKED` names)."""
        combos = itertools.product(*(self.axes[a] for a in AXES))
        return [{"point": i, **{ASKED.get(a, a): v for a, v in zip(AXES, combo)}} for i, combo in enumerate(combos)]


def load_json(path: str | os.PathLike) -> dict[str, Any]:
    """A sweep file's fields (`SweepSpec.from_dict` reads them)."""
    try:
        with open(path, encoding="utf-8") as f:
            fields = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelError(f"{os.fspath(path)}: not a readable sweep JSON file: {e}") from None
    if not isinstance(fields, dict):
        raise ModelError(f"{os.fspath(path)}: a sweep file holds one JSON object of axes")
    return fields


def parse_list(axis: str, text: str) -> list:
    """A flag's comma-separated values (`--chips 8,16,auto`)."""
    values = [v for v in text.split(",") if v.strip()]
    if not values:
        raise ModelError(f"{flag(axis)} {text!r}: no values given")
    return [check_value(axis, v) for v in values]
