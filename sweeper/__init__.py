"""sweeper: sweep deeply quantized tiny networks x adversarial attacks on Ray Tune.

Importing the package is cheap: it pulls in no TensorFlow, ART or Ray. It does set
the environment every process needs before TensorFlow is first imported (QKeras needs
Keras 2, i.e. ``tf-keras`` selected by ``TF_USE_LEGACY_KERAS=1``), so any process that
imports sweeper first (the CLI, Ray workers running sweeper code, tests) is covered.
"""

import os
from pathlib import Path

__version__ = "0.1.0"

# The variables every process that may import TensorFlow needs; run/ray_cluster.py forwards
# the same dict to a Ray cluster's workers through runtime_env (a local instance inherits them).
WORKER_ENV = {
    "TF_USE_LEGACY_KERAS": "1",
    "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
}
for _key, _value in WORKER_ENV.items():
    os.environ.setdefault(_key, _value)


def cache_dir() -> Path:
    """Sweeper's per-user cache folder: ``$XDG_CACHE_HOME/sweeper``, else
    ``~/.cache/sweeper`` (downloaded datasets, model fingerprints)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "sweeper"
