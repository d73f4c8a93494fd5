"""Systems in the manifest: references that validate catches, with file and line, and shared files."""

from __future__ import annotations

from pathlib import Path

import pytest
from systems_fixtures import BOUND, shared_copy

from interlock import ManifestError
from interlock._internal.manifest.loader import load_manifest, load_manifest_text


def _bound(**edits: str) -> str:
    text = BOUND.format(prod=8001, stage=8002)
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def _error(text: str, tmp_path: Path) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        load_manifest_text(text, file="m.yaml", base_dir=tmp_path)
    return info.value


def _line(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_the_bound_manifest_loads(tmp_path: Path) -> None:
    loaded = load_manifest_text(_bound(), base_dir=tmp_path)
    system = loaded.manifest.system("helpdesk")
    assert system is not None
    assert system.tier == 1
    assert sorted(system.bindings) == ["production", "staging"]


def test_unknown_system_is_named_with_a_hint(tmp_path: Path) -> None:
    text = _bound(**{"    system: helpdesk\n": "    system: helpdsk\n"})
    err = _error(text, tmp_path)
    assert "unknown system 'helpdsk'; did you mean 'helpdesk'?" in err.message
    assert err.field == "tools[0].system"
    assert err.line == _line(text, "system: helpdsk")


def test_unknown_data_class(tmp_path: Path) -> None:
    text = _bound(**{"    returns: [pii]": "    returns: [pi]"})
    err = _error(text, tmp_path)
    assert "unknown data class 'pi'" in err.message
    assert err.field == "tools[0].returns[0]"
    assert err.line == _line(text, "returns: [pi]")


def test_binding_for_an_environment_not_listed(tmp_path: Path) -> None:
    text = _bound(**{"      staging: {url": "      stagin: {url"})
    err = _error(text, tmp_path)
    assert "environment 'stagin' is not listed" in err.message
    assert err.field == "systems[0].bindings.stagin"


def test_two_environments_may_not_share_a_credential(tmp_path: Path) -> None:
    text = _bound(**{"env: DESK_STAGING_TOKEN": "env: DESK_PROD_TOKEN"})
    err = _error(text, tmp_path)
    assert "share the credential env:DESK_PROD_TOKEN" in err.message
    assert err.line == _line(text, "staging: {url")


def test_two_environments_may_not_share_an_endpoint(tmp_path: Path) -> None:
    text = BOUND.format(prod=8001, stage=8001)
    err = _error(text, tmp_path)
    assert "share the endpoint http://127.0.0.1:8001" in err.message


def test_a_bound_tool_may_not_keep_its_own_credential_or_full_url(tmp_path: Path) -> None:
    text = _bound(
        **{
            'url: "/tickets/{ticket_id}", body: none}\n  - name: archive.get': (
                'url: "/tickets/{ticket_id}", body: none}\n    credential: {env: OLD}\n  - name: archive.get'
            )
        }
    )
    assert "binds the credential per environment" in _error(text, tmp_path).message
    text = _bound(
        **{
            'url: "/tickets/{ticket_id}", body: none}\n  - name: archive.get': (
                'url: "http://127.0.0.1:9/t/{ticket_id}", body: none}\n  - name: archive.get'
            )
        }
    )
    err = _error(text, tmp_path)
    assert "write upstream.url as a path" in err.message
    assert err.field == "tools[0].upstream.url"


def test_a_path_url_needs_a_bound_system(tmp_path: Path) -> None:
    text = _bound(**{"    system: archive\n": ""})
    err = _error(text, tmp_path)
    assert "a URL that is a path is joined to the tool's system binding" in err.message


def test_flow_rule_and_destination_references(tmp_path: Path) -> None:
    base = _bound()
    text = base.replace(
        "rules:\n",
        "flow_rules:\n  - {id: out, classes: [secrets], to: [external], outcome: deny}\nrules:\n",
    )
    err = _error(text, tmp_path)
    assert "unknown data class 'secrets'; did you mean 'secret'?" in err.message
    assert err.field == "flow_rules[0].classes[0]"
    text = base.replace(
        "    system: archive\n",
        "    system: archive\n    destination: {kind: external, recipient: to}\n",
    )
    err = _error(text, tmp_path)
    assert "has no argument 'to'" in err.message
    assert err.field == "tools[1].destination.recipient"


def test_shared_systems_file_is_imported_and_its_errors_name_it(tmp_path: Path) -> None:
    path = shared_copy(tmp_path)
    loaded = load_manifest(path)
    assert [s.name for s in loaded.manifest.systems] == ["helpdesk", "crm", "payments", "email"]
    assert "systems:" not in loaded.text
    systems = tmp_path / "systems.yaml"
    systems.write_text(systems.read_text().replace("tier: 2", "tier: 3", 1))
    changed = load_manifest(path)
    helpdesk = changed.manifest.system("helpdesk")
    assert helpdesk is not None
    assert helpdesk.tier == 3
    # A changed shared system is a new version of every workflow importing it: decisions name it.
    assert changed.text == loaded.text
    assert (changed.sha256, changed.version_id) != (loaded.sha256, loaded.version_id)
    assert load_manifest(path).version_id == changed.version_id  # and the same text, the same version
    systems.write_text(systems.read_text().replace("data_classes: [pii]", "data_classes: [pij]", 1))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.file == "systems.yaml"
    assert info.value.line == _line(systems.read_text(), "data_classes: [pij]")
    assert "unknown data class 'pij'" in info.value.message
    systems.write_text(systems.read_text().replace("tier: 1", "tierr: 1", 1))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.file == "systems.yaml"
    assert info.value.field == "systems[1].tierr"


def test_missing_systems_file(tmp_path: Path) -> None:
    path = shared_copy(tmp_path)
    path.write_text(path.read_text().replace("imports: [systems.yaml]", "imports: [shared/systems.yaml]"))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert "cannot read systems file 'shared/systems.yaml'" in info.value.message
    assert info.value.field == "imports[0]"
