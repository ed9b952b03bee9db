"""Domain generalization (DomainBed's protocol, Gulrajani & Lopez-Paz 2021).

A run trains on several source domains (``dg.domains`` minus the held-out ``dg.test``),
each step taking ``batch_size / D`` examples from each of its ``D`` source domains
(:mod:`jtl.dg.batching`), and evaluates every domain's validation split and the held-out
domains' test splits (:mod:`jtl.dg.task`). The algorithms are loss pieces
(:mod:`jtl.dg.pieces`: IRM, V-REx, Group DRO, CORAL/MMD across domains), a backbone
option (MixStyle) and weight averaging (:mod:`jtl.dg.swad`); :mod:`jtl.dg.selection`
implements DomainBed's three model-selection methods and its results table.
"""
