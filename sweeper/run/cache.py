"""The model cache: a job's trained weights, its defense's summary and its int8 .tflite,
kept in the store as ``models/<job_id>.weights.h5``, ``.defense.json`` and ``.tflite`` so
that a relaunch's new cells of a trained model train and convert nothing (and a user can
flash the .tflite). Each is written atomically (``store.put_bytes``)."""

from __future__ import annotations

import json
import tempfile

from sweeper import store


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

    def tflite(self, job_id: str) -> bytes | None:
        return self._get(f"{job_id}.tflite")

    def save_tflite(self, job_id: str, flatbuffer: bytes) -> None:
        if self.location is not None:
            store.put_bytes(self.location, f"{job_id}.tflite", flatbuffer)

    def _get(self, name: str) -> bytes | None:
        return None if self.location is None else store.get_bytes(self.location, name)
