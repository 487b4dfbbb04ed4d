"""msfer: multi-scale, region-attention facial emotion recognition.

Implements Zhang, Zhang, Fu and Qi, "A Multi-scale Attention-based Facial Emotion
Recognition Method Based on Deep Learning", Instrumentation 9(3), 2022.
"""
from ._version import __version__
from .labels import EMOTIONS
from .samples import SAMPLE_PHOTO

__all__ = ["EMOTIONS", "EmotionRecognizer", "SAMPLE_PHOTO", "__version__", "to_dataframe"]


def __getattr__(name):
    # Imported lazily so that `import msfer` stays light (no torch) for the data tools.
    if name == "EmotionRecognizer":
        from .inference.recognizer import EmotionRecognizer

        return EmotionRecognizer
    if name == "to_dataframe":
        from .inference.results import to_dataframe

        return to_dataframe
    raise AttributeError(f"module 'msfer' has no attribute {name!r}")
