"""Video students. ``registry`` (the backbone contract and the architecture table), ``tsn`` (TSN / TSM
ResNet-18, TSN over any 2D network), ``video3d`` (torchvision's R3D-18, R(2+1)D-18, S3D, MViT-v2-S, Swin3D-T), ``vit`` (a video ViT
with optional inflation from a timm image ViT), ``base`` (the student: backbone + heads + classifier),
``files`` (safetensors export and loading), ``image_init`` (starting from an image model), ``as_teacher``
(a student file as a video teacher)."""
from . import as_teacher, tsn, video3d, vit  # noqa: F401  (registers every architecture and the student teacher)
from .base import DTGStudent, build_student, initialise_backbone, projection_head
from .files import checkpoint_config, load_student, read_student, save_student_folder, save_student_safetensors

__all__ = ["DTGStudent", "build_student", "initialise_backbone", "projection_head", "checkpoint_config",
           "load_student", "read_student", "save_student_folder", "save_student_safetensors"]
