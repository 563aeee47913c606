"""The installed anchor-py (the editable install of a checkout included) exposes only its two packages, so the
checkout's tests/, examples/ (with its zgen) and benchmarks/ never shadow a user's modules."""

import subprocess
import sys
from pathlib import Path

CHECKOUT_PACKAGES = ("tests", "examples", "benchmarks", "zgen", "api")


def test_only_anchor_py_and_the_generator_are_importable_from_elsewhere(tmp_path: Path) -> None:
    code = (
        "import importlib.util as u, anchor_py, anchor_py_codegen; "
        f"print([name for name in {CHECKOUT_PACKAGES!r} if u.find_spec(name)])"
    )
    env = {"PATH": "/usr/bin:/bin"}  # no PYTHONPATH: what a user's process sees
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"
