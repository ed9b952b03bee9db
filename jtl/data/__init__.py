"""Datasets and input pipelines.

Names
-----
``jtl.data.load(name, split, **options)`` understands::

    name   := BASE [":" SHIFT ("+" SHIFT)* ["#" SEED]] | "folder:" PATH | "tfds:" TFDS_NAME
            | BENCHMARK [":" DOMAIN]
    BASE   := fashion_mnist | digits
    BENCHMARK := office31 | office_home | visda2017 | domainnet | pacs | mnist | usps | svhn
            | mnistm | cifar10 | stl10 | cifar9 | stl9   (see :mod:`jtl.data.benchmarks`)
    SHIFT  := mnistm | invert | rotate[@DEG] | noise[@S] | blur[@S] | contrast[@S] | resize[@PX]

e.g. ``fashion_mnist``, ``digits``, ``fashion_mnist:mnistm``, ``fashion_mnist:noise@3``,
``fashion_mnist:mnistm+rotate@30#1``, ``folder:/data/office31/amazon``, ``tfds:cifar10``.
Shifts apply left to right; ``#SEED`` (default 0) seeds them and is part of the dataset's
identity (same seed, same bytes). See :mod:`jtl.data.shifts` for the formulas.

Splits
------
- ``fashion_mnist``: ``train`` (60,000), ``test`` (10,000); ``val`` only with
  ``val_fraction > 0`` (carved from train, which shrinks).
- ``digits``: 1,797 images split by ``seed`` into ``train``/``val``/``test``
  (``val_fraction=0.2``, ``test_fraction=0.2``), plus ``all``.
- shifted ``BASE:SHIFT``: built from the base's held-out images only (fashion_mnist:
  the 10,000 test images; digits: the ``val`` + ``test`` of the same ``seed``), split
  50/50 by ``seed`` into ``train`` and ``test``; ``all`` is both; ``val`` with ``val_fraction``.
  No shifted image comes from the source's training split.
- ``folder:PATH``: ``train``/``val`` by ``val_fraction`` (0.2) and ``seed``; ``test``
  with ``test_fraction > 0``; ``all``. A split folder ``PATH/{train,val,test}/<class>/``:
  its directories, each read alone (``val``/``test`` without one carved from ``train``).
- ``tfds:NAME``: TFDS's split names; ``val`` is ``validation`` or carved by ``val_fraction``.
- benchmarks (``office31:A``, ``domainnet:real``, ``mnist``, ...): the published splits, see
  :mod:`jtl.data.benchmarks.store` and docs/data.md ("Benchmark datasets").

All seeded partitions are stratified by class.

Options: ``classes=(5, 6, 7, 8, 9)`` keeps those classes and relabels them 0..k-1 in the
given order; ``limit=N`` keeps a seeded, class-stratified subset of N examples (after
``classes``); ``seed`` (default 0) picks partitions and subsets; ``val_fraction``,
``test_fraction``; ``backgrounds=DIR`` (mnistm photos, default scikit-image's);
``on_error="raise"|"skip"`` (folders); ``data_dir``, ``image_key``, ``label_key``,
``download`` (tfds).

A source has ``len(src)``, ``src[i] -> {"image": uint8 (H, W, C), "label": int32}``,
``src.getitems(positions)`` (batched), ``src.labels``, ``src.info`` and works as a grain
data source. Fashion-MNIST and digits have C=1, mnistm shifts C=3, folders C=3.
``info(name)`` gives class names, image shape and splits; ``num_classes(name)``.
Prepared data lives under ``$JTL_DATA_DIR`` (default ``$JTL_CACHE/data``, ``~/.cache/jtl/data``).

Pipelines
---------
``make_iterator(source, *, batch_size, seed, train=True, image_size=None, channels=None,
augment=("crop", "flip"), normalize="imagenet", process_index=0, process_count=1,
drop_remainder=None, output="float32")`` yields ``{"image": float32 (B, H, W, C),
"label": int32 (B,)}``:

- ``train=True``: this process's rows (slice ``process_index``) of global batches of
  ``batch_size * process_count``, shuffled, repeated forever, augmented (``crop``, ``flip``,
  ``jitter``; see :mod:`jtl.data.augment`).
- ``train=False``: one ordered pass, no augmentation, every batch full size with a bool
  ``"mask"``: the last batch is padded (mask False, image 0, label 0) so every process
  gets the same number of batches; ``drop_remainder=True`` drops it instead.
- ``image_size`` resizes to the model's resolution; ``channels=3`` repeats gray to RGB.
- ``resize=R`` resamples every image to R x R first (bicubic), the crops then cut ``image_size``
  from it; ``eval_crop="center"`` evaluates the centre crop instead of the whole image
  (Transfer-Learning-Library's 256 -> 224); ``geometry(cfg.data)`` gives all three keywords.
- ``normalize``: ``"imagenet"`` (ported weights), ``"dataset"`` (statistics of this
  source), ``(mean, std)``, or None (x / 255).
- ``output="uint8"`` leaves the cast and normalisation to the device:
  ``preprocess_on_device(batch, it.mean, it.std, channels)`` inside the jitted step.
- ``with_index=True`` adds ``"index"``: int32 (B,), each example's position in ``source`` (its id).
- ``it.get_state()`` is ``{"next_index": k}``; ``it.set_state(state)`` resumes exactly.

``paired_iterator(source_iter, target_iter)`` yields ``{"source": batch, "target": batch}``
and its state holds both states. Seeds are hashed with the source's name and split, so the
two shuffles are independent; the same data with the same seed is refused.
"""

from jtl.data.augment import IMAGENET_MEAN, IMAGENET_STD, geometry, preprocess_on_device
from jtl.data.builders import data_dir
from jtl.data.loading import info, load, num_classes
from jtl.data.pipeline import DataIterator, PairedIterator, dataset_stats, make_iterator, paired_iterator
from jtl.data.source import Info, Source
from jtl.data.spec import parse as parse_name

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataIterator",
    "Info",
    "PairedIterator",
    "Source",
    "data_dir",
    "dataset_stats",
    "geometry",
    "info",
    "load",
    "make_iterator",
    "num_classes",
    "paired_iterator",
    "parse_name",
    "preprocess_on_device",
]
