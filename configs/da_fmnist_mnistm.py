"""Fashion-MNIST -> MNIST-M-style (each image blended with a photo patch, |patch - x|) Fashion-MNIST, unsupervised domain adaptation.

The target images come from Fashion-MNIST's test split (disjoint from the source's
training images); ARG picks the method (jtl.methods.METHODS), optionally with the
source warm-up run to start from::

    jtl train --config configs/da_fmnist_mnistm.py:source_only --workdir runs/fmnist_mnistm/source_only
    jtl train --config configs/da_fmnist_mnistm.py:dann,init=runs/fmnist_mnistm/source_only --workdir runs/fmnist_mnistm/dann

Results (3 seeds, model selection without target labels): docs/results.md.
"""

from da_common import da_config, da_sweep


def get_config(arg=None):
    return da_config(arg, source="fashion_mnist", target="fashion_mnist:mnistm", image_size=28)


def get_sweep(arg=None):
    return da_sweep(arg)
