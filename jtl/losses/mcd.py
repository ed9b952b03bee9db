"""Maximum Classifier Discrepancy (Saito et al., "Maximum Classifier Discrepancy for
Unsupervised Domain Adaptation", CVPR 2018)."""

import jax
import jax.numpy as jnp

from jtl.losses._common import as_float


def mcd_discrepancy(logits1, logits2):
    """Discrepancy of two classifiers F1, F2 on the same samples:

        d = 1/(B C) sum_{i, c} |softmax(z1_i)_c - softmax(z2_i)_c|      (in [0, 2/C]).

    MCD trains a generator G and two classifiers F1, F2 with three steps per iteration
    (the trainer implements the schedule):

    A. G, F1, F2 minimise the source CE of both classifiers;
    B. G fixed, F1, F2 minimise ``CE_s(F1) + CE_s(F2) - d(F1(G(x_t)), F2(G(x_t)))``
       (maximise the target discrepancy while staying correct on source);
    C. F1, F2 fixed, G minimises ``d(F1(G(x_t)), F2(G(x_t)))``, repeated n times (n = 4 in the paper).
    """
    p1 = jax.nn.softmax(as_float(logits1), axis=-1)
    p2 = jax.nn.softmax(as_float(logits2), axis=-1)
    return jnp.mean(jnp.abs(p1 - p2))
