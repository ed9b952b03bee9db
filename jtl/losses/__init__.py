"""Pure loss functions for transfer learning and domain adaptation.

Every loss is ``jtl.losses.<name>(arrays..., *, options) -> scalar`` with no hidden state;
discriminators and extra heads live in the train state and only their outputs (or, for
the gradient penalty, a closure ``critic_fn``) are passed in. See docs/losses.md.
"""

from jtl.losses.adversarial import (
    cdan,
    dann,
    entropy_weights,
    multilinear_map,
    randomized_multilinear_map,
    randomized_multilinear_matrices,
)
from jtl.losses.classification import cross_entropy
from jtl.losses.confusion import entropy, information_maximization, mcc
from jtl.losses.coral import coral
from jtl.losses.mcd import mcd_discrepancy
from jtl.losses.mdd import mdd
from jtl.losses.mmd import jmmd, mk_mmd
from jtl.losses.norm import afn, hafn
from jtl.losses.reversal import grl, grl_coeff
from jtl.losses.self_training import pseudo_label_loss, pseudo_label_loss_with_aux
from jtl.losses.source_free import diversity, nrc, nrc_neighbours, shot_pseudo_labels, unit_rows
from jtl.losses.spectral import bnm, bsp
from jtl.losses.test_time import eata_entropy, eata_selection, fisher_penalty, reliable_entropy, reliable_mask
from jtl.losses.wasserstein import gradient_penalty, wdgrl_critic

__all__ = [
    "afn",
    "bnm",
    "bsp",
    "cdan",
    "coral",
    "cross_entropy",
    "dann",
    "diversity",
    "eata_entropy",
    "eata_selection",
    "entropy",
    "entropy_weights",
    "fisher_penalty",
    "gradient_penalty",
    "grl",
    "grl_coeff",
    "hafn",
    "information_maximization",
    "jmmd",
    "mcc",
    "mcd_discrepancy",
    "mdd",
    "mk_mmd",
    "multilinear_map",
    "nrc",
    "nrc_neighbours",
    "pseudo_label_loss",
    "pseudo_label_loss_with_aux",
    "randomized_multilinear_map",
    "randomized_multilinear_matrices",
    "reliable_entropy",
    "reliable_mask",
    "shot_pseudo_labels",
    "unit_rows",
    "wdgrl_critic",
]
