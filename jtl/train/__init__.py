"""Training: state, loss pieces, compiled steps, checkpoints and the one loop."""

from jtl.train.loop import Trainer, train
from jtl.train.state import TrainState

__all__ = ["TrainState", "Trainer", "train"]
