"""Files that ship with msfer to try it on (their sources and licences: ``README.md`` beside them)."""
from pathlib import Path

# A photo of one face (Eileen Collins, NASA, public domain, as scikit-image ships it).
SAMPLE_PHOTO = Path(__file__).with_name("astronaut.jpg")
