"""What the server documents: its settings in the README, its operations in OpenAPI."""

from __future__ import annotations

from collections import Counter

from tests.conftest import make_settings
from tileserver.app import create_app
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.settings import PROJECT_ROOT, Settings


def test_every_setting_is_in_the_readme():
    """The README's configuration table names each TILESERVER_* variable."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    missing = [f for f in Settings.model_fields if f"`TILESERVER_{f.upper()}`" not in readme]
    assert missing == []


def test_operation_ids_are_unique(tmp_path):
    """OpenAPI requires it, and client generators name their functions by it."""
    store = SQLiteStore(tmp_path / "catalog.db")
    schema = create_app(make_settings(tmp_path), store=store).openapi()
    store.close()
    ids = Counter(
        operation["operationId"] for path in schema["paths"].values() for operation in path.values()
    )
    assert len(ids) > 50
    assert [i for i, n in ids.items() if n > 1] == []
    posted = schema["paths"]["/images/{image_id}/download.{fmt}"]
    assert set(posted) == {"get", "post"} and "requestBody" in posted["post"]
