"""The offline point-in-time join of DESIGN.md ("the oracle"), in pandas.

Independent of the streaming join: it sees all events at once, in arrival order, and
applies the label rules directly. Streaming output must equal it.
"""
from __future__ import annotations

from typing import Iterable, Optional

import pandas as pd

from schemas.config import PipelineConfig
from schemas.errors import EventError
from schemas.events import EventParser


def parse_valid(config: PipelineConfig, requests: Iterable[bytes],
                feedback: Iterable[bytes], pii=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Valid requests (first per id wins, in arrival order) and valid feedback."""
    parser = EventParser(config, pii)
    reqs, seen = [], set()
    for raw in requests:
        try:
            r = parser.parse_request(raw)
        except EventError:
            continue
        if r.request_id in seen:
            continue
        seen.add(r.request_id)
        reqs.append({"request_id": r.request_id, "request_ts": r.ts})
    fbs = []
    for order, raw in enumerate(feedback):
        try:
            f = parser.parse_feedback(raw)
        except EventError:
            continue
        fbs.append({"request_id": f.request_id, "f_ts": f.ts, "type": f.type,
                    "value": f.value, "fields": f.fields, "order": order})
    return (pd.DataFrame(reqs, columns=["request_id", "request_ts"]),
            pd.DataFrame(fbs, columns=["request_id", "f_ts", "type", "value", "fields", "order"]))


def oracle_labels(config: PipelineConfig, requests: Iterable[bytes],
                  feedback: Iterable[bytes], pii=None) -> pd.DataFrame:
    """Expected labels: columns request_id, request_ts, label, label_ts, positive_ts.

    ``positive_ts`` (binary) is the set of event times of in-window positive feedback;
    a positive's ``label_ts`` may be any of them. Unlabeled regression requests are absent.
    """
    reqs, fbs = parse_valid(config, requests, feedback, pii)
    window = config.join.label_window_ms
    merged = reqs.merge(fbs, on="request_id", how="inner")
    in_window = merged[(merged.f_ts >= merged.request_ts)
                       & (merged.f_ts < merged.request_ts + window)]
    out = reqs.copy()
    if config.label.kind == "binary":
        pos = in_window[in_window["type"].isin(list(config.label.positive))]
        pos_ts = pos.groupby("request_id")["f_ts"].apply(frozenset)
        out["positive_ts"] = out.request_id.map(pos_ts)
        is_pos = out.positive_ts.notna()
        out["label"] = is_pos.astype(int)
        out["label_ts"] = (out.request_ts + window).where(~is_pos, other=None)
        out.loc[is_pos, "label_ts"] = out.loc[is_pos, "positive_ts"].map(min)
        return out.reset_index(drop=True)
    cand = in_window[in_window["type"].isin(list(config.label.feedback))].copy()
    cand["outcome"] = [_outcome(config, row) for row in cand.itertuples()]
    cand = cand[cand.outcome.notna()].sort_values(["request_id", "f_ts", "order"])
    first = cand.groupby("request_id").head(1).set_index("request_id")
    out = out[out.request_id.isin(first.index)].copy()
    out["label"] = out.request_id.map(first.outcome)
    out["label_ts"] = out.request_id.map(first.f_ts)
    out["positive_ts"] = None
    return out.reset_index(drop=True)


def _outcome(config: PipelineConfig, row) -> Optional[float]:
    spec = config.label.value
    if spec == "elapsed_seconds":
        return (row.f_ts - row.request_ts) / 1000.0
    name = spec[len("field:"):]
    v = row.value if name == "value" else row.fields.get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        return None
    return float(v)


def assert_matches_oracle(expected: pd.DataFrame, labeled: dict[str, dict]) -> None:
    """Assert a streaming result ``{request_id: example}`` equals the oracle."""
    exp = {r.request_id: r for r in expected.itertuples()}
    missing = sorted(set(exp) - set(labeled))[:10]
    extra = sorted(set(labeled) - set(exp))[:10]
    assert not missing and not extra, f"missing {missing}, unexpected {extra}"
    for rid, row in exp.items():
        got = labeled[rid]
        assert got["label"] == row.label, f"{rid}: label {got['label']} != {row.label}"
        assert got["request_ts"] == row.request_ts
        if isinstance(row.positive_ts, frozenset):
            assert got["label_ts"] in row.positive_ts, f"{rid}: label_ts {got['label_ts']} not in {sorted(row.positive_ts)}"
        else:
            assert got["label_ts"] == row.label_ts, f"{rid}: label_ts {got['label_ts']} != {row.label_ts}"
