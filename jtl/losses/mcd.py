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


def class_balance(logits, *, eps=1e-6):
    """Class-balance term of Transfer-Learning-Library's MCD (``tllib/alignment/mcd.py``, ``entropy``;
    weight ``--trade-off-entropy 0.01`` in ``examples/domain_adaptation/image_classification/mcd.py``,
    on both classifiers' target predictions in steps A and B), not in Saito et al. (2018):

        L = -1/C sum_c log(p_bar_c + eps),   p_bar = 1/B sum_i softmax(z_i),

    the cross-entropy from the uniform distribution to the batch's mean prediction,
    ``log C + KL(u || p_bar)`` for eps = 0: smallest (about log C) when the batch predicts every
    class equally often. TLlib's eps = 1e-6 is kept as the default.
    """
    p_bar = jnp.mean(jax.nn.softmax(as_float(logits), axis=-1), axis=0)
    return -jnp.mean(jnp.log(p_bar + eps))
