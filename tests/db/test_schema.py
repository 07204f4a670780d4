"""The migrations make exactly the schema the models describe, on SQLite and PostgreSQL:
a column or index added to a model without its migration (or the other way round) fails
here, not on an operator's `ivr db upgrade`."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ivr.db import Database
from ivr.db.models import Base


def test_the_migrated_schema_is_the_models_schema(db: Database):
    with db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
