"""The plan: what a grid asks for, before anything runs. The grid file's schema and its
validation (``entries.py``, ``grid.py``, reading YAML within bounds in ``safe_yaml.py``,
parameter ranges in ``limits.py``, the grid against the datasets' declared shapes in
``feasibility.py``), its expansion into training jobs and cells with stable ids
(``expand.py``), and what each job is expected to cost (``cost.py``).

Nothing here imports TensorFlow, ART, Ray or DuckDB: ``sweeper validate`` and the CLI's
help stay fast, and a plan can be made and inspected anywhere. Only fingerprinting a
model (``expand.expand(grid, fingerprints=True)``) builds it, through ``sweeper.models``.
"""
