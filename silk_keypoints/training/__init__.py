"""Self-supervised SiLK training: random homographies, augmentation, data, the blockwise loss, the loop.

Importing this package does not import tensorboard (only :func:`train` does, when it logs).
"""

from .augment import augment
from .data import ImageCrops, scan_images, split_train_val
from .homography import HomographyConfig, dense_correspondences, sample_homographies, warp_images
from .loss import LossConfig, silk_loss, similarity_stats
from .trainer import TrainConfig, train

__all__ = [
    "HomographyConfig",
    "ImageCrops",
    "LossConfig",
    "TrainConfig",
    "augment",
    "dense_correspondences",
    "sample_homographies",
    "scan_images",
    "silk_loss",
    "similarity_stats",
    "split_train_val",
    "train",
    "warp_images",
]
