"""What the student is trained to do. ``losses`` (pure functions of tensors), ``weighting`` (fixed, learned
and adaptive teacher weights), ``terms`` (the registry of terms added inside each teacher's L_k),
``objective`` (:class:`DTGObjective`: the loss of one step, built from the config, owning the weighting and
the queues)."""
from .losses import info_nce, margin_contrastive
from .objective import DTGLoss, DTGObjective, dtg_loss

__all__ = ["DTGLoss", "DTGObjective", "dtg_loss", "info_nce", "margin_contrastive"]
