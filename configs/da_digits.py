"""scikit-learn digits -> MNIST-M-style digits, unsupervised domain adaptation (a small, fast task).

The target images come from the digits held out of the source's training split;
ARG picks the method (jtl.methods.METHODS)::

    jtl train --config configs/da_digits.py:source_only --workdir runs/digits/source_only
    jtl train --config configs/da_digits.py:cdan,init=runs/digits/source_only --workdir runs/digits/cdan
"""

from da_common import da_config, da_sweep


def get_config(arg=None):
    return da_config(arg, source="digits", target="digits:mnistm", image_size=16, steps=600, batch_size=32)


def get_sweep(arg=None):
    return da_sweep(arg)
