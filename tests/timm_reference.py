"""Reference outputs from the real timm, run as ``.venv-timm/bin/python tests/timm_reference.py``.

Builds ``timm.create_model(NAME)`` with random weights (every float parameter and
buffer redrawn, so LayerNorm/BatchNorm affine terms, biases, tokens and LayerScale are
not their trivial initial values), saves its state dict as ``sd/<key>`` arrays, and
records for a random batch at each size: the input (NHWC), eval-mode logits and
pre-logits features, and train-mode logits with the BatchNorm running statistics after
that one train-mode pass (``stats<size>/<key>``). Drop rates are left at 0, so train
mode is deterministic. A size other than the native one, with ``--resize-model``, builds
the model at ``img_size=size`` and loads the state dict through the model's own
``checkpoint_filter_fn`` (timm's position-embedding resampling). jtl never imports torch.
"""

import argparse
import copy
import json
import sys

import numpy as np
import timm
import torch


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith(("weight", "gamma")) and t.ndim == 1:  # norm scales, LayerScale
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.ndim <= 1 or name.endswith(("cls_token", "dist_token", "pos_embed", "running_mean")):
                t.copy_(0.2 * torch.randn(t.shape, generator=g))


def outputs(model, x, prefix, out):
    model.eval()
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        out[f"eval{prefix}"] = model(x).numpy()
        out[f"features{prefix}"] = feats.numpy()
        trained = copy.deepcopy(model).train()
        out[f"train{prefix}"] = trained(x).numpy()
        for k, v in trained.state_dict().items():
            if k.endswith(("running_mean", "running_var")):
                out[f"stats{prefix}/{k}"] = v.numpy()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--sizes", default="224")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--kwargs", default="{}", help="JSON keyword arguments of timm.create_model")
    p.add_argument("--resize-model", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    kwargs = json.loads(a.kwargs)
    model = timm.create_model(a.model, pretrained=False, num_classes=a.num_classes, **kwargs)
    randomize(model, a.seed)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    out = {f"sd/{k}": v for k, v in sd.items()}
    out["num_params"] = np.asarray(sum(p.numel() for p in model.parameters()))
    rng = np.random.default_rng(a.seed)
    native = model.default_cfg.get("input_size", (3, 224, 224))[-1]
    for size in map(int, a.sizes.split(",")):
        x = rng.standard_normal((a.batch, 3, size, size)).astype(np.float32)
        out[f"x{size}"] = x.transpose(0, 2, 3, 1)
        m = model
        if size != native and a.resize_model:
            m = timm.create_model(a.model, pretrained=False, num_classes=a.num_classes, img_size=size, **kwargs)
            filter_fn = sys.modules[type(m).__module__].checkpoint_filter_fn
            m.load_state_dict(filter_fn({k: torch.from_numpy(v) for k, v in sd.items()}, m))
        outputs(m, torch.from_numpy(x), size, out)
    np.savez(a.out, **out)


if __name__ == "__main__":
    main()
