"""The flags table: its schema (``SCHEMA``, the repeated strings dictionary-encoded) and
its assembly from what DuckDB counted (``assemble``): each judged comparison's p-value,
Holm's adjustment within its configuration and check, whether it fired, and its sentence,
computed column-wise a few whole configurations at a time, with no flag ever a Python
object. The checks and their sentences are ``checks.py``'s, the tests ``stats.py``'s.
"""

from __future__ import annotations

import string
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sweeper.analysis.checks import (BUDGET, CHECKS, FAR_ABOVE_CHANCE, LARGE_EPS, MIN_MARGIN, ALPHA, PATCH, SENTENCES,
                                     Point, name_points)
from sweeper.analysis.stats import binomial_p, holm, mcnemar_p
from sweeper.keys import CONFIG_COLUMNS, POINT_COLUMNS
from sweeper.store.schema import SCHEMA as ROWS


# The flags repeat few strings (a configuration's columns, the check, the attack) across
# many rows: those are dictionary-encoded, which keeps the flags of a 1 M-row store about
# 20 MB smaller in memory. Parquet stores them so anyway; DuckDB reads them as VARCHAR,
# and ``plain`` gives them as strings (to compare with a table of plain strings).
_REPEATED = pa.dictionary(pa.int32(), pa.string())


def _repeated(field: pa.Field) -> pa.Field:
    return field.with_type(_REPEATED) if field.type == pa.string() else field


SCHEMA = pa.schema([
    *[_repeated(ROWS.field(name)) for name in CONFIG_COLUMNS],
    pa.field("flag", _REPEATED),  # which check (a column named "check" would need quoting in SQL)
    pa.field("attack_label", _REPEATED),  # the attack whose number the flag qualifies
    pa.field("norm", _REPEATED),
    pa.field("eps", pa.float64()),  # +inf: unbounded
    pa.field("eps_label", _REPEATED),
    # With the columns above these tell apart points that differ only in parameters or size.
    pa.field("attack_params", _REPEATED),
    pa.field("n_samples", pa.int32()),
    pa.field("value", pa.float64()),  # that attack's accuracy on the n_pairs samples (P: its target rate)
    pa.field("reference", pa.float64()),  # what it is compared with, on the same samples (P: the controls')
    pa.field("reference_label", pa.string()),  # where the reference comes from
    pa.field("p_value", pa.float64()),  # exact one-sided test, before adjustment
    pa.field("p_adjusted", pa.float64()),  # Holm-adjusted within the configuration and check
    pa.field("n_pairs", pa.int64()),  # samples compared (aligned pairs; for L, samples tested)
    pa.field("fired", pa.bool_()),
    pa.field("detail", pa.string()),  # one sentence, for people
])


def plain(flags: pa.Table) -> pa.Table:
    """``flags`` with its dictionary-encoded columns as plain strings: two tables of the
    same flags compare equal this way whatever order their dictionaries hold."""
    return flags.cast(pa.schema([f.with_type(pa.string()) if f.type == _REPEATED else f for f in flags.schema]))


NORM_CODES = {"inf": -1, "1": 1, "2": 2}  # the norms a radius is known for: -1 L-inf, p for L-p


# Configurations are written a few at a time (at least this many points each time, whole
# configurations): every check, Holm and the best white-box point stay within one, and
# the output is ordered by configuration, so chunks concatenated are the whole table,
# while the working columns and sentences of only one chunk are in memory at once.
_CHUNK_POINTS = 5_000


def assemble(points: pa.Table, info: dict[str, np.ndarray], counted: dict[str, np.ndarray]) -> pa.Table:
    """The flags as the reference's ``_checks`` and ``_decide`` make them, computed
    column-wise, chunk by chunk of whole configurations (``points`` in configuration order).
    Arrow allocates from the system allocator meanwhile: it hands a chunk's freed buffers
    back to the OS, where Arrow's default (mimalloc) keeps them (~60 MB more at 1 M rows)."""
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        info = _point_info(points, info)
        encoded = pa.table({name: column.combine_chunks().dictionary_encode() if SCHEMA.field(name).type == _REPEATED else column
                            for name, column in zip(points.column_names, points.columns)
                            if name in SCHEMA.names})  # taken per flag: the indices, not the strings
        return _chunks(encoded, info, counted)
    finally:
        pa.set_memory_pool(previous)


def _chunks(points: pa.Table, info: dict[str, np.ndarray], counted: dict[str, np.ndarray]) -> pa.Table:
    """The flags of each run of whole configurations holding at least _CHUNK_POINTS points
    (the last: what is left), with its comparisons (``counted`` is ordered by cfg too)."""
    row_of = np.empty(int(info["pid"].max()) + 1, dtype=np.int64)
    row_of[info["pid"]] = np.arange(points.num_rows)
    counted = {**counted, "first": row_of[counted["first"]], "second": row_of[counted["second"]]}
    cfg = info["cfg"]
    ends = np.flatnonzero(np.r_[cfg[1:] != cfg[:-1], True]) + 1  # where each configuration's rows end
    tables, start = [], 0
    while start < len(cfg):
        stop = int(ends[min(np.searchsorted(ends, start + _CHUNK_POINTS), len(ends) - 1)])
        lo, hi = np.searchsorted(counted["cfg"], cfg[start]), np.searchsorted(counted["cfg"], cfg[stop - 1], "right")
        tables.append(_chunk(points, info, np.arange(start, stop), {k: v[lo:hi] for k, v in counted.items()}))
        start = stop
    return pa.concat_tables(tables)


def _point_info(points: pa.Table, info: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``info`` with each point's name, its radius (``Point.radius``; NaN where unknown) and
    whether L judges it."""
    norm, features, spread = info["norm"], info["n_features"], info["input_range"]
    per_value = np.where(norm == NORM_CODES["inf"], 1.0, 0.0)  # the radius' unit over input_range; 0: none
    for p in (1, 2):
        rows = (norm == p) & (features != 0)
        for count in np.unique(features[rows]).tolist():  # Python's int ** float, as Point.radius
            per_value[rows & (features == count)] = count ** (1 / p)
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = np.where((spread > 0) & (per_value > 0), info["eps"] / (spread * per_value), np.nan)
    radius = np.where(np.isinf(info["eps"]), np.inf, radius)
    large = (radius >= LARGE_EPS - 1e-12) & (info["n_classes"] != 0) & ~info["transfer"].astype(bool)
    return {**info, "name": _names(points, info), "radius": radius, "large": large,
            "classes": np.where(large, info["n_classes"], 1)}


def _names(points: pa.Table, info: dict[str, np.ndarray]) -> pa.Array:
    """``_name``'s names: label@eps, and for namesakes within a configuration what differs."""
    text = [_literal("None"), _literal("@"), _literal("")]
    names = pc.binary_join_element_wise(points.column("attack_label").fill_null(text[0]), text[1],
                                        points.column("eps_label").fill_null(text[0]), text[2]).combine_chunks()
    rows = np.flatnonzero(info["namesakes"] > 1)
    if not len(rows):
        return names
    by_config = defaultdict(list)  # rows are in configuration order: so are the groups
    for row, cfg in zip(points.take(arrow(rows)).to_pylist(), info["cfg"][rows].tolist()):
        by_config[cfg].append(Point(config=(), **{c: row[c] for c in POINT_COLUMNS}, n_classes=None,
                                    n_features=None, input_range=None, keys=None, clean=None, adv=None))
    for group in by_config.values():
        name_points(group)
    renamed = _strings([point.name for group in by_config.values() for point in group])
    index = np.arange(len(names))
    index[rows] = len(names) + np.arange(len(rows))
    return pa.concat_arrays([names, renamed]).take(arrow(index))


# pyarrow imports pandas (~33 MB resident) on its first conversion of numpy arrays,
# Python objects or scalars; nothing here needs pandas, so the flags' arrays are built
# from their buffers and numbers come from DuckDB as numpy (fetchnumpy).

def arrow(values: np.ndarray) -> pa.Array:
    """A numpy array of numbers or booleans as an Arrow array, without pandas."""
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _strings(texts: list[str]) -> pa.Array:
    """Python strings as an Arrow string array, without pandas."""
    encoded = [text.encode() for text in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded), [None, pa.py_buffer(offsets),
                                                             pa.py_buffer(b"".join(encoded))])


def _literal(text: str) -> pa.Scalar:
    return _strings([text])[0]


def _chunk(points: pa.Table, info: dict[str, np.ndarray], rows: np.ndarray, counted: dict[str, np.ndarray]):
    """The flags of the whole configurations at point rows ``rows``, with their comparisons."""
    n, adv, clean = info["n"][rows], info["adv_right"][rows], info["clean_right"][rows]
    large, cfg_of = info["large"][rows], info["cfg"][rows]
    chance = 1 / info["classes"][rows][large]
    null = np.minimum(1.0, chance + FAR_ABOVE_CHANCE)
    patch = info["target_n"][rows] > 0
    target_n, hits, control = (info[k][rows][patch] for k in ("target_n", "target_hits", "control_hits"))
    others = len(rows) + int(large.sum()) + int(patch.sum())  # the points judged alone: C, L, P
    columns = {  # S, B, E (paired), then C (per point), L (large points), P (patches)
        "family": np.concatenate([counted["family"], np.full(len(rows), 3), np.full(int(large.sum()), 4),
                                  np.full(int(patch.sum()), PATCH)]),
        "cfg": np.concatenate([counted["cfg"], cfg_of, cfg_of[large], cfg_of[patch]]),
        "point": np.concatenate([counted["second"], rows, rows[large], rows[patch]]),
        "reference_point": np.concatenate([counted["first"], np.full(others, -1)]),
        "n": np.concatenate([counted["n"], n, n[large], target_n]),
        "value": np.concatenate([counted["second_right"] / counted["n"], adv / n, adv[large] / n[large],
                                 hits / target_n]),
        "reference": np.concatenate([counted["first_right"] / counted["n"], clean / n, chance, control / target_n]),
        "p_value": np.concatenate([mcnemar_p(counted["b"], counted["c"]),
                                   mcnemar_p(info["b"][rows], info["c"][rows]),
                                   binomial_p(adv[large], n[large], null),
                                   binomial_p(hits, target_n, control / target_n)]),
        "null": np.concatenate([np.full(len(counted["n"]) + len(rows), np.nan), null,
                                np.full(int(patch.sum()), np.nan)]),
    }
    order = np.lexsort((np.arange(len(columns["cfg"])), columns["family"], columns["cfg"]))  # stable
    columns = {name: values[order] for name, values in columns.items()}
    alone = columns["family"] == PATCH
    columns["p_adjusted"] = np.where(alone, columns["p_value"],
                                     holm(columns["p_value"], columns["cfg"] * len(CHECKS) + columns["family"]))
    minimum = np.where(columns["family"] == 4, FAR_ABOVE_CHANCE, MIN_MARGIN)
    shown = (columns["p_adjusted"] < ALPHA) & (columns["value"] - columns["reference"] >= minimum - 1e-12)
    columns["fired"] = np.where(alone, ~shown, shown)  # P fires where the patch is *not* shown to beat
    return _flag_table(points, info, columns)



_REFERENCE_LABEL = {3: "clean", 4: "chance", PATCH: "control"}


def _flag_table(points: pa.Table, info: dict[str, np.ndarray], columns: dict[str, np.ndarray]) -> pa.Table:
    """The output table: configuration columns, the qualified point's columns, numbers, sentences."""
    at, family = arrow(columns["point"]), arrow(columns["family"])
    labels = _strings([_REFERENCE_LABEL.get(f, "") for f in range(len(CHECKS))]).take(family)
    own = columns["reference_point"] >= 0
    references = pc.if_else(arrow(own), info["name"].take(arrow(np.where(own, columns["reference_point"], 0))),
                            labels)
    data = {name: points.column(name).take(at) for name in (*CONFIG_COLUMNS, "attack_label", "norm", "eps",
                                                              "eps_label", "attack_params", "n_samples")}
    data["flag"] = pa.DictionaryArray.from_arrays(family.cast(pa.int32()), _strings(list(CHECKS)))
    data.update(value=columns["value"], reference=columns["reference"], reference_label=references,
                p_value=columns["p_value"], p_adjusted=columns["p_adjusted"], n_pairs=columns["n"],
                fired=columns["fired"], detail=_details(info, at, references, columns))
    return pa.Table.from_arrays([(data[f.name] if isinstance(data[f.name], (pa.Array, pa.ChunkedArray))
                                  else arrow(data[f.name])).cast(f.type) for f in SCHEMA], schema=SCHEMA)





def _details(info: dict[str, np.ndarray], at: pa.Array, references: pa.Array,
             columns: dict[str, np.ndarray]) -> pa.Array:
    """The sentences, one per flag, family by family, put back in the flags' order. Numbers
    are formatted once per distinct value (a store's flags repeat few of them) and the
    pieces joined by Arrow, so no flag becomes a Python string."""
    fields = {"point": info["name"].take(at), "reference": references, "value": columns["value"],
              "ref": columns["reference"], "n": columns["n"], "null": columns["null"], "p": columns["p_value"],
              "p_adjusted": columns["p_adjusted"], "radius": info["radius"][columns["point"]],
              "unbounded": np.isinf(info["eps"][columns["point"]])}
    parts, where = [], []
    for family, template in enumerate(SENTENCES):
        rows = np.flatnonzero(columns["family"] == family)
        if not len(rows):
            continue
        taken = arrow(rows)
        values = {name: v[rows] if isinstance(v, np.ndarray) else v.take(taken) for name, v in fields.items()}
        if family == 4:
            values["budget"] = pc.if_else(arrow(values["unbounded"]), _literal(""), _render(BUDGET, values))
        parts.append(_render(template, values))
        where.append(rows)
    if not parts:
        return _strings([])
    return pa.concat_arrays(parts).take(arrow(np.argsort(np.concatenate(where))))


def _render(template: str, values: dict) -> pa.Array:
    """``template.format(**row)`` for every row of ``values`` (Arrow strings, or numpy numbers
    formatted with the field's format spec)."""
    pieces = []
    for literal, name, spec, _ in string.Formatter().parse(template):
        if literal:
            pieces.append(_literal(literal))
        if name is not None:
            value = values[name]
            pieces.append(_formatted(value, spec) if isinstance(value, np.ndarray) else value)
    return pc.binary_join_element_wise(*pieces, _literal(""))


def _formatted(values: np.ndarray, spec: str) -> pa.Array:
    """``format(v, spec)`` of each value, computed once per distinct value (floats told apart
    by their bits, so -0.0 and NaN keep their own text)."""
    floating = values.dtype.kind == "f"
    keys = np.ascontiguousarray(values, dtype=np.float64).view(np.int64) if floating else values.astype(np.int64)
    distinct, inverse = np.unique(keys, return_inverse=True)
    texts = [format(v, spec) for v in (distinct.view(np.float64) if floating else distinct).tolist()]
    return _strings(texts).take(arrow(inverse.ravel()))
