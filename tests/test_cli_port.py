"""`jtl port`: writes a checkpoint that training can start from; user errors exit 2 in one line."""

from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import run_torch_reference
from jtl.weights import create_pretrained, port_torchvision, read_ported


@pytest.fixture(scope="module")
def pth(tmp_path_factory, torchvision_python):
    return run_torch_reference(tmp_path_factory.mktemp("r18"), "resnet18", sizes="64")[0]


def _one_line_error(r, pattern):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jtl: error: "), r.stderr
    assert pattern in lines[0], lines[0]


def test_port_writes_restorable_checkpoint(jtl_cli, pth, tmp_path):
    out = tmp_path / "ported"
    r = jtl_cli("port", "--arch", "resnet18", "--src", pth, "--out", out)
    assert r.returncode == 0, r.stderr
    meta, variables = read_ported(out)
    assert meta["arch"] == "resnet18" and meta["num_classes"] == 1000
    direct = port_torchvision(pth, "resnet18")
    assert jax.tree.structure(variables) == jax.tree.structure(direct)
    assert jax.tree.all(jax.tree.map(np.array_equal, variables, direct))
    # Training starts from it with a new head.
    _, v, report = create_pretrained(out, num_classes=4, image_size=32)
    assert v["params"]["fc"]["kernel"].shape == (512, 4) and len(report.reinitialized) == 2
    np.testing.assert_array_equal(v["params"]["conv1"]["kernel"], direct["params"]["conv1"]["kernel"])


def test_existing_output_is_kept(jtl_cli, pth, tmp_path):
    out = tmp_path / "ported"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    _one_line_error(jtl_cli("port", "--arch", "resnet18", "--src", pth, "--out", out), "already exists")
    assert (out / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "case,pattern",
    [
        ("unknown_arch", "unknown architecture 'resnet19'"),
        ("other_arch", "does not fit resnet34: missing: layer1.2"),
        ("missing_file", "weights file not found"),
        ("truncated", "truncated or corrupt"),
        ("offline", "put the file at"),
    ],
)
def test_port_errors_exit_2_in_one_line(jtl_cli, pth, tmp_path, case, pattern):
    src, arch = str(pth), "resnet18"
    if case == "unknown_arch":
        arch = "resnet19"
    elif case == "other_arch":
        arch = "resnet34"
    elif case == "missing_file":
        src = str(tmp_path / "nope.pth")
    elif case == "truncated":
        src = str(tmp_path / "t.pth")
        Path(src).write_bytes(Path(pth).read_bytes()[:100_000])
    elif case == "offline":
        src, arch = "resnet50.tv_in1k", "resnet50"
    out = tmp_path / "out"
    r = jtl_cli("port", "--arch", arch, "--src", src, "--out", out,
                env={"JTL_CACHE": str(tmp_path / "cache"), "https_proxy": "http://127.0.0.1:9"})
    _one_line_error(r, pattern)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no half-written temp dir
