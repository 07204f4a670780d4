"""Schema migrations with Alembic, run from the package (``ivr db upgrade``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config_path_only()).get_current_head()
    assert head is not None
    return head


def alembic_config_path_only() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


class SchemaOutOfDate(RuntimeError):
    """The database schema is older than this version of the code."""


def ensure_schema(engine: Engine, *, auto: bool) -> None:
    """Bring the schema to head when ``auto`` (the embedded SQLite default), else refuse
    with the command to run."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    if auto:
        upgrade(engine)
        return
    raise SchemaOutOfDate(
        f"database schema is at {current or 'nothing'}, this version needs {head}: "
        "run `ivr db upgrade`"
    )
