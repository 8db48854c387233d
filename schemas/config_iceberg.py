"""The ``dataset.iceberg`` section: commit closed windows to an Apache Iceberg table.

```yaml
dataset:
  iceberg:
    table: labels.ctr                 # namespace.table
    catalog: {type: sql, uri: "sqlite:///data/catalog.db", warehouse: "file:///abs/warehouse"}
```

``catalog`` holds any pyiceberg catalog properties (rest, glue, hive, sql), passed on
as strings.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from schemas.config_checks import Section, fail, non_empty_str

_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


@dataclass(frozen=True)
class IcebergSpec:
    """The Iceberg table closed windows are committed to, and its catalog's properties."""
    table: str
    catalog: tuple[tuple[str, str], ...]

    def catalog_properties(self) -> dict[str, str]:
        """The catalog properties as pyiceberg's ``load_catalog`` takes them."""
        return dict(self.catalog)


def iceberg_spec(dataset: Section) -> Optional[IcebergSpec]:
    """Validate ``dataset.iceberg`` (absent: no table)."""
    if dataset.data.get("iceberg") is None:
        return None
    sec = dataset.sub("iceberg", ("table", "catalog"))
    table = sec.get("table", non_empty_str)
    if not _TABLE_RE.match(table):
        raise fail(sec.name("table"), f"{table!r} is not namespace.table; write e.g. "
                                       "labels.ctr")
    catalog: Any = sec.get("catalog", lambda v, f: v)
    if not isinstance(catalog, dict) or not catalog:
        raise fail(sec.name("catalog"), f"{catalog!r} is not a mapping of pyiceberg catalog "
                                         "properties; write e.g. {type: sql, uri: "
                                         "\"sqlite:///data/catalog.db\", warehouse: "
                                         "\"file:///abs/warehouse\"}")
    for key, value in catalog.items():
        if not isinstance(value, (str, int, float, bool)):
            raise fail(f"{sec.name('catalog')}.{key}", f"{value!r} is not a scalar; catalog "
                                                        "properties are strings")
    return IcebergSpec(table, tuple(sorted((str(k), str(v)) for k, v in catalog.items())))
