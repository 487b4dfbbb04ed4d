"""The paper's network: backbones, FPN, anchors, region detector, multi-scale head, losses, registry."""
from .emotionnet import EmotionClassifier, EmotionNet
from .losses import binary_focal_loss, focal_cross_entropy
from .registry import MODELS, build_model, model_config

__all__ = ["MODELS", "EmotionClassifier", "EmotionNet", "binary_focal_loss", "build_model", "focal_cross_entropy",
           "model_config"]
