"""Test-time adaptation: a trained model adapts online to a stream of test batches.

TENT, EATA and SAR (:mod:`jtl.tta.steps`) update the normalisation layers' affine parameters
(:mod:`jtl.tta.params`) batch by batch while predicting (:class:`jtl.tta.adapter.Adapter`), over
a stream of test batches (:mod:`jtl.tta.stream`); ``jtl eval --adapt METHOD``
(:mod:`jtl.tta.command`). Losses: :mod:`jtl.losses.test_time`. docs/test-time.md.

This package file imports nothing heavy, so the command line can list the methods cheaply.
"""

METHODS = ("tent", "eata", "sar")
