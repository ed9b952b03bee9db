"""Compatibility name for :mod:`jtl.results` (``jtl collect``'s steps), whose modules
now hold this code: ``from jtl import collect`` keeps working."""

from jtl.results import *  # noqa: F403
from jtl.results import __all__  # noqa: F401
from jtl.results.cli import _write_text  # noqa: F401
