"""The demo finds its example pipelines wherever its module lives in the tree."""
from __future__ import annotations

from streams.dev.demo import EXAMPLES


def test_demo_examples_exist():
    assert (EXAMPLES / "ctr.yaml").is_file() and (EXAMPLES / "airport.yaml").is_file()
