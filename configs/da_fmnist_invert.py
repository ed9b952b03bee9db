"""Fashion-MNIST -> colour-inverted Fashion-MNIST, unsupervised domain adaptation.

The target images come from Fashion-MNIST's test split (disjoint from the source's
training images); ARG picks the method (jtl.methods.METHODS), optionally with the
source warm-up run to start from::

    jtl train --config configs/da_fmnist_invert.py:source_only --workdir runs/fmnist_invert/source_only
    jtl train --config configs/da_fmnist_invert.py:dann,init=runs/fmnist_invert/source_only --workdir runs/fmnist_invert/dann

Results (3 seeds, model selection without target labels): docs/results.md.
"""

from da_common import da_config, da_sweep


def get_config(arg=None):
    return da_config(arg, source="fashion_mnist", target="fashion_mnist:invert", image_size=28)


def get_sweep(arg=None):
    return da_sweep(arg)
