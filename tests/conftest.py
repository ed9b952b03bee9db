import os
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
TESTS = Path(__file__).parent


def _has_torchvision() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    r = subprocess.run([SYSTEM_PYTHON, "-c", "import torchvision"], capture_output=True)
    return r.returncode == 0


HAS_TORCHVISION = _has_torchvision()


@pytest.fixture(scope="session")
def torchvision_python():
    """Path of a Python with the real torchvision (Debian's python3-torchvision)."""
    if not HAS_TORCHVISION:
        if os.environ.get("CI"):
            pytest.fail("python3-torchvision missing: run `make setup` as root")
        pytest.skip("python3-torchvision not installed")
    return SYSTEM_PYTHON


TIMM_PYTHON = Path(__file__).parents[1] / ".venv-timm" / "bin" / "python"


@pytest.fixture(scope="session")
def timm_python():
    """Path of a Python with timm on Debian's torch (``make setup`` builds ``.venv-timm``)."""
    if not TIMM_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(".venv-timm missing: run `make setup` (as root, for python3-torchvision)")
        pytest.skip(".venv-timm not built: run `make setup`")
    return str(TIMM_PYTHON)


def run_reference_script(python: str, script: str, *args) -> None:
    """Run ``tests/<script>`` under ``python`` (a reference library's interpreter) with 2 threads."""
    subprocess.run([python, str(TESTS / script), *map(str, args)], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "2"})


def rel_err(a, b) -> float:
    """max |a - b| / max |b|, in float64: how the parity tests compare jtl with a reference."""
    import numpy as np

    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def run_torch_reference(tmp_path, arch, **kw):
    """Run tests/torch_reference.py; returns (pth path, npz dict)."""
    import numpy as np

    pth, out = tmp_path / f"{arch}.pth", tmp_path / f"{arch}.npz"
    args = [SYSTEM_PYTHON, str(TESTS / "torch_reference.py"), "--arch", arch, "--pth", str(pth), "--out", str(out)]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    subprocess.run(args, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return pth, dict(np.load(out))


@pytest.fixture
def jtl_cli():
    """Run the ``jtl`` CLI in a subprocess; returns CompletedProcess."""

    def run(*args, env=None, cwd=None):
        cmd = [sys.executable, "-m", "jtl.cli", *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd)

    return run


