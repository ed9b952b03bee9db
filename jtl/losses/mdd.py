"""Margin Disparity Discrepancy (Zhang et al., "Bridging Theory and Algorithm for Domain
Adaptation", ICML 2019).

Players: the main classifier f (on features psi), and an adversarial head f' fed with
``grl(psi)``. With pseudo-labels from f, ``y^s = argmax f(psi_s)``, ``y^t = argmax f(psi_t)``
(no gradient through argmax), this function returns exactly

    L_mdd = gamma * mean_i CE(f'(psi_s)_i, y^s_i)  -  mean_j log(1 - softmax(f'(psi_t)_j)[y^t_j])

(``gamma`` = ``margin``; ``log(1 - p)`` is computed as ``logsumexp_{c != y} z_c - logsumexp_c z_c``,
stable and epsilon-free). L_mdd is small when f' agrees with f on source and disagrees
on target, i.e. when the (margin) disparity discrepancy is large; on target it uses the
"modified" GAN-style loss ``log(1 - p)`` instead of ``-CE``, as in the paper.

* f' minimises L_mdd (its parameters sit after the grl, so they get the plain gradient);
* the feature extractor psi maximises it through the reversed gradient;
* f does not receive gradient from it (argmax); it is trained by its own source CE.

Total objective, one joint step: ``CE(f(psi_s), y_s) + eta * mdd(logits, adv_s, adv_t)`` with
``adv = f'(grl(psi, coeff))`` (the paper: eta = 1, gamma = 4 for Office-31, grl_coeff schedule).
"""

import jax
import jax.numpy as jnp
from jax import lax

from jtl.losses._common import as_float


def mdd(logits, adv_logits_source, adv_logits_target, *, margin=4.0, convention="paper"):
    """MDD transfer loss (see the module docstring for players and usage).

    Args:
      logits: the main classifier's logits on the concatenated batch ``[source; target]``
        (shape (m + n, C)), or a pair ``(logits_source, logits_target)``.
      adv_logits_source: adversarial head logits on source, (m, C), computed after ``grl``.
      adv_logits_target: adversarial head logits on target, (n, C), computed after ``grl``.
      margin: gamma = exp(rho), the margin factor of the source term.
      convention: ``"paper"`` (default): ``log(1 - p)`` exactly; ``"tllib"``: Transfer-Learning-
        Library's ``shift_log`` (``tllib/alignment/mdd.py``), ``log(min(1 - p + 1e-6, 1))``: larger by
        about ``1e-6 / (1 - p)``, so different only as p -> 1 (bounded below by ``log 1e-6``),
        and without gradient where ``p < 1e-6``. TLlib's loss is the negative of this one, and its trainer
        minimises ``-mdd``: the same objective.

    Returns:
      ``gamma * mean CE(adv_s, argmax f_s) - mean log(1 - softmax(adv_t)[argmax f_t])``.
    """
    zs_adv, zt_adv = as_float(adv_logits_source), as_float(adv_logits_target)
    m, n = zs_adv.shape[0], zt_adv.shape[0]
    if isinstance(logits, (tuple, list)):
        logits_s, logits_t = logits
    else:
        if logits.shape[0] != m + n:
            raise ValueError(f"mdd: logits hold {logits.shape[0]} rows, expected source + target = {m + n}")
        logits_s, logits_t = logits[:m], logits[m:]
    ys = lax.stop_gradient(jnp.argmax(logits_s, axis=-1))
    yt = lax.stop_gradient(jnp.argmax(logits_t, axis=-1))

    logp_s = jax.nn.log_softmax(zs_adv, axis=-1)
    ce_s = -jnp.take_along_axis(logp_s, ys[:, None], axis=-1)[:, 0]

    if convention == "tllib":
        p_t = jnp.take_along_axis(jax.nn.softmax(zt_adv, axis=-1), yt[:, None], axis=-1)[:, 0]
        log_one_minus_p = jnp.log(jnp.minimum(1.0 - p_t + 1e-6, 1.0))
    elif convention == "paper":
        mask = jax.nn.one_hot(yt, zt_adv.shape[-1], dtype=bool)
        log_rest = jax.nn.logsumexp(jnp.where(mask, -jnp.inf, zt_adv), axis=-1)
        log_one_minus_p = log_rest - jax.nn.logsumexp(zt_adv, axis=-1)
    else:
        raise ValueError(f"mdd: convention must be 'paper' or 'tllib' (got {convention!r})")
    return margin * jnp.mean(ce_s) - jnp.mean(log_one_minus_p)
