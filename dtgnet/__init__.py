"""dtgnet: Differentiated Teachers Guided (DTG-Net) video action recognition in PyTorch."""
from .config import Config, load_config
from .objectives import dtg_loss, info_nce, margin_contrastive
from .students import DTGStudent, build_student, load_student
from .teachers import Teacher, build_teacher, callable_teacher, efficientnet_lite0, train_action_teacher
from .training import train

__version__ = "0.1.0"
__all__ = ["Config", "load_config", "dtg_loss", "info_nce", "margin_contrastive", "DTGStudent", "build_student",
           "load_student", "Teacher", "build_teacher", "callable_teacher", "efficientnet_lite0",
           "train_action_teacher", "train", "__version__"]
