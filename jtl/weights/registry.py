"""Official ImageNet weights: URLs, sha256, a local cache and clear offline errors.

Files are cached under ``$JTL_CACHE`` (default ``~/.cache/jtl``) as
``<cache>/weights/<filename>``. A download streams into ``<filename>.partial``,
checks the length announced by the server and the sha256, and only then is
renamed into place, so the cache never holds a half-written file. Without
network, the error names the URL and the exact path to put the file at.

``sha256`` is the full digest where it is published; for
``resnet152.tv2_in1k`` only torchvision's 8-hex-digit prefix (the part of the
file name after the dash, which torchvision itself checks) is known, and the
digest must start with it. timm's Hugging Face files (ViT, DeiT, Swin, ConvNeXt,
EfficientNet) are pinned by the hub itself: ``sha256=""`` means "the digest the
server announces", Hugging Face's ``X-Linked-Etag`` header, which is an LFS
file's sha256. The body must match it, and the digest is kept beside the cached
file (``<filename>.sha256``) so a later read checks the file against it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from jtl.errors import ChecksumError, ConfigError, DownloadError, WeightsError

TV = "https://download.pytorch.org/models/"
HF = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
FB_DEIT = "https://dl.fbaipublicfiles.com/deit/"


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """One published checkpoint."""

    name: str  # "<arch>.<tag>", timm's naming: resnet50.tv_in1k, resnet50.tv2_in1k, resnet50.a1_in1k
    arch: str
    url: str
    sha256: str  # full hex digest, a prefix of at least 8 hex digits, or "" (announced by the hub)
    filename: str
    format: str  # "torchvision" (.pth) or "timm" (.safetensors)
    num_classes: int = 1000
    top1: float | None = None  # ImageNet-1k top-1 reported by the publisher
    note: str = ""
    normalize: str = "imagenet"  # the input scaling the weights were trained on (jtl's data.normalize)


def _tv(arch: str, tag: str, file: str, sha: str, top1: float) -> WeightSpec:
    return WeightSpec(f"{arch}.{tag}", arch, TV + file, sha, file, "torchvision", top1=top1,
                      note="torchvision IMAGENET1K_" + ("V1" if tag == "tv_in1k" else "V2"))


def _timm(arch: str, tag: str, sha: str, top1: float) -> WeightSpec:
    name = f"{arch}.{tag}"
    return WeightSpec(name, arch, HF.format(name), sha, f"{name}.safetensors", "timm", top1=top1,
                      note="timm; top-1 at 288 px test size")


def _hub(name: str, top1: float | None, *, arch: str | None = None, classes: int = 1000,
         normalize: str = "imagenet") -> WeightSpec:
    """A timm file on the Hugging Face hub, checked against the sha256 the hub announces.
    ``top1``: timm's results-imagenet.csv at 224 px (None for pretraining-only heads)."""
    return WeightSpec(name, arch or name.split(".")[0], HF.format(name), "", f"{name}.safetensors", "timm",
                      num_classes=classes, top1=top1, note="timm (Hugging Face hub); top-1 at 224 px",
                      normalize=normalize)


# ViT/AugReg (Steiner et al. 2021) weights were trained on (x - 0.5) / 0.5 inputs: data.normalize=inception.
_VIT = dict(normalize="inception")


REGISTRY: dict[str, WeightSpec] = {
    s.name: s
    for s in [
        _tv("resnet18", "tv_in1k", "resnet18-f37072fd.pth", "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec", 69.758),
        _tv("resnet34", "tv_in1k", "resnet34-b627a593.pth", "b627a593bcbe140c234610266fe4f8ae95ea42fc881d091c9b6052e6b1d0590f", 73.314),
        _tv("resnet50", "tv_in1k", "resnet50-0676ba61.pth", "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a", 76.130),
        _tv("resnet101", "tv_in1k", "resnet101-63fe2227.pth", "63fe2227b86e8f1f2063f43a75c84d195911b6a0eace650907dd3dc62dd49a0a", 77.374),
        _tv("resnet152", "tv_in1k", "resnet152-394f9c45.pth", "394f9c45966e3651a89bbb78a48410a6755854ce4a5ab64927cf1c7247f85e58", 78.312),
        _tv("resnet50", "tv2_in1k", "resnet50-11ad3fa6.pth", "11ad3fa62ca79e40addfd354a8ec4b7c75143b3038b8d2a807fbc68deab379ca", 80.858),
        _tv("resnet101", "tv2_in1k", "resnet101-cd907fc2.pth", "cd907fc2a0de2292b2ba2b27d2216bc672d84632d1cf20058d01c0c03b5e020e", 81.886),
        _tv("resnet152", "tv2_in1k", "resnet152-f82ba261.pth", "f82ba261", 82.284),
        # Other torchvision families: the 8 hex digits after the dash are torchvision's sha256 prefix
        # (torchvision checks exactly that); top-1 from torchvision's weight metadata.
        _tv("vgg11", "tv_in1k", "vgg11-8a719046.pth", "8a719046", 69.020),
        _tv("vgg16", "tv_in1k", "vgg16-397923af.pth", "397923af", 71.592),
        _tv("vgg16_bn", "tv_in1k", "vgg16_bn-6c64b313.pth", "6c64b313", 73.360),
        _tv("alexnet", "tv_in1k", "alexnet-owt-7be5be79.pth", "7be5be79", 56.522),
        dataclasses.replace(_tv("inception_v3", "tv_in1k", "inception_v3_google-0cc3c7bd.pth", "0cc3c7bd", 77.294),
                            normalize="inception"),  # torchvision's transform_input: (x - 0.5) / 0.5
        _tv("efficientnet_b0", "tv_in1k", "efficientnet_b0_rwightman-3dd342df.pth", "3dd342df", 77.692),
        _tv("densenet121", "tv_in1k", "densenet121-a639ec97.pth", "a639ec97", 74.434),
        _tv("mobilenet_v3_large", "tv_in1k", "mobilenet_v3_large-8738ca79.pth", "8738ca79", 74.042),
        _tv("mobilenet_v3_large", "tv2_in1k", "mobilenet_v3_large-5c1a4163.pth", "5c1a4163", 75.274),
        # DeiT (Touvron et al. 2021): the authors' files, whose loader checks the same sha256 prefix;
        # top-1 from the DeiT README. A "model" wrapper in the .pth is unwrapped when read.
        WeightSpec("deit_small_patch16_224.fb_in1k", "deit_small_patch16_224", FB_DEIT + "deit_small_patch16_224-cd65a155.pth",
                   "cd65a155", "deit_small_patch16_224-cd65a155.pth", "torchvision", top1=79.9, note="facebookresearch/deit"),
        WeightSpec("deit_base_patch16_224.fb_in1k", "deit_base_patch16_224", FB_DEIT + "deit_base_patch16_224-b5f2ef4d.pth",
                   "b5f2ef4d", "deit_base_patch16_224-b5f2ef4d.pth", "torchvision", top1=81.8, note="facebookresearch/deit"),
        _timm("resnet18", "a1_in1k", "80c49dee3da4822c009c5a7fe591e9223c5a2cfcf95a4067ca4dfb5a7b89c612", 73.158),
        _timm("resnet34", "a1_in1k", "829a220f9529d2b1ffdc8719d3273463001e0daf411eaf1916865d9db62c0ed2", 77.918),
        _timm("resnet50", "a1_in1k", "773525d5821de224f8f30c33377b7a795d7863e08522698200d3217d3f2a41bb", 81.214),
        _timm("resnet101", "a1h_in1k", "1a076c0384295e7d3704f201c5711ff245507db934230bab72ff3014a95f90fe", 82.778),
        # timm's files on the Hugging Face hub; names, heads and input scaling as timm 1.0's
        # pretrained configs give them (checked in the tests), top-1 from timm's results-imagenet.csv.
        _hub("vit_tiny_patch16_224.augreg_in21k_ft_in1k", 75.452, **_VIT),
        _hub("vit_tiny_patch16_224.augreg_in21k", None, classes=21843, **_VIT),
        _hub("vit_small_patch16_224.augreg_in21k_ft_in1k", 81.402, **_VIT),
        _hub("vit_small_patch16_224.augreg_in1k", 78.842, **_VIT),
        _hub("vit_small_patch16_224.augreg_in21k", None, classes=21843, **_VIT),
        _hub("vit_base_patch16_224.augreg2_in21k_ft_in1k", 85.108, **_VIT),
        _hub("vit_base_patch16_224.augreg_in21k_ft_in1k", 84.534, **_VIT),
        _hub("vit_base_patch16_224.augreg_in1k", 79.154, **_VIT),
        _hub("vit_base_patch16_224.augreg_in21k", None, classes=21843, **_VIT),
        _hub("vit_base_patch16_224.orig_in21k_ft_in1k", 81.782, **_VIT),
        _hub("deit_tiny_patch16_224.fb_in1k", 72.190),
        _hub("deit_tiny_distilled_patch16_224.fb_in1k", 74.538),
        _hub("deit_small_distilled_patch16_224.fb_in1k", 81.204),
        _hub("deit_base_distilled_patch16_224.fb_in1k", 83.384),
        _hub("swin_tiny_patch4_window7_224.ms_in1k", 81.388),
        _hub("swin_tiny_patch4_window7_224.ms_in22k_ft_in1k", 80.966),
        _hub("swin_tiny_patch4_window7_224.ms_in22k", None, classes=21841),
        _hub("convnext_atto.d2_in1k", 75.672),
        _hub("convnext_tiny.fb_in1k", 82.066),
        _hub("convnext_tiny.fb_in22k_ft_in1k", 82.900),
        _hub("convnext_tiny.in12k_ft_in1k", 84.192),
        _hub("convnext_tiny.fb_in22k", None, classes=21841),
        _hub("convnext_small.fb_in1k", 83.144),
        _hub("convnext_small.fb_in22k_ft_in1k", 84.582),
        _hub("convnext_small.in12k_ft_in1k", 85.164),
        _hub("convnext_base.fb_in1k", 83.838),
        _hub("convnext_base.fb_in22k_ft_in1k", 85.814),
        _hub("convnext_base.fb_in22k", None, classes=21841),
        _hub("efficientnet_b0.ra_in1k", 77.698, arch="timm_efficientnet_b0"),
        _hub("efficientnet_b0.ra4_e3600_r224_in1k", 78.568, arch="timm_efficientnet_b0", normalize="inception"),
    ]
}
# torchvision has no IMAGENET1K_V2 for resnet18/34: their best torchvision weights are V1.


def check_normalization(init: str, normalize: str) -> None:
    """A run starting from registry weights ``init`` that names a fixed input scaling
    (``data.normalize`` "imagenet" or "inception") must name the one the weights were trained
    on: Inception-v3's Google weights expect ``(x - 0.5) / 0.5``, the others ImageNet's mean and
    std. "dataset" and "none" are deliberate choices and pass."""
    spec = REGISTRY.get(init)
    if spec is not None and normalize in ("imagenet", "inception") and normalize != spec.normalize:
        raise ConfigError(f"model.init {init} was trained on data.normalize={spec.normalize!r} inputs, "
                          f"not {normalize!r}; set data.normalize={spec.normalize}")


def get_spec(name: str) -> WeightSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def cache_dir() -> Path:
    """``$JTL_CACHE`` or ``~/.cache/jtl``."""
    return Path(os.environ.get("JTL_CACHE") or Path.home() / ".cache" / "jtl")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_digest(digest: str, expected: str, spec: WeightSpec, path: Path) -> None:
    if not digest.startswith(expected.lower()):
        raise ChecksumError(
            f"{path}: sha256 {digest[:16]}... does not match {spec.name}'s {expected[:16]}...; "
            "delete the file and download it again"
        )


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_sidecar(path: Path, digest: str) -> None:
    """``<file>.sha256``, written whole (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".sha256.partial")
    tmp.write_text(digest + "\n")
    os.replace(tmp, _sidecar(path))


def _check_cached(path: Path, spec: WeightSpec) -> None:
    """Check a cached file against the registry's digest, or for a hub-pinned entry against the
    digest recorded when it was downloaded. A file the user put there by hand (no record) is
    taken as given and its digest recorded, so later damage is still caught."""
    digest = sha256_file(path)
    expected = spec.sha256
    if not expected and _sidecar(path).exists():
        expected = _sidecar(path).read_text().strip()
    if expected:
        _check_digest(digest, expected, spec, path)
        return
    try:
        _write_sidecar(path, digest)
    except OSError:  # a read-only shared cache: the file is still used, unrecorded
        pass


def fetch(spec: WeightSpec | str, *, cache: str | os.PathLike | None = None, timeout: float = 30.0,
          progress: bool = False) -> Path:
    """Return the local path of ``spec``'s file, downloading and verifying it if needed."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    folder = Path(cache) if cache is not None else cache_dir() / "weights"
    path = folder / spec.filename
    if path.exists():
        _check_cached(path, spec)
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create cache directory {folder} ({e.strerror}); set JTL_CACHE to a writable directory") from None
    partial = path.with_name(path.name + ".partial")
    try:
        digest = _download(spec, partial, timeout, progress)
        if not spec.sha256:
            _write_sidecar(path, digest)
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return path


_SHA256 = re.compile(r'(?:W/)?"?([0-9a-f]{64})"?')


def announced_sha256(headers) -> str | None:
    """The sha256 a Hugging Face server announces for an LFS file (``X-Linked-Etag``), or None."""
    match = _SHA256.fullmatch((headers.get("X-Linked-Etag") or "").strip())
    return match.group(1) if match else None


class _AnnouncedDigest(urllib.request.HTTPRedirectHandler):
    """Follows redirects, keeping the first ``X-Linked-Etag``: the hub announces it on the
    redirect to its storage, whose own response does not repeat it."""

    def __init__(self):
        self.sha256 = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.sha256 = self.sha256 or announced_sha256(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _download(spec: WeightSpec, partial: Path, timeout: float, progress: bool) -> str:
    """Stream ``spec.url`` into ``partial``; returns the verified sha256."""
    h, size, expected = hashlib.sha256(), 0, None
    target = partial.with_name(partial.name[: -len(".partial")])
    redirects = _AnnouncedDigest()
    try:
        with urllib.request.build_opener(redirects).open(spec.url, timeout=timeout) as resp, open(partial, "wb") as out:
            expected = resp.headers.get("Content-Length")
            announced = redirects.sha256 or announced_sha256(resp.headers)
            bar = _progress_bar(expected, spec.filename) if progress else None
            while block := resp.read(1 << 20):
                out.write(block)
                h.update(block)
                size += len(block)
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
    except http.client.IncompleteRead as e:
        raise DownloadError(
            f"download of {spec.url} truncated: got {size + len(e.partial)} of {expected} bytes; try again"
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        digest = f"sha256 {spec.sha256}" if spec.sha256 else f"sha256 as listed at {spec.url.replace('/resolve/', '/blob/')}"
        raise DownloadError(f"cannot download {spec.url} ({reason}); without network, put the file at {target} ({digest})") from None
    if expected is not None and size != int(expected):
        raise DownloadError(f"download of {spec.url} truncated: got {size} of {expected} bytes; try again")
    pinned = spec.sha256 or announced
    if not pinned:
        raise DownloadError(f"{spec.url} announced no sha256 (X-Linked-Etag) and the registry pins none; "
                            f"refusing an unverified file: check it yourself and put it at {target}")
    digest = h.hexdigest()
    _check_digest(digest, pinned, spec, target)
    return digest


def _progress_bar(total, desc):
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=int(total) if total else None, unit="B", unit_scale=True, desc=desc, leave=False)
