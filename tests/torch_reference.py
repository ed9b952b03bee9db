"""Reference outputs from the real torchvision, run as ``/usr/bin/python3 tests/torch_reference.py``.

Builds ``torchvision.models.<arch>`` with random weights (BatchNorm affine
parameters and running statistics randomised too, so eval mode is not the
identity), saves its state dict, and records for random NCHW batches: eval-mode
logits, train-mode logits, and the running statistics after one train-mode
forward pass, the train-mode ones also in float64. Runs under the system Python with Debian's python3-torchvision;
jtl itself never imports torch.
"""

import argparse
import copy

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
    a = p.parse_args()
    torch.manual_seed(a.seed)
    model = getattr(torchvision.models, a.arch)(num_classes=a.num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), a.pth)
    out = {}
    for size in map(int, a.sizes.split(",")):
        x = torch.randn(a.batch, 3, size, size)
        out[f"x{size}"] = x.permute(0, 2, 3, 1).numpy()  # NHWC for jtl
        model.eval()
        with torch.no_grad():
            out[f"eval{size}"] = model(x).numpy()
        trained = copy.deepcopy(model).train()
        with torch.no_grad():
            out[f"train{size}"] = trained(x).numpy()
        for k, v in trained.state_dict().items():
            if k.endswith("running_mean") or k.endswith("running_var"):
                out[f"stats{size}/{k}"] = v.numpy()
        # float64 train mode: exact semantics, free of float32 rounding chaos.
        trained64 = copy.deepcopy(model).double().train()
        with torch.no_grad():
            out[f"train64_{size}"] = trained64(x.double()).numpy()
        for k, v in trained64.state_dict().items():
            if k.endswith("running_mean") or k.endswith("running_var"):
                out[f"stats64_{size}/{k}"] = v.numpy()
    np.savez(a.out, **out)


if __name__ == "__main__":
    main()
