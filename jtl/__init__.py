"""jtl: transfer learning and domain adaptation for image recognition in JAX/Flax."""

from jtl.errors import JtlError

__version__ = "0.1.0"

__all__ = ["JtlError", "__version__"]
