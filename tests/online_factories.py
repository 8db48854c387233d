"""A scikit-learn Pipeline that learns with partial_fit, for the in-window update tests."""
from __future__ import annotations

from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from tests.jobs_byo_factories import numbers


def sgd_pipeline(seed: int = 0):
    """The stateless encoding, sklearn's incremental scaler and a logistic SGD."""
    return make_pipeline(FunctionTransformer(numbers), StandardScaler(),
                         SGDClassifier(loss="log_loss", learning_rate="constant", eta0=0.02,
                                       random_state=seed))
