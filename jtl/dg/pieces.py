"""The domain-generalization loss pieces (DomainBed's algorithms) over balanced batches.

A DG step's forward pass gives ``out["logits_d"]`` (D, b, K) and ``out["features_d"]`` (D, b, F),
the batch split by source domain (:mod:`jtl.dg.batching`); the step puts the number of updates
done so far in ``batch["dg_step"]`` and Group DRO's weights in ``batch["groupdro_q"]``
(:class:`jtl.dg.task.DGTask`). A method combines them with ``ce`` as any other pieces
(:data:`jtl.methods.METHODS`: ``irm``, ``vrex``, ``groupdro``, ``coral_domains``, ``mmd_domains``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jtl.losses import generalization as G
from jtl.train.pieces import Context, register


def _by_domain(ctx: Context):
    logits = ctx.out["logits_d"]
    return logits, ctx.batch["label"].reshape(logits.shape[:2])


@register("irm", needs_target=False)
def irm_piece(ctx: Context, *, weight: float = 100.0, anneal_steps: int = 500):
    """IRMv1 penalty (:func:`jtl.losses.generalization.irm_penalty`), weighted 1 for the first
    ``anneal_steps`` updates and ``weight`` (DomainBed's ``irm_lambda``) from then on."""
    logits, labels = _by_domain(ctx)
    penalty = G.irm_penalty(logits, labels)
    return G.annealed_weight(ctx.batch["dg_step"], weight, anneal_steps) * penalty, {"penalty": penalty}


@register("vrex", needs_target=False)
def vrex_piece(ctx: Context, *, weight: float = 10.0, anneal_steps: int = 500):
    """V-REx: variance of the domain risks, weighted 1 before ``anneal_steps`` and ``weight``
    (DomainBed's ``vrex_lambda``) after."""
    logits, labels = _by_domain(ctx)
    penalty = G.vrex_penalty(G.domain_risks(logits, labels))
    return G.annealed_weight(ctx.batch["dg_step"], weight, anneal_steps) * penalty, {"penalty": penalty}


@register("groupdro", needs_target=False)
def groupdro_piece(ctx: Context, *, eta: float = 0.01):
    """Group DRO: ``sum_d q_d R_d`` with ``q`` updated first by exponentiated gradient (step ``eta``);
    the updated ``q`` goes back into the train state (aux ``q``, taken out by the DG step). Use it
    instead of ``ce``."""
    logits, labels = _by_domain(ctx)
    risks = G.domain_risks(logits, labels)
    q = G.groupdro_weights(ctx.batch["groupdro_q"], risks, eta)
    return G.groupdro_loss(risks, q), {"q": jax.lax.stop_gradient(q), "worst_risk": jnp.max(risks)}


@register("coral_domains", needs_target=False)
def coral_domains_piece(ctx: Context):
    """CORAL across the source domains: the mean pairwise :func:`jtl.losses.generalization.coral_pair`
    of the pooled features (DomainBed's CORAL; its ``mmd_gamma`` is this piece's weight)."""
    return G.pairwise_domain_distance(ctx.out["features_d"], "coral")


@register("mmd_domains", needs_target=False)
def mmd_domains_piece(ctx: Context):
    """Gaussian-kernel MMD across the source domains, mean over pairs (DomainBed's MMD)."""
    return G.pairwise_domain_distance(ctx.out["features_d"], "mmd")
