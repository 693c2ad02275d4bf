"""Analysis: everything that reads a result store and says what its rows mean, never
writing a row. One DuckDB connection module (``duck.py``) and the views of the rows
(``views.py``) behind read-only SQL (``query.py``); the statistics, once (``stats.py``);
the gradient-masking checks, defined (``checks.py``), computed in DuckDB
(``diagnostics.py``) and assembled as flags (``flags.py``); defended models against their
undefended twins (``twins.py``); the Markdown report (``report.py``, its studies in
``studies.py``, its sections on what ships in ``shipping.py``, shared table helpers in
``tables.py``, per-budget tables in ``budgets.py``, AutoAttack's sanity checks pooled in
``sanity.py``), its tables as LaTeX and CSV (``latex.py``) and its figures (``figures.py``);
results cards (``card.py``, their JSON Schema ``card.schema.json``); and the files a user
names for the output (``output.py``).

DuckDB, SciPy and matplotlib are imported when first used, never at import.
"""
