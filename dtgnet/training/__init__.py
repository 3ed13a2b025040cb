"""Training: ``loop`` (the Trainer and its step), ``run_state`` (preemption, bad-item accounting, the step
window), ``checkpoint`` (rotation, resume, RNG state), ``runlog`` (the run directory and its logs)."""
from .loop import MODES, Trainer, pick_device, train

__all__ = ["MODES", "Trainer", "pick_device", "train"]
