"""Published benchmarks with their real download code (:mod:`.download`), one small module per
family: :mod:`.office` (Office-31, Office-Home), :mod:`.visda` (VisDA-2017), :mod:`.domainnet`,
:mod:`.pacs`, :mod:`.digits` (MNIST, USPS, SVHN, MNIST-M), :mod:`.cifar_stl` (CIFAR-10,
STL-10 and their 9-class protocol). :mod:`.store` prepares them as array_record and serves
splits; names are parsed by :mod:`jtl.data.spec` (``office31:A``, ``mnist``, ``cifar9``...).

Files live under ``$JTL_DATA_DIR``: the standard layout in ``<name>/`` (used as it is when
present), archives while downloading in ``downloads/<name>/``, prepared data in
``jtl_benchmark/<name>.<domain>/``. ``docs/data.md`` ("Benchmark datasets") lists every
file, URL and checksum.
"""
