"""Porting errors, timm safetensors, new heads and the weights registry."""

import hashlib
import http.server
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import run_torch_reference
from jtl.errors import ChecksumError, DownloadError, WeightsError
from jtl.models import create_model
from jtl.weights import (
    WeightSpec,
    create_pretrained,
    fetch,
    merge_pretrained,
    port_state_dict,
    port_timm,
    port_torchvision,
    read_state_dict,
)


@pytest.fixture(scope="module")
def r50(tmp_path_factory, torchvision_python):
    """torchvision resnet50 with random weights, its .pth and reference outputs at 64 px."""
    pth, ref = run_torch_reference(tmp_path_factory.mktemp("r50"), "resnet50", sizes="64")
    return pth, ref


@pytest.fixture(scope="module")
def r18(tmp_path_factory, torchvision_python):
    pth, ref = run_torch_reference(tmp_path_factory.mktemp("r18"), "resnet18", sizes="64", num_classes=7)
    return pth, ref


def _rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def test_timm_safetensors_ports_like_torchvision(r50, tmp_path):
    pth, ref = r50
    sd, _ = read_state_dict(pth)
    timm_sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # timm files carry none
    path = tmp_path / "model.safetensors"
    save_file(timm_sd, str(path))
    variables = port_timm(path, "resnet50")
    logits = create_model("resnet50", 1000).apply(variables, ref["x64"])
    assert _rel_err(logits, ref["eval64"]) <= 1e-4


def test_head_size_comes_from_checkpoint(r18):
    pth, ref = r18
    variables = port_torchvision(pth, "resnet18")
    assert variables["params"]["fc"]["kernel"].shape == (512, 7)
    logits = create_model("resnet18", 7).apply(variables, ref["x64"])
    assert _rel_err(logits, ref["eval64"]) <= 1e-4


def test_missing_key_is_named(r18):
    sd, _ = read_state_dict(r18[0])
    del sd["layer3.1.bn2.running_var"]
    with pytest.raises(WeightsError, match=r"missing: layer3\.1\.bn2\.running_var"):
        port_state_dict(sd, "resnet18")


def test_wrong_shape_is_named(r18):
    sd, _ = read_state_dict(r18[0])
    sd["layer2.0.conv1.weight"] = np.zeros((128, 64, 5, 5), np.float32)
    with pytest.raises(WeightsError, match=r"mis-shaped: layer2\.0\.conv1\.weight \(128, 64, 5, 5\) != \(128, 64, 3, 3\)"):
        port_state_dict(sd, "resnet18")


def test_unexpected_key_is_named(r18):
    sd, _ = read_state_dict(r18[0])
    sd["layer5.0.conv1.weight"] = np.zeros((1,), np.float32)
    with pytest.raises(WeightsError, match=r"unexpected: layer5\.0\.conv1\.weight"):
        port_state_dict(sd, "resnet18")


def test_weights_of_another_architecture_refused(r18):
    with pytest.raises(WeightsError, match="does not fit resnet34: missing: layer1.2"):
        port_torchvision(r18[0], "resnet34")


def test_unknown_arch(r18):
    with pytest.raises(WeightsError, match="unknown or non-PyTorch architecture 'resnet19'"):
        port_torchvision(r18[0], "resnet19")


def test_data_parallel_prefix_and_checkpoint_wrapper(r18):
    sd, _ = read_state_dict(r18[0])
    wrapped = {"state_dict": {"module." + k: v for k, v in sd.items()}}
    a = port_state_dict(wrapped["state_dict"], "resnet18")
    b = port_torchvision(r18[0], "resnet18")
    assert jax.tree.all(jax.tree.map(np.array_equal, a, b))


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_pth_names_file(r18, tmp_path, keep):
    data = Path(r18[0]).read_bytes()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(WeightsError, match=f"{bad}: truncated or corrupt"):
        port_torchvision(bad, "resnet18")


def test_truncated_safetensors_names_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": np.ones((100, 100), np.float32)}, str(path))
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(WeightsError, match=f"{path}: truncated or corrupt safetensors"):
        port_timm(path, "resnet50")


def test_pickle_with_foreign_code_is_refused(tmp_path, torchvision_python):
    import subprocess

    evil = tmp_path / "evil.pth"
    code = (
        "import torch, os\n"
        "class P:\n    def __reduce__(self): return (os.system, ('echo hacked',))\n"
        f"torch.save({{'w': torch.zeros(2), 'x': P()}}, {str(evil)!r})\n"
    )
    subprocess.run([torchvision_python, "-c", code], check=True)
    with pytest.raises(WeightsError, match="refusing to unpickle"):
        read_state_dict(evil)


def test_new_head_keeps_backbone_and_reports(r18):
    pth, ref = r18
    model, variables, report = create_pretrained(pth, num_classes=3, arch="resnet18", image_size=64)
    assert variables["params"]["fc"]["kernel"].shape == (512, 3)
    assert report.reinitialized == ["params/fc/bias (7,) -> (3,)", "params/fc/kernel (512, 7) -> (512, 3)"]
    sd, _ = read_state_dict(pth)
    backbone_keys = [k for k in sd if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    assert len(report.loaded) == len(backbone_keys)
    ported = port_torchvision(pth, "resnet18")
    # Backbone: the pooled features equal those of the fully ported 7-way model.
    _, f_new = model.apply(variables, ref["x64"], return_features=True)
    _, f_old = create_model("resnet18", 7).apply(ported, ref["x64"], return_features=True)
    np.testing.assert_array_equal(f_new["pooled"], f_old["pooled"])
    assert report.summary() == (
        f"loaded {len(backbone_keys)} variables; re-initialised params/fc/bias (7,) -> (3,), "
        "params/fc/kernel (512, 7) -> (512, 3)"
    )


def test_merge_refuses_backbone_mismatch(r18):
    ported = port_torchvision(r18[0], "resnet18")
    model = create_model("resnet34", 10)
    init = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(WeightsError, match="do not fit the model: missing batch_stats/layer1_2/bn1/mean"):
        merge_pretrained(init, ported)


# --- registry: download, cache, checksum, offline -------------------------------------------------


class _Server:
    """A file server on 127.0.0.1; ``truncate`` serves half the body under the full Content-Length."""

    def __init__(self, payload: bytes):
        self.payload, self.requests, self.truncate = payload, 0, False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.payload)))
                self.end_headers()
                body = outer.payload[: len(outer.payload) // 2] if outer.truncate else outer.payload
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/w.bin"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = _Server(np.random.default_rng(0).bytes(300_000))
    yield s
    s.httpd.shutdown()


def _spec(url, payload, sha=None):
    sha = sha or hashlib.sha256(payload).hexdigest()
    return WeightSpec("toy.test", "resnet18", url, sha, "w.bin", "torchvision")


def test_download_verifies_and_caches(server, tmp_path, monkeypatch):
    monkeypatch.setenv("JTL_CACHE", str(tmp_path / "cache"))
    spec = _spec(server.url, server.payload)
    path = fetch(spec)
    assert path == tmp_path / "cache" / "weights" / "w.bin"
    assert path.read_bytes() == server.payload
    assert fetch(spec) == path and server.requests == 1  # second call served from the cache


def test_sha256_prefix_accepted(server, tmp_path):
    spec = _spec(server.url, server.payload, sha=hashlib.sha256(server.payload).hexdigest()[:8])
    assert fetch(spec, cache=tmp_path).read_bytes() == server.payload


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    spec = _spec(server.url, server.payload, sha="0" * 64)
    with pytest.raises(ChecksumError, match=r"w\.bin: sha256 .* does not match toy\.test"):
        fetch(spec, cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_truncated_download_leaves_nothing(server, tmp_path):
    server.truncate = True
    with pytest.raises(DownloadError, match="truncated: got 150000 of 300000 bytes"):
        fetch(_spec(server.url, server.payload), cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cached_file_detected(server, tmp_path):
    (tmp_path / "w.bin").write_bytes(b"garbage")
    with pytest.raises(ChecksumError, match=f"{tmp_path / 'w.bin'}: sha256"):
        fetch(_spec(server.url, server.payload), cache=tmp_path)


def test_offline_error_says_where_to_put_the_file(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = _spec(f"http://127.0.0.1:{port}/w.bin", b"x")
    with pytest.raises(DownloadError, match=f"put the file at {tmp_path / 'w.bin'} \\(sha256 "):
        fetch(spec, cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_registry_entries_are_consistent():
    from jtl.models import family_of
    from jtl.weights import REGISTRY

    for name, spec in REGISTRY.items():
        assert name.startswith(spec.arch.removeprefix("timm_") + ".")
        assert spec.arch in family_of(spec.arch).torch_archs, name  # a portable architecture
        if spec.sha256 or not spec.url.startswith("https://huggingface.co/timm/"):  # else the hub's announced digest
            assert len(spec.sha256) in (8, 64) and int(spec.sha256, 16) >= 0
        if spec.format == "torchvision":  # torchvision (and DeiT) file names embed the sha256 prefix
            assert spec.filename.rsplit("-", 1)[1].split(".")[0] == spec.sha256[:8], name
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"} <= {
        s.arch for s in REGISTRY.values() if s.name.endswith(".tv_in1k")
    }
    assert {"resnet50", "resnet101", "resnet152"} <= {s.arch for s in REGISTRY.values() if s.name.endswith(".tv2_in1k")}
    assert "resnet50.a1_in1k" in REGISTRY


def test_torch_free_reader_matches_torch(tmp_path, torchvision_python):
    """Dtypes, non-contiguous views, shared storages and offsets read as torch wrote them."""
    import subprocess

    code = f"""
import torch, numpy as np, collections
g = torch.Generator().manual_seed(0)
base = torch.randn(6, 5, generator=g)
sd = collections.OrderedDict(
    f32=torch.randn(4, 3, 2, 2, generator=g), f64=torch.randn(3, generator=g).double(),
    f16=torch.randn(5, generator=g).half(), i64=torch.arange(7), u8=torch.arange(9, dtype=torch.uint8),
    b=torch.tensor([True, False]), scalar=torch.tensor(3.5), transposed=base.t(), sliced=base[2:4, 1:],
    shared=base, empty=torch.zeros(0, 3))
torch.save(sd, {str(tmp_path / 'x.pth')!r})
np.savez({str(tmp_path / 'x.npz')!r}, **{{k: v.numpy() for k, v in sd.items()}})
"""
    subprocess.run([torchvision_python, "-c", code], check=True)
    got, _ = read_state_dict(tmp_path / "x.pth")
    want = np.load(tmp_path / "x.npz")
    assert list(got) == list(want.files)
    for k in want.files:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_torchvision_entries_match_torchvision_weight_enums(torchvision_python):
    """Every torchvision-format registry entry from download.pytorch.org has the URL and the
    ImageNet top-1 that the real torchvision's weight enums publish (Debian's torchvision 0.14)."""
    import json
    import subprocess

    from jtl.weights import REGISTRY

    code = """
import json, torchvision.models as m
from torchvision.models._api import WeightsEnum
out = {}
for name in dir(m):  # the classification models' weight enums, e.g. ResNet50_Weights
    enum = getattr(m, name)
    if isinstance(enum, type) and issubclass(enum, WeightsEnum) and enum is not WeightsEnum:
        for w in enum:
            out[w.url] = w.meta["_metrics"]["ImageNet-1K"]["acc@1"]
print(json.dumps(out))
"""
    published = json.loads(subprocess.run([torchvision_python, "-c", code], check=True, capture_output=True,
                                          text=True).stdout)
    tv = [s for s in REGISTRY.values() if s.url.startswith("https://download.pytorch.org/models/")]
    assert {"efficientnet_b0", "inception_v3", "densenet121", "mobilenet_v3_large"} <= {s.arch for s in tv}
    for spec in tv:
        assert spec.url in published, spec.name
        assert spec.top1 == pytest.approx(published[spec.url], abs=1e-3), spec.name



def test_inception_weights_name_their_normalization():
    """The registry's Inception-v3 entry asks for (x - 0.5) / 0.5, which data.normalize="inception" gives."""
    from jtl.data import augment
    from jtl.weights import REGISTRY, get_spec

    assert get_spec("inception_v3.tv_in1k").normalize == "inception"
    assert augment.INCEPTION_MEAN == augment.INCEPTION_STD == (0.5, 0.5, 0.5)
    # the hub entries' scaling is checked against timm's own configs (tests/test_weights_hub.py)
    fixed = {n: s.normalize for n, s in REGISTRY.items() if s.sha256 and not n.startswith("inception")}
    assert set(fixed.values()) == {"imagenet"}
