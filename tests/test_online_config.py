"""``model.update_every`` / ``model.update_guard``: checked at start, naming field, value, fix."""
from __future__ import annotations

import copy

import pytest
import yaml

from schemas.config import config_from_dict
from schemas.config_estimator import UpdateSpec
from schemas.errors import ConfigError
from tests.jobs_support import EXAMPLES

ENV = {"DLABEL_PII_KEY": "k"}


def _model(**model):
    data = yaml.safe_load((EXAMPLES / "ctr.yaml").read_text())
    data = copy.deepcopy(data)
    data["model"].update(model)
    return config_from_dict(data, environ=ENV).model


def test_off_by_default_and_the_accepted_forms():
    assert _model().updates == UpdateSpec() and not UpdateSpec().enabled
    assert _model(update_every="5m").updates == UpdateSpec(every_ms=300_000)
    assert _model(update_every="500 rows").updates == UpdateSpec(every_rows=500)
    assert _model(update_every=False).updates == UpdateSpec()  # YAML's `off`
    assert _model(update_every="off").updates == UpdateSpec()
    spec = _model(update_every="1m", update_guard={"tolerance": 0.1, "rows": 300}).updates
    assert spec == UpdateSpec(60_000, None, 0.1, 300) and spec.enabled


@pytest.mark.parametrize("model,field,says", [
    ({"update_every": "5x"}, "model.update_every", "'5x' is neither a duration nor a row count"),
    ({"update_every": 500}, "model.update_every", "a bare number is ambiguous"),
    ({"update_every": "0 rows"}, "model.update_every", "'0 rows' is not a positive row count"),
    ({"update_every": "0s"}, "model.update_every", "is zero"),
    ({"update_guard": {"tolerance": 0.1}}, "model.update_guard",
     "in-window updates are off; set model.update_every"),
    ({"update_every": "5m", "update_guard": {"tolerance": -0.1}},
     "model.update_guard.tolerance", "-0.1 is not a number"),
    ({"update_every": "5m", "update_guard": {"rows": 3}}, "model.update_guard.rows",
     "at least 10"),
    ({"update_every": "5m", "update_guard": {"rowz": 3}}, "model.update_guard",
     "unknown key(s) 'rowz'"),
    ({"update_every": "5m", "estimator": "tests.jobs_byo_factories:hgb_classifier",
      "training": "refit"}, "model.update_every",
     "cannot learn a few rows at a time; remove model.update_every"),
])
def test_errors_name_the_field_the_value_and_the_fix(model, field, says):
    with pytest.raises(ConfigError) as e:
        _model(**model)
    msg = str(e.value)
    assert f"{field}: " in msg and says in msg


def test_partial_fit_models_may_update_even_when_refit():
    """A refit champion whose estimator has partial_fit is continued in-window."""
    assert _model(update_every="5m", training="refit").updates.enabled
    assert _model(update_every="5m",
                  estimator="tests.jobs_byo_factories:river_logistic").updates.enabled
