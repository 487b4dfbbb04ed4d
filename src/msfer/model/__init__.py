"""The paper's network (Zhang et al. 2022, Fig. 1), box by box.

==========================================  ==================================================================
Fig. 1                                      file (class / function)
==========================================  ==================================================================
backbone (C3, C4, C5)                       ``backbones.py`` (:class:`~.backbones.Backbone`)
feature pyramid P3..P7                      ``fpn.py`` (:class:`~.fpn.FeaturePyramid`)
emotion-region detector (section 3.1)       ``region_detector.py`` (:class:`~.region_detector.RegionDetector`)
  anchors, 9 per location                   ``anchors.py``
  proposals (objectness + box deltas)       ``region_detector.py`` (:class:`~.region_detector.ProposalHead`)
  RoIAlign at the level of eq. (4)          ``layers.py`` (:class:`~.layers.LevelRoIAlign`)
  residual block                            ``layers.py`` (:func:`~.layers.residual_block`)
  region class + box regression             ``region_detector.py`` (Fast R-CNN head)
multi-scale feature learning (section 3.3)  ``multiscale.py`` (:class:`~.multiscale.MultiScaleHead`)
  scale 1: organs (eyes, nose, mouth)       RoIAlign from P3..P5, 1x1 conv, residual block, GAP
  scale 2: face                             RoIAlign from P3, 1x1 conv, residual block, GAP
  scale 3: global                           the whole P3 map, residual block, GAP
fusion (concatenation) + classifier         ``emotionnet.py`` (:class:`~.emotionnet.EmotionNet`)
focal loss (section 3.2, eq. 3)             ``losses.py``
==========================================  ==================================================================

``emotionnet.py`` wires the boxes together (and holds the plain-classifier baseline,
:class:`~.emotionnet.EmotionClassifier`); ``registry.py`` names complete configurations
(:func:`build_model`); ``pretrained.py`` finds the offline ImageNet weights. Where the
multi-scale module's regions come from is ``region_source``: ``learned`` (the detector),
``pseudo`` (given boxes, the ``msfer annotate`` pseudo-labels) or ``none`` (a fixed layout).

Shapes in the docstrings use one shorthand: ``B`` images in a batch, ``S`` the square input
side (pixels), ``C`` channels, ``H x W`` a feature map's height and width, ``R`` regions per
face (face first, then the organs: 5, or 4 with merged eyes), ``A`` anchors of one image (all
levels; ``a`` = 9 per feature-map location), ``K`` proposals per image, ``N`` RoIs or boxes in
general; class counts are written out (7 emotions, ``R + 1`` region classes with background).
Boxes are ``x1, y1, x2, y2`` in input pixels unless a docstring says otherwise.
"""
from .emotionnet import EmotionClassifier, EmotionNet
from .losses import binary_focal_loss, focal_cross_entropy
from .registry import MODELS, build_model, model_config

__all__ = ["MODELS", "EmotionClassifier", "EmotionNet", "binary_focal_loss", "build_model", "focal_cross_entropy",
           "model_config"]
