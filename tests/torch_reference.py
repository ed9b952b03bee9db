"""Reference outputs from the real torchvision, run as ``/usr/bin/python3 tests/torch_reference.py``.

Builds ``torchvision.models.<arch>`` with random weights (BatchNorm affine
parameters and running statistics randomised too, so eval mode is not the
identity), saves its state dict, and records for random NCHW batches: eval-mode
logits, train-mode logits, and the running statistics after one train-mode
forward pass, the train-mode ones also in float64. Runs under the system Python with Debian's python3-torchvision;
jtl itself never imports torch.

Options for the other families (all off by default, which leaves the ResNet outputs
unchanged; flags take 0/1): ``--random-biases 1`` draws every convolution/linear bias from N(0, 0.1^2)
(torchvision zero-initialises most, which would hide a mis-ported bias);
``--no-dropout 1`` sets every dropout's p to 0 (train mode then is deterministic);
``--modes`` chooses the outputs (``eval,train,train64``); ``--count-params 1`` stores
the parameter count as ``n_params``; ``--head NAME`` stores the eval-mode input of
sub-module NAME (``auto``: the last Linear, the classifier) as ``pooled<size>``.
``--arch`` may list several architectures (``{arch}`` in ``--pth`` and ``--out``), which
saves the torch start-up per architecture. ``--kwargs JSON`` passes keyword arguments to
the model constructor (``{"stochastic_depth_prob": 0}`` for EfficientNet); ``--set-attrs
JSON`` sets attributes of the model after its state dict is saved and its parameters
counted (``{"aux_logits": false, "AuxLogits": null}`` drops Inception-v3's auxiliary
classifier from the forward passes, as torchvision's own builder does for
``aux_logits=False``). A model whose train-mode output is a (logits, aux_logits) tuple
(Inception-v3) also stores the auxiliary logits as ``aux<size>`` / ``aux64_<size>``.
``--eval-modules A,B`` puts those sub-modules in eval mode during the train-mode passes
(frozen parts: BatchNorm on running averages, statistics unchanged, no dropout).
"""

import argparse
import copy
import json

import numpy as np
import torch
import torchvision


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", required=True)
    p.add_argument("--sizes", default="224,64")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pth", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--random-biases", type=int, default=0)
    p.add_argument("--no-dropout", type=int, default=0)
    p.add_argument("--modes", default="eval,train,train64")
    p.add_argument("--count-params", type=int, default=0)
    p.add_argument("--head", default=None)
    p.add_argument("--kwargs", default="{}")
    p.add_argument("--set-attrs", default="{}")
    p.add_argument("--eval-modules", default="")
    a = p.parse_args()
    archs = a.arch.split(",")
    if len(archs) > 1 and not ("{arch}" in a.pth and "{arch}" in a.out):
        p.error("several --arch need {arch} in --pth and --out")
    for arch in archs:  # each from the same seed: the same outputs as a run of its own
        reference(arch, a, a.pth.replace("{arch}", arch), a.out.replace("{arch}", arch))


def reference(arch, a, pth, out_path):
    modes = set(a.modes.split(","))
    torch.manual_seed(a.seed)
    model = getattr(torchvision.models, arch)(num_classes=a.num_classes, **json.loads(a.kwargs))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
            if a.random_biases and isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
                m.bias.normal_(0, 0.1)
            if a.no_dropout and isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    torch.save(model.state_dict(), pth)
    out = {}
    if a.count_params:
        out["n_params"] = np.array(sum(p.numel() for p in model.parameters()))
    for name, value in json.loads(a.set_attrs).items():
        setattr(model, name, value)
    head = a.head
    if head == "auto":  # the classifier: the last Linear
        head = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    for size in map(int, a.sizes.split(",")):
        x = torch.randn(a.batch, 3, size, size)
        out[f"x{size}"] = x.permute(0, 2, 3, 1).numpy()  # NHWC for jtl
        if "eval" in modes:
            model.eval()
            seen = []
            hook = model.get_submodule(head).register_forward_pre_hook(lambda m, i: seen.append(i[0])) if head else None
            with torch.no_grad():
                out[f"eval{size}"] = model(x).numpy()
            if hook is not None:
                hook.remove()
                out[f"pooled{size}"] = seen[0].numpy()
        if "train" in modes:
            trained = _train_mode(copy.deepcopy(model), a.eval_modules)
            with torch.no_grad():
                _store(out, trained(x), f"train{size}", f"aux{size}")
            for k, v in trained.state_dict().items():
                if k.endswith("running_mean") or k.endswith("running_var"):
                    out[f"stats{size}/{k}"] = v.numpy()
        if "train64" in modes:
            # float64 train mode: exact semantics, free of float32 rounding chaos.
            trained64 = _train_mode(copy.deepcopy(model).double(), a.eval_modules)
            with torch.no_grad():
                _store(out, trained64(x.double()), f"train64_{size}", f"aux64_{size}")
            for k, v in trained64.state_dict().items():
                if k.endswith("running_mean") or k.endswith("running_var"):
                    out[f"stats64_{size}/{k}"] = v.numpy()
    np.savez(out_path, **out)


def _train_mode(model, eval_modules):
    model.train()
    for name in filter(None, eval_modules.split(",")):
        model.get_submodule(name).eval()
    return model


def _store(out, y, key, aux_key):
    """Train-mode output ``y``: logits, or Inception's (logits, aux_logits)."""
    if isinstance(y, tuple):
        y, aux = y
        out[aux_key] = aux.numpy()
    out[key] = y.numpy()


if __name__ == "__main__":
    main()
