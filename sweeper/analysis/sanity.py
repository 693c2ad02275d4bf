"""AutoAttack's sanity checks of each trained model (the ``zero_grad_share``,
``output_is_simplex`` and ``randomized`` columns, measured by ``sweeper.models.sanity``),
pooled per configuration for the report's diagnostics table and the results card."""

from __future__ import annotations

from sweeper.keys import CONFIG_COLUMNS, NONE

HEADER = ["zero grad", "simplex", "randomized"]
LEGEND = ("AutoAttack's sanity checks of each trained model (`sweeper.models.sanity`), beside the flags: "
          "**zero grad**, the samples whose input gradient of the cross-entropy loss is exactly zero "
          "(a gradient attack has nothing to follow there), out of the attacked samples, summed over folds; "
          "**simplex**, the model outputs probabilities instead of logits (in any fold); **randomized**, five "
          "evaluations of the same samples differ (in any fold: its attacks would need EOT). `n/a`: rows "
          "written before these checks.")


def per_config(connection) -> dict[tuple, dict]:
    """Per configuration (``tables.config_key``): ``zero`` (samples with a zero gradient,
    summed over its trained models), ``samples`` (their attacked samples, the denominator),
    ``share`` (zero / samples), ``simplex`` and ``randomized`` (any model); only
    configurations whose rows carry the checks."""
    from sweeper.analysis import query

    columns = ", ".join(CONFIG_COLUMNS)
    jobs = query.fetch(connection, f"SELECT {columns}, job_id, any_value(zero_grad_share) AS share, "
                                   "any_value(n_samples) AS n, bool_or(output_is_simplex) AS simplex, "
                                   "bool_or(randomized) AS randomized FROM results "
                                   f"WHERE attack = '{NONE}' AND zero_grad_share IS NOT NULL GROUP BY ALL").to_pylist()
    pooled: dict[tuple, dict] = {}
    for job in jobs:
        key = tuple(job[c] for c in CONFIG_COLUMNS)
        entry = pooled.setdefault(key, {"zero": 0, "samples": 0, "simplex": False, "randomized": False, "models": 0})
        entry["zero"] += round(job["share"] * job["n"])
        entry["samples"] += job["n"]
        entry["simplex"] |= bool(job["simplex"])
        entry["randomized"] |= bool(job["randomized"])
        entry["models"] += 1
    for entry in pooled.values():
        entry["share"] = entry["zero"] / entry["samples"] if entry["samples"] else None
    return pooled


def cells(entry: dict | None) -> list[str]:
    """The three cells of a configuration in the diagnostics table."""
    if entry is None:
        return ["n/a"] * 3
    return [f"{entry['zero']}/{entry['samples']}", "yes" if entry["simplex"] else "no",
            "yes" if entry["randomized"] else "no"]
