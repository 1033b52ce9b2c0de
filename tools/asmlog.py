"""A pytest plugin that records the sha256 (first 16 hex digits) of every assembly text handed to lpusim's
assembler, test by test: run the suite with it before and after a change to see which tests' compiled programs
changed. Keys are `FILE::TEST` with the file's base name, so moving test files between folders keeps them.

    PYTHONPATH=tools ASMLOG=before.txt pytest -p asmlog -p no:cacheprovider
    (the change)
    PYTHONPATH=tools ASMLOG=after.txt pytest -p asmlog -p no:cacheprovider
    diff before.txt after.txt

It wraps `lpusim._lpusim.assemble` wherever lpusim's modules hold it, so it sees single-chip and multi-chip
compiles alike.
"""
import hashlib
import os
import sys

import pytest

_log = {}
_current = [None]


def _install():
    import lpusim._lpusim as ext
    orig = getattr(ext, "_asmlog_orig", None) or ext.assemble

    def assemble(text, *a, **k):
        if _current[0] is not None:
            _log.setdefault(_current[0], []).append(hashlib.sha256(text.encode()).hexdigest()[:16])
        return orig(text, *a, **k)
    ext._asmlog_orig = orig
    for name, mod in list(sys.modules.items()):
        if (name == "lpusim" or name.startswith("lpusim.")) and mod is not None:
            for attr, val in list(vars(mod).items()):
                if val is orig and not attr.startswith('_asmlog'):
                    setattr(mod, attr, assemble)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _install()
    _current[0] = item.nodeid.split("::", 1)[1] if "::" in item.nodeid else item.nodeid
    _current[0] = os.path.basename(item.nodeid.split("::")[0]) + "::" + _current[0]
    yield
    _current[0] = None


def pytest_sessionfinish(session):
    with open(os.environ.get("ASMLOG", "asmlog.txt"), "w") as f:
        for k in sorted(_log):
            f.write(f"{k}\t{' '.join(_log[k])}\n")
