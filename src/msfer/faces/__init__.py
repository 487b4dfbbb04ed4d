"""What every path does to a face in a photo: find it, crop it, judge its quality.

``retinaface``: the face detector (RetinaFace, ONNX, batched); ``detection``: the scales a photo
is detected at (:func:`~msfer.faces.detection.detect_faces`); ``crop``: the crop rule
(:class:`~msfer.faces.crop.CropRule`, :func:`~msfer.faces.crop.crop_face`), the same in training
and in use; ``quality``: the per-face quality measures of every output
(:func:`~msfer.faces.quality.face_quality`).
"""
from .retinaface import Face, RetinaFaceDetector

__all__ = ["Face", "RetinaFaceDetector"]
