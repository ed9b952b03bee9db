"""Registry entries for timm's files on the Hugging Face hub (ViT, DeiT, Swin, ConvNeXt, EfficientNet).

References: timm 1.0's own pretrained configurations (hub id, head size, input scaling), a
miniature hub on 127.0.0.1 that announces each file's sha256 the way Hugging Face does
(``X-Linked-Etag`` on the redirect to its storage), and real timm's logits for a file timm
itself wrote, fetched through that hub and loaded by ``create_pretrained``.
"""

import dataclasses
import hashlib
import http.server
import json
import subprocess
import threading

import numpy as np
import pytest

from jtl.errors import ChecksumError, DownloadError
from jtl.weights import REGISTRY, registry
from jtl.weights.registry import WeightSpec, fetch

HUB = [s for s in REGISTRY.values() if s.url.startswith("https://huggingface.co/timm/") and not s.sha256]


class _Hub:
    """``/timm/<name>/resolve/main/model.safetensors`` answers 302 to ``/storage/<name>`` with
    ``X-Linked-Etag: "<announce>"``; the storage serves the bytes and announces nothing."""

    def __init__(self):
        self.files, self.announce, self.requests = {}, {}, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests.append(self.path)
                parts = self.path.split("/")
                if self.path.startswith("/timm/"):
                    name = parts[2]
                    self.send_response(302)
                    self.send_header("Location", f"/storage/{name}")
                    if outer.announce.get(name):
                        self.send_header("X-Linked-Etag", f'"{outer.announce[name]}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = outer.files[parts[2]]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add(self, spec: WeightSpec, body: bytes, announce: str | None = "true") -> WeightSpec:
        name = spec.name
        self.files[name] = body
        self.announce[name] = hashlib.sha256(body).hexdigest() if announce == "true" else announce
        return dataclasses.replace(spec, url=f"{self.base}/timm/{name}/resolve/main/model.safetensors")


@pytest.fixture
def hub():
    h = _Hub()
    yield h
    h.httpd.shutdown()


SPEC = WeightSpec("toy_hub.test", "vit_tiny_patch16_224", "", "", "toy_hub.test.safetensors", "timm")
BODY = np.random.default_rng(0).bytes(200_000)


def test_hub_announced_digest_is_checked_and_recorded(hub, tmp_path):
    spec = hub.add(SPEC, BODY)
    path = fetch(spec, cache=tmp_path)
    assert path.read_bytes() == BODY
    assert (tmp_path / "toy_hub.test.safetensors.sha256").read_text().strip() == hashlib.sha256(BODY).hexdigest()
    assert fetch(spec, cache=tmp_path) == path and len(hub.requests) == 2  # redirect + storage, once
    path.write_bytes(BODY[:-1] + b"\0")  # damage after the download is caught by the record
    with pytest.raises(ChecksumError, match=r"toy_hub\.test\.safetensors: sha256 .* does not match toy_hub\.test"):
        fetch(spec, cache=tmp_path)


def test_body_that_differs_from_the_announcement_leaves_nothing(hub, tmp_path):
    spec = hub.add(SPEC, BODY, announce="ab" * 32)
    with pytest.raises(ChecksumError, match=r"sha256 .* does not match toy_hub\.test's abababab"):
        fetch(spec, cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_no_announcement_and_no_pin_is_refused(hub, tmp_path):
    spec = hub.add(SPEC, BODY, announce=None)
    with pytest.raises(DownloadError, match=r"announced no sha256 \(X-Linked-Etag\) and the registry pins none"):
        fetch(spec, cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_registry_pin_wins_over_the_announcement(hub, tmp_path):
    """A pinned digest is checked even when the server announces the (wrong) body's own digest."""
    spec = hub.add(dataclasses.replace(SPEC, sha256="cd" * 32), BODY)
    with pytest.raises(ChecksumError, match="cdcdcdcd"):
        fetch(spec, cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_file_put_by_hand_is_recorded_then_checked(tmp_path):
    (tmp_path / SPEC.filename).write_bytes(BODY)
    assert fetch(SPEC, cache=tmp_path).read_bytes() == BODY  # offline: the user's file is taken as given
    assert (tmp_path / (SPEC.filename + ".sha256")).read_text().strip() == hashlib.sha256(BODY).hexdigest()
    (tmp_path / SPEC.filename).write_bytes(BODY[1:])
    with pytest.raises(ChecksumError):
        fetch(SPEC, cache=tmp_path)


def test_read_only_cache_still_serves_a_hand_placed_file(tmp_path, monkeypatch):
    (tmp_path / SPEC.filename).write_bytes(BODY)

    def refuse(path, digest):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(registry, "_write_sidecar", refuse)  # root ignores chmod, so refuse here
    assert fetch(SPEC, cache=tmp_path).read_bytes() == BODY
    assert sorted(p.name for p in tmp_path.iterdir()) == [SPEC.filename]


def test_offline_error_points_to_the_hub_listing(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = dataclasses.replace(SPEC, url=f"http://127.0.0.1:{port}/timm/x/resolve/main/model.safetensors")
    with pytest.raises(DownloadError, match=r"put the file at .*toy_hub\.test\.safetensors \(sha256 as listed at "
                                            r"http://127\.0\.0\.1:\d+/timm/x/blob/main/model\.safetensors\)"):
        fetch(spec, cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_hub_entries_match_timms_pretrained_configs(timm_python):
    """Each hub entry's repository, head size and input scaling are the ones timm 1.0 declares
    for that name; its architecture is timm's (EfficientNet's under jtl's timm_ prefix)."""
    code = """
import json, sys, timm
from timm.models import get_pretrained_cfg
out = {}
for name in json.loads(sys.argv[1]):
    c = get_pretrained_cfg(name)
    out[name] = dict(hub=c.hf_hub_id, classes=c.num_classes, mean=list(c.mean), std=list(c.std),
                     archs=timm.list_models(name.split(".")[0]))
print(json.dumps(out))
"""
    names = [s.name for s in HUB]
    assert {"vit", "deit", "swin", "convnext", "efficientnet"} <= {n.split("_")[0] for n in names}
    out = subprocess.run([timm_python, "-c", code, json.dumps(names)], check=True, capture_output=True, text=True)
    cfgs = json.loads(out.stdout.splitlines()[-1])  # timm may print a warning about huggingface_hub first
    scaling = {"imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), "inception": ([0.5] * 3, [0.5] * 3)}
    for spec in HUB:
        cfg = cfgs[spec.name]
        timm_arch = spec.name.split(".")[0]
        assert cfg["hub"] == f"timm/{spec.name}", spec.name
        assert spec.url == registry.HF.format(spec.name)
        assert cfg["classes"] == spec.num_classes, spec.name
        assert (cfg["mean"], cfg["std"]) == scaling[spec.normalize], spec.name
        assert cfg["archs"] == [timm_arch] and spec.arch in (timm_arch, f"timm_{timm_arch}"), spec.name


def test_hub_file_written_by_timm_gives_timms_logits(hub, tmp_path, monkeypatch, timm_python):
    """timm writes a ViT-Ti/16 with ImageNet-21k's 21,843-way head as safetensors; the miniature
    hub serves it under the registry's name; ``create_pretrained`` fetches, checks, ports and
    runs it: logits within 1e-4 x max |logit| of timm's, and a 10-way head re-initialised."""
    from jtl.weights import create_pretrained

    code = f"""
import numpy as np, timm, torch
from safetensors.torch import save_file
torch.manual_seed(0)
m = timm.create_model("vit_tiny_patch16_224", num_classes=21843).eval()
with torch.no_grad():
    for p in m.parameters():
        p.add_(0.02 * torch.randn_like(p))
x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
save_file({{k: v.contiguous() for k, v in m.state_dict().items()}}, {str(tmp_path / "w.safetensors")!r})
with torch.no_grad():
    np.savez({str(tmp_path / "ref.npz")!r}, x=x.permute(0, 2, 3, 1).numpy(), logits=m(x).numpy())
"""
    subprocess.run([timm_python, "-c", code], check=True)
    name = "vit_tiny_patch16_224.augreg_in21k"
    spec = hub.add(REGISTRY[name], (tmp_path / "w.safetensors").read_bytes())
    monkeypatch.setitem(REGISTRY, name, spec)
    monkeypatch.setenv("JTL_CACHE", str(tmp_path / "cache"))
    ref = np.load(tmp_path / "ref.npz")

    model, variables, report = create_pretrained(name, num_classes=21843)
    assert not report.reinitialized
    logits = np.asarray(model.apply(variables, ref["x"], train=False))
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4 * np.abs(ref["logits"]).max())

    _, _, report10 = create_pretrained(name, num_classes=10)
    assert [r.split()[0] for r in report10.reinitialized] == ["params/head/bias", "params/head/kernel"]
    assert len(hub.requests) == 2  # the second model was read from the cache
