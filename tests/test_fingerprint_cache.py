"""The model fingerprints kept on disk (sweeper/models/fingerprint_cache.py): a cached
fingerprint is the computed one, another model code or library version is another key, a
damaged file is ignored, and a plan whose fingerprints are all cached imports no TensorFlow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, write_grid

SHAPE, CLASSES = (8, 8, 1), 10


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty per-user cache folder, and no fingerprint remembered in this process."""
    from sweeper import models
    from sweeper.models import fingerprint_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    models._fingerprint_cached.cache_clear()
    fingerprint_cache._entries.cache_clear()
    yield fingerprint_cache
    models._fingerprint_cached.cache_clear()
    fingerprint_cache._entries.cache_clear()
    fingerprint_cache._hash_files.cache_clear()


def _fingerprint(preset: str = "int4") -> str:
    from sweeper import models
    from sweeper.models.quantizers import QUANTIZERS

    models._fingerprint_cached.cache_clear()
    return models.fingerprint("small_cnn", SHAPE, CLASSES, QUANTIZERS.get(preset))


def _key(preset: str = "int4") -> str | None:
    from sweeper import models
    from sweeper.models import fingerprint_cache
    from sweeper.models.quantizers import QUANTIZERS

    return fingerprint_cache.key("small_cnn", models.MODELS.get("small_cnn"), SHAPE, CLASSES,
                                 QUANTIZERS.get(preset))


def _never_computed(monkeypatch):
    from sweeper import models

    def refuse(*args):
        raise AssertionError("fingerprint computed although it is cached")

    monkeypatch.setattr(models, "_computed_fingerprint", refuse)


def test_the_cached_fingerprint_is_the_computed_one_and_is_read_back(cache, monkeypatch):
    from sweeper import models
    from sweeper.models.quantizers import QUANTIZERS

    computed = _fingerprint()
    stored = json.loads(cache.path().read_text())["entries"]
    assert stored == {_key(): computed}
    fresh = models.model_fingerprint(models.build("small_cnn", SHAPE, CLASSES, QUANTIZERS.get("int4")))
    assert computed == fresh
    _never_computed(monkeypatch)
    cache._entries.cache_clear()  # as a new process would
    assert _fingerprint() == computed
    with pytest.raises(AssertionError, match="computed although"):
        _fingerprint("int8")  # another preset is another key


def test_changed_model_code_or_library_is_another_key(cache, tmp_path, monkeypatch):
    computed = _fingerprint()
    original = _key()
    # One changed line in a copy of sweeper/models/: another code hash, another key.
    copy = tmp_path / "models"
    shutil.copytree(cache.MODELS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    quantizers = copy / "quantizers.py"
    quantizers.write_text(quantizers.read_text() + "\n# changed\n")
    monkeypatch.setattr(cache, "MODELS_DIR", copy)
    assert _key() not in (None, original)
    assert cache.get(_key()) is None
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert _key() == original and cache.get(original) == computed
    monkeypatch.setattr(cache, "version_of", lambda package: "9.9.9")
    assert _key() not in (None, original)


def test_a_damaged_or_foreign_file_is_ignored_and_replaced(cache):
    expected = _fingerprint()
    for damaged in ("{not json", json.dumps({"format": 99, "entries": {_key(): "0" * 16}}),
                    json.dumps({"format": cache.FORMAT, "entries": {_key(): 7}}), "[]"):
        cache.path().write_text(damaged)
        cache._entries.cache_clear()
        assert _fingerprint() == expected
        assert json.loads(cache.path().read_text())["entries"] == {_key(): expected}


def test_a_builder_whose_source_does_not_pin_it_is_never_cached(cache):
    from sweeper import models
    from sweeper.models.quantizers import QUANTIZERS

    original = models.MODELS.get("small_cnn")

    def closure(*args):
        return original(*args)

    assert cache.key("small_cnn", closure, SHAPE, CLASSES, QUANTIZERS.get("fp")) is None
    assert cache.key("small_cnn", lambda *a: original(*a), SHAPE, CLASSES, QUANTIZERS.get("fp")) is None
    # a module-level function outside sweeper/models/ (a plugin's): its helpers are not hashed
    assert cache.key("small_cnn", _plugin_builder, SHAPE, CLASSES, QUANTIZERS.get("fp")) is None
    assert cache.key("small_cnn", original, SHAPE, CLASSES, QUANTIZERS.get("fp")) is not None
    cache.put(None, "f" * 16)
    assert not cache.path().exists()


def _plugin_builder(input_shape, nb_classes, preset):
    from sweeper import models

    return models.build("small_cnn", input_shape, nb_classes, preset)


def test_a_plan_whose_fingerprints_are_cached_imports_no_tensorflow(cache, tmp_path, tiny_grid):
    """What a relaunch of a finished grid does before it finds nothing left to run."""
    from sweeper.plan import expand, grid

    path = write_grid(tmp_path, tiny_grid)
    planned = expand.expand(grid.load(path))  # computes and stores both fingerprints
    script = ("import sys, json\nfrom sweeper.plan import expand, grid\n"
              f"plan = expand.expand(grid.load({str(path)!r}))\n"
              "print(json.dumps([[j.job_id for j in plan.jobs], "
              "sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'qkeras', 'keras', 'tf_keras'))]))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert run.returncode == 0, run.stderr
    job_ids, heavy = json.loads(run.stdout.strip().splitlines()[-1])
    assert job_ids == [job.job_id for job in planned.jobs]
    assert heavy == []
