"""The public namespace: complete, sorted, lazy; foreign errors never escape untranslated."""

from __future__ import annotations

import subprocess
import sys

import interlock
from interlock import exceptions


def test_all_is_sorted_and_resolves() -> None:
    assert interlock.__all__ == sorted(interlock.__all__)
    for name in interlock.__all__:
        assert getattr(interlock, name) is not None, name


def test_every_exception_is_public_and_under_the_root() -> None:
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        assert issubclass(cls, interlock.InterlockError)
        assert name in interlock.__all__
        assert isinstance(cls.code, str)
        assert cls.code


def test_import_does_no_work() -> None:
    code = (
        "import sys, interlock; "
        "heavy = [m for m in ('sqlalchemy', 'cedarpy', 'fastapi', 'httpx', 'mcp') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_foreign_errors_are_translated(tmp_path) -> None:
    """Each foreign library's failure reaches the caller as an InterlockError."""
    import pytest

    from interlock import AuthenticationError, ConfigError, PolicyError, StorageError
    from interlock._internal.identity.tokens import TokenService
    from interlock._internal.settings import DatabaseSettings, IdentitySettings
    from interlock._internal.store.engine import make_engine, transaction

    with pytest.raises(AuthenticationError):  # PyJWT
        TokenService(IdentitySettings()).verify("not.a.jwt")
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'x.db'}"))
    with pytest.raises(StorageError), transaction(engine) as conn:  # SQLAlchemy
        conn.exec_driver_sql("select * from no_such_table")
    with pytest.raises(ConfigError):  # SQLAlchemy URL parsing
        make_engine(DatabaseSettings(url="nosuchdialect://x"))
    from interlock._internal.manifest.loader import load_manifest_text
    from interlock._internal.policy.compiler import compile_manifest

    (tmp_path / "bad.cedar").write_text("permit (")
    text = (
        "name: w\nversion: '1'\nowner: o\nobjective: o\nsuccess_metric: {name: m}\nenvironments: [prod]\n"
        "tools: [{name: t.read, verb: read}]\npolicies: [bad.cedar]\n"
    )
    loaded = load_manifest_text(text, base_dir=tmp_path)
    with pytest.raises(PolicyError):  # cedarpy
        compile_manifest(loaded)
