"""ptxfast: pneumothorax detection on chest X-rays, fast enough to triage a backlog."""

__version__ = "0.1.0"

# The eight model names are part of the interface (see models.py).
CLASSIFIERS = ("rn34", "eb3")
SEGMENTERS = ("rn34un", "eb3un")
CASCADES = ("rn34un+rn34", "rn34un+eb3", "eb3un+rn34", "eb3un+eb3")
MODEL_NAMES = CLASSIFIERS + SEGMENTERS + CASCADES
