"""Running a sweep: the driver (``sweep.py``: what is pending, in which waves and order, the
lease, provenance and compaction) and its runners (``runners.py``: Ray Tune trials, or in
this process; ``ray_tune.py`` is the Ray side), the row sink (``rows.py``) and the
optional experiment trackers it feeds (``tracking.py``: MLflow, TensorBoard), the trial
(``trial.py``) and what it composes (``training.py``, ``cache.py``, ``checkpoints.py``,
``evaluate.py``, ``transfer.py``, ``columns.py``, and each job's builds: ``builds.py``),
a trial's worker setup
(``placement.py``), the store's lease (``lease.py``), the progress display
(``progress.py``) and the launch's timeline (``profile.py``: ``launch --profile``). TensorFlow and Ray are imported when a job or a Ray launch runs, never
at import.
"""
