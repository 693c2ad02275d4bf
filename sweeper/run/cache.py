"""The model cache: a job's trained weights, its defense's summary and its builds, kept in
the store as ``models/<job_id>.weights.h5``, ``.defense.json``, ``.tflite`` (int8) and
``.<format>.tflite`` (each accepted sub-byte build, ``tflite_name``) so that a relaunch's
new cells of a trained model train and convert nothing (and a user can flash a .tflite).
Each is written atomically (``store.put_bytes``)."""

from __future__ import annotations

import json
import tempfile

from sweeper import store
from sweeper.keys import INT8


def tflite_name(job_id: str, deploy_format: str = INT8) -> str:
    """A build's file: ``<job_id>.tflite`` for the int8 build (its name since before sub-byte
    builds), ``<job_id>.<format>.tflite`` for the others (``deploy.FORMATS``)."""
    return f"{job_id}.tflite" if deploy_format == INT8 else f"{job_id}.{deploy_format}.tflite"


class ModelCache:
    """The cache folder (path or URI) of a sweep; ``None``: no cache (nothing is kept)."""

    def __init__(self, folder: str | None):
        self.location = store.locate(folder) if folder else None

    def load_weights(self, model, job_id: str) -> bool:
        """Load the job's cached weights into ``model``; False when there are none."""
        data = self._get(f"{job_id}.weights.h5")
        if data is None:
            return False
        with tempfile.TemporaryDirectory() as tmp:
            local = f"{tmp}/{job_id}.weights.h5"
            with open(local, "wb") as file:
                file.write(data)
            model.load_weights(local)
        return True

    def save_weights(self, model, job_id: str) -> None:
        if self.location is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            local = f"{tmp}/{job_id}.weights.h5"
            model.save_weights(local)
            with open(local, "rb") as file:
                store.put_bytes(self.location, f"{job_id}.weights.h5", file.read())

    def defense_reg(self, job_id: str) -> float | None:
        """The cached regularizer of the job's defense (``save_defense``), or None."""
        data = self._get(f"{job_id}.defense.json")
        return json.loads(data).get("defense_reg") if data else None

    def save_defense(self, job_id: str, reg: float | None, summary: dict) -> None:
        if self.location is not None:  # a relaunch's new cells of this job read it from here
            store.put_bytes(self.location, f"{job_id}.defense.json",
                            json.dumps({"defense_reg": reg, **summary}).encode())

    def tflite(self, job_id: str, deploy_format: str = INT8) -> bytes | None:
        return self._get(tflite_name(job_id, deploy_format))

    def save_tflite(self, job_id: str, flatbuffer: bytes, deploy_format: str = INT8) -> str | None:
        """Keep a build's .tflite; its file name in the cache, or None (no cache)."""
        if self.location is None:
            return None
        store.put_bytes(self.location, tflite_name(job_id, deploy_format), flatbuffer)
        return tflite_name(job_id, deploy_format)

    def _get(self, name: str) -> bytes | None:
        return None if self.location is None else store.get_bytes(self.location, name)
