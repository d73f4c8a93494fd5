"""The manifest loader: the reference manifest loads, and every error names file, line and field."""

from __future__ import annotations

import copy
import hashlib
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interlock._internal.manifest.loader import (
    MAX_BYTES,
    LoadedManifest,
    close_schema,
    dotted,
    load_manifest,
    load_manifest_text,
)
from interlock.exceptions import ManifestError

BASE = """\
name: wf
version: "1"
owner: owner@example.com
objective: Test the loader.
success_metric: {name: works}
environments: [prod, staging]
roles:
  clerk:
    verbs: [read, refund]
agents:
  - id: bot
    environment: prod
    roles: [clerk]
tools:
  - name: pay
    verb: refund
    traits: [money]
    input_schema:
      type: object
      properties:
        amount: {type: number}
        currency: {enum: [USD, EUR]}
        meta:
          type: object
          properties:
            note: {type: string}
      required: [amount]
  - name: look
    verb: read
rules:
  allow:
    - {id: small, tool: pay, when: "amount <= 50"}
"""


def load(text: str, **kwargs: Any) -> LoadedManifest:
    return load_manifest_text(text, file="wf.yaml", **kwargs)


def line_with(text: str, needle: str, nth: int = 1) -> int:
    """1-based number of the nth line containing ``needle``."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) >= nth, f"{needle!r} not in text"
    return hits[nth - 1]


def expect_error(
    text: str, *, field: str | None, line: int | None, message: str, **kwargs: Any
) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        load(text, **kwargs)
    err = info.value
    assert err.reason.find(message) >= 0, err.reason
    assert (err.file, err.line, err.field) == ("wf.yaml", line, field), str(err)
    where = f"wf.yaml:{line}: " if line else "wf.yaml: "
    assert str(err) == (f"{where}{field}: {err.reason}" if field else f"{where}{err.reason}")
    return err


# --- the reference manifest ------------------------------------------------------------------------


def test_reference_manifest_loads(support_manifest_path: Path) -> None:
    loaded = load_manifest(support_manifest_path)
    raw = support_manifest_path.read_bytes()
    assert loaded.sha256 == hashlib.sha256(raw).hexdigest()
    assert loaded.version_id == f"support-triage@1.0.0#{loaded.sha256[:12]}"
    assert loaded.text == raw.decode()
    assert loaded.path == support_manifest_path.resolve()
    assert loaded.base_dir == support_manifest_path.resolve().parent
    m = loaded.manifest
    assert len(m.tools) == 8
    assert [a.id for a in m.agents] == ["triage-bot", "reporter"]
    text = loaded.text
    assert loaded.line_of("tools", 6, "verb") == line_with(text, "verb: refund")
    assert loaded.line_of("tools", 6) == line_with(text, "- name: payments.refund")
    assert loaded.line_of("rules", "allow", 3, "when") == line_with(text, "small-refunds")
    # Unknown paths fall back to the nearest ancestor that has a line.
    assert loaded.line_of("tools", 6, "nothing", "here") == line_with(text, "- name: payments.refund")
    assert loaded.line_of() == line_with(text, "name: support-triage")


def test_reference_schemas_are_closed(support_manifest_path: Path) -> None:
    m = load_manifest(support_manifest_path).manifest
    update = m.tool("tickets.update")
    assert update is not None
    schema = update.input_schema
    assert schema["additionalProperties"] is False
    assert schema["properties"]["fields"]["additionalProperties"] is False
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"ticket_id": "T-1", "fields": {"priority": "high"}})
    assert not validator.is_valid({"ticket_id": "T-1", "fields": {"priority": "high"}, "extra": 1})
    assert not validator.is_valid({"ticket_id": "T-1", "fields": {"colour": "red"}})


def test_version_id_follows_the_exact_text() -> None:
    first, second = load(BASE), load(BASE + "\n")
    assert first.version_id == f"wf@1#{hashlib.sha256(BASE.encode()).hexdigest()[:12]}"
    assert first.sha256 != second.sha256
    assert first.version_id != second.version_id


def test_load_manifest_text_defaults() -> None:
    loaded = load_manifest_text(BASE)
    assert loaded.path is None
    assert loaded.base_dir == Path.cwd()
    with pytest.raises(ManifestError, match="^<string>:"):
        load_manifest_text(BASE.replace("verb: read", "verb: look"))


# --- YAML-level errors -----------------------------------------------------------------------------


def test_invalid_yaml_names_the_line() -> None:
    text = BASE.replace("objective: Test the loader.", "objective: [unclosed")
    err = expect_error(text, field=None, line=line_with(text, "success_metric"), message="invalid YAML")
    assert "while parsing a flow sequence" in err.reason


def test_tab_indentation() -> None:
    text = BASE + "pause_owners:\n\t- x\n"
    expect_error(text, field=None, line=line_with(text, "\t- x"), message="invalid YAML")


def test_duplicate_mapping_key() -> None:
    text = BASE.replace("    verb: refund\n", "    verb: refund\n    verb: read\n")
    expect_error(
        text,
        field="tools[0].verb",
        line=line_with(text, "verb: read"),
        message=f"duplicate key 'verb' (first on line {line_with(text, 'verb: refund')})",
    )


def test_duplicate_top_level_key() -> None:
    text = BASE + 'version: "2"\n'
    expect_error(
        text, field="version", line=line_with(text, 'version: "2"'), message="duplicate key 'version'"
    )


@pytest.mark.parametrize(("key", "kind"), [("1", "int"), ("yes", "bool"), ("null", "null"), ("1.5", "float")])
def test_non_string_keys(key: str, kind: str) -> None:
    text = BASE.replace("  clerk:\n", f"  {key}:\n")
    expect_error(
        text,
        field="roles",
        line=line_with(text, f"  {key}:"),
        message=f"is read as a {kind} (put it in quotes)",
    )


def test_complex_key() -> None:
    text = BASE + "? [a, b]\n: 1\n"
    expect_error(text, field=None, line=line_with(text, "? [a, b]"), message="mapping keys must be strings")


def test_alias_bomb_is_refused() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for name, prev in zip("bcdefgh", "abcdefg", strict=True):
        bomb += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]\n"
    with pytest.raises(ManifestError, match="alias bomb"):
        load(BASE + bomb)


def test_recursive_alias_is_refused() -> None:
    text = BASE + "out_of_scope: &loop [*loop]\n"
    expect_error(
        text, field="out_of_scope[0]", line=line_with(text, "out_of_scope"), message="alias refers to a value"
    )


def test_plain_aliases_and_merge_keys_work() -> None:
    text = BASE.replace("  - name: look\n    verb: read\n", "") + textwrap.dedent(
        """\
        x-schema: &schema
          type: object
          properties: {q: {type: string}}
        """
    )
    # An unknown top-level key is still an error: anchors need a home the models accept.
    expect_error(text, field="x-schema", line=line_with(text, "x-schema"), message="unknown key")
    text = BASE.replace(
        "  - name: look\n    verb: read\n",
        "  - &look {name: look, verb: read, description: first}\n"
        "  - {<<: *look, name: look2, traits: [pii]}\n",
    )
    m = load(text).manifest
    look2 = m.tool("look2")
    assert look2 is not None
    assert (look2.verb, look2.description, look2.traits) == ("read", "first", ["pii"])


def test_merge_of_a_scalar_is_refused() -> None:
    text = BASE.replace("  - name: look\n    verb: read\n", "  - {<<: 5, name: look, verb: read}\n")
    with pytest.raises(ManifestError, match="'<<' can only merge mappings"):
        load(text)


def test_deep_nesting_is_refused_before_the_parser_recurses() -> None:
    text = BASE + "out_of_scope: " + "[" * 5000 + "]" * 5000 + "\n"
    expect_error(text, field=None, line=line_with(text, "out_of_scope"), message="nested more than 64 levels")


def test_size_cap() -> None:
    text = BASE + "# " + "x" * MAX_BYTES + "\n"
    with pytest.raises(ManifestError, match="larger than 1048576 bytes"):
        load(text)


def test_size_cap_on_files(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(BASE + "# " + "x" * MAX_BYTES + "\n")
    with pytest.raises(ManifestError, match="larger than"):
        load_manifest(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the manifest is empty"),
        ("# only a comment\n", "the manifest is empty"),
        ("- a\n- b\n", "a manifest is a YAML mapping"),
        ("just text\n", "a manifest is a YAML mapping"),
        ("a: 1\n---\nb: 2\n", "expected a single document in the stream, but found another document"),
        ("a: !!python/object:os.system x\n", "unsupported YAML tag"),
        ("a: !!binary aGVsbG8=\n", "unsupported YAML tag"),
        ("a: !custom {b: 1}\n", "unsupported YAML tag"),
        ("a: \x07\n", "is not allowed"),
        ("a: .inf\n", "not a finite number"),
        ("a: " + "9" * 5000 + "\n", "is not a usable number"),
    ],
)
def test_yaml_shapes(text: str, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        load(text)
    assert message in info.value.reason


def test_dates_stay_text() -> None:
    loaded = load(BASE.replace('version: "1"', "version: 2024-05-01"))
    assert loaded.manifest.version == "2024-05-01"


def test_surrogates_in_text() -> None:
    with pytest.raises(ManifestError, match="not valid Unicode"):
        load(BASE + "# \ud800\n")


# --- model errors ----------------------------------------------------------------------------------


def test_unknown_key_suggests_the_right_one() -> None:
    text = BASE.replace("    traits: [money]\n", "    trait: [money]\n")
    expect_error(
        text,
        field="tools[0].trait",
        line=line_with(text, "trait: [money]"),
        message="unknown key; did you mean 'traits'?",
    )


def test_unknown_top_level_key() -> None:
    text = BASE + "budget: {}\n"
    expect_error(text, field="budget", line=line_with(text, "budget:"), message="did you mean 'budgets'?")


def test_unknown_key_in_discriminated_union() -> None:
    text = BASE.replace("    verb: read\n", "    verb: read\n    upstream: {kind: http, url: x, verb: GET}\n")
    expect_error(
        text, field="tools[1].upstream.verb", line=line_with(text, "upstream:"), message="unknown key"
    )


def test_missing_required_key_points_at_its_parent() -> None:
    text = BASE.replace("    verb: read\n", "")
    expect_error(
        text, field="tools[1].verb", line=line_with(text, "- name: look"), message="required key is missing"
    )


def test_bad_verb() -> None:
    text = BASE.replace("verb: read\n", "verb: bogus\n")
    expect_error(
        text,
        field="tools[1].verb",
        line=line_with(text, "verb: bogus"),
        message="'bogus' is not a verb; expected one of read, draft, create, update, send, publish, approve, "
        "refund, invite, delete, execute",
    )


def test_bad_trait() -> None:
    text = BASE.replace("traits: [money]", "traits: [money, cash]")
    expect_error(
        text, field="tools[0].traits[1]", line=line_with(text, "traits:"), message="'cash' is not a trait"
    )


def test_bad_verb_inside_a_union_list() -> None:
    text = BASE.replace("tool: pay, when", "verb: [read, bogus], tool: pay, when")
    expect_error(
        text,
        field="rules.allow[0].verb[1]",
        line=line_with(text, "id: small"),
        message="'bogus' is not a verb",
    )


def test_union_type_mismatch_lists_both() -> None:
    text = BASE.replace("tool: pay, when", "tool: 5, when")
    expect_error(
        text,
        field="rules.allow[0].tool",
        line=line_with(text, "id: small"),
        message="expected a string or a list, found 5",
    )


def test_expected_a_string() -> None:
    text = BASE.replace('version: "1"', "version: 1.0")
    expect_error(
        text, field="version", line=2, message="expected a string, found 1.0; put it in quotes if it is text"
    )


def test_expected_a_mapping_and_a_list() -> None:
    text = BASE.replace("success_metric: {name: works}", "success_metric: works")
    expect_error(text, field="success_metric", line=5, message="expected a mapping")
    text = BASE.replace("environments: [prod, staging]", "environments: prod")
    expect_error(text, field="environments", line=6, message="expected a list")


def test_bad_name_pattern() -> None:
    text = BASE.replace("- name: look", "- name: 'look here'")
    expect_error(
        text, field="tools[1].name", line=line_with(text, "look here"), message="is not a valid name"
    )


def test_bad_dict_key_name() -> None:
    text = BASE.replace("  clerk:\n", "  'bad role':\n")
    expect_error(
        text, field='roles["bad role"]', line=line_with(text, "bad role"), message="is not a valid name"
    )


def test_bad_upstream_kind() -> None:
    text = BASE.replace("    verb: read\n", "    verb: read\n    upstream: {kind: ftp}\n")
    expect_error(
        text,
        field="tools[1].upstream.kind",
        line=line_with(text, "kind: ftp"),
        message="'ftp' is not a valid 'kind'; expected one of 'python', 'http', 'mcp'",
    )


def test_bounds_and_model_validators() -> None:
    text = BASE.replace("    verb: read\n", "    verb: read\n    timeout_s: 0\n")
    expect_error(
        text, field="tools[1].timeout_s", line=line_with(text, "timeout_s"), message="must be greater than 0"
    )
    text = BASE.replace("    - {id: small, tool: pay,", "    - {id: small,")
    expect_error(
        text,
        field="rules.allow[0]",
        line=line_with(text, "id: small"),
        message="at least one of 'tool', 'verb'",
    )
    text = BASE.replace("environments: [prod, staging]", "environments: []")
    expect_error(text, field="environments", line=6, message="needs at least 1 item(s)")


# --- semantic checks -------------------------------------------------------------------------------


def test_duplicate_tool_name() -> None:
    text = BASE.replace("- name: look", "- name: pay")
    expect_error(
        text,
        field="tools[1].name",
        line=line_with(text, "- name: pay", 2),
        message=f"duplicate tool name 'pay' (first on line {line_with(text, '- name: pay')})",
    )


def test_duplicate_agent_id() -> None:
    text = BASE.replace("tools:\n", "  - {id: bot, environment: prod, roles: [clerk]}\ntools:\n")
    expect_error(
        text, field="agents[1].id", line=line_with(text, "{id: bot"), message="duplicate agent id 'bot'"
    )


def test_agent_environment_unknown() -> None:
    text = BASE.replace("environment: prod", "environment: dev")
    expect_error(
        text,
        field="agents[0].environment",
        line=line_with(text, "environment: dev"),
        message="environment 'dev' is not listed in environments (prod, staging)",
    )


def test_agent_role_unknown() -> None:
    text = BASE.replace("roles: [clerk]", "roles: [clerk, boss]")
    expect_error(
        text,
        field="agents[0].roles[1]",
        line=line_with(text, "roles: [clerk, boss]"),
        message="role 'boss' is not defined under roles",
    )


def test_role_grant_unknown_tool() -> None:
    text = BASE.replace("    verbs: [read, refund]\n", "    verbs: [read, refund]\n    tools: [pay, lok]\n")
    expect_error(
        text,
        field="roles.clerk.tools[1]",
        line=line_with(text, "tools: [pay, lok]"),
        message="unknown tool 'lok'; did you mean 'look'?",
    )


def test_rule_unknown_tool_single_and_list() -> None:
    text = BASE + "  forbid:\n    - {tool: nope}\n"
    expect_error(
        text, field="rules.forbid[0].tool", line=line_with(text, "tool: nope"), message="unknown tool 'nope'"
    )
    text = BASE + "  forbid:\n    - tool: [look, nope]\n"
    expect_error(
        text, field="rules.forbid[0].tool[1]", line=line_with(text, "[look, nope]"), message="unknown tool"
    )


def test_rule_unknown_role_and_environment() -> None:
    text = BASE + "  forbid:\n    - {tool: look, roles: [boss]}\n"
    expect_error(text, field="rules.forbid[0].roles[0]", line=line_with(text, "boss"), message="role 'boss'")
    text = BASE + "  forbid:\n    - {tool: look, environments: [dev]}\n"
    expect_error(text, field="rules.forbid[0].environments[0]", line=line_with(text, "dev"), message="'dev'")


def test_duplicate_rule_id_across_kinds() -> None:
    text = BASE + "  forbid:\n    - {id: small, tool: look}\n"
    expect_error(
        text, field="rules.forbid[0].id", line=line_with(text, "{id: small, tool: look}"), message="rule id"
    )


def test_invalid_input_schema_points_inside_it() -> None:
    text = BASE.replace("currency: {enum: [USD, EUR]}", "currency: {type: strng}")
    expect_error(
        text,
        field="tools[0].input_schema.properties.currency.type",
        line=line_with(text, "type: strng"),
        message="invalid JSON Schema: 'strng' is not a JSON Schema type",
    )


def test_invalid_regex_in_schema() -> None:
    text = BASE.replace("note: {type: string}", "note: {type: string, pattern: '(['}")
    expect_error(
        text,
        field="tools[0].input_schema.properties.meta.properties.note.pattern",
        line=line_with(text, "pattern"),
        message="invalid JSON Schema",
    )


def test_invalid_output_schema() -> None:
    text = BASE.replace(
        "    verb: read\n", "    verb: read\n    output_schema: {type: object, required: yes}\n"
    )
    expect_error(
        text,
        field="tools[1].output_schema.required",
        line=line_with(text, "output_schema"),
        message="invalid JSON",
    )


def test_input_schema_must_be_an_object() -> None:
    text = BASE.replace("    verb: read\n", "    verb: read\n    input_schema: {type: string}\n")
    expect_error(
        text,
        field="tools[1].input_schema",
        line=line_with(text, "input_schema: {type: string}"),
        message="must have 'type: object'",
    )


def test_remote_refs_are_refused() -> None:
    text = BASE.replace("note: {type: string}", "note: {$ref: 'https://example.com/s.json'}")
    expect_error(
        text,
        field="tools[0].input_schema.properties.meta.properties.note.$ref",
        line=line_with(text, "$ref"),
        message="only local references",
    )
    local = BASE.replace("note: {type: string}", "note: {$ref: '#/$defs/n'}").replace(
        "      required: [amount]\n", "      required: [amount]\n      $defs: {n: {type: string}}\n"
    )
    load(local)


def test_rule_condition_that_does_not_parse() -> None:
    text = BASE.replace('when: "amount <= 50"', 'when: "amont <= 50"')
    expect_error(
        text,
        field="rules.allow[0].when",
        line=line_with(text, "amont"),
        message="invalid condition for tool 'pay': unknown argument 'amont'",
    )


def test_rule_condition_type_mismatch() -> None:
    text = BASE.replace('when: "amount <= 50"', 'when: "currency == \\"GBP\\""')
    expect_error(
        text, field="rules.allow[0].when", line=line_with(text, "GBP"), message="not an allowed value"
    )


def test_rule_with_when_needs_a_tool() -> None:
    text = BASE.replace("tool: pay, when", "verb: refund, when")
    expect_error(
        text, field="rules.allow[0].when", line=line_with(text, "id: small"), message="must name its tool(s)"
    )


def test_rule_with_when_checks_every_listed_tool() -> None:
    text = BASE.replace("tool: pay, when", "tool: [pay, look], when")
    expect_error(
        text, field="rules.allow[0].when", line=line_with(text, "id: small"), message="for tool 'look'"
    )


def test_risk_condition_that_does_not_parse() -> None:
    text = BASE.replace(
        "    traits: [money]\n",
        "    traits: [money]\n    risk_conditions:\n      - {when: 'amount >> 5', traits: [bulk]}\n",
    )
    expect_error(
        text,
        field="tools[0].risk_conditions[0].when",
        line=line_with(text, "amount >> 5"),
        message="(at column",
    )


def test_nested_condition_paths_load() -> None:
    text = BASE.replace(
        "    traits: [money]\n",
        "    traits: [money]\n    risk_conditions:\n      - {when: 'meta.note == \"x\"', traits: [pii]}\n",
    )
    assert load(text).manifest.tools[0].risk_conditions[0].when == 'meta.note == "x"'


def test_stop_rule_unknown_tools() -> None:
    text = BASE + "stop_rules:\n  - {id: s, kind: missing_data, tool: nope, required: [amount]}\n"
    expect_error(
        text, field="stop_rules[0].tool", line=line_with(text, "id: s,"), message="unknown tool 'nope'"
    )
    text = BASE + "stop_rules:\n  - {id: s, kind: conflicting_records, sources: [look, gone], key: x}\n"
    expect_error(text, field="stop_rules[0].sources[1]", line=line_with(text, "id: s,"), message="'gone'")
    text = BASE + "stop_rules:\n  - {id: s, kind: sequence_failure, sequence: [look, gone]}\n"
    expect_error(text, field="stop_rules[0].sequence[1]", line=line_with(text, "id: s,"), message="'gone'")


def test_stop_rule_required_paths_exist() -> None:
    text = BASE + "stop_rules:\n  - {id: s, kind: missing_data, tool: pay, required: [meta.note, reason]}\n"
    expect_error(
        text,
        field="stop_rules[0].required[1]",
        line=line_with(text, "id: s,"),
        message="has no argument 'reason'",
    )


def test_duplicate_stop_rule_id() -> None:
    text = BASE + "stop_rules:\n  - {id: s, kind: low_confidence}\n  - {id: s, kind: low_confidence}\n"
    expect_error(
        text, field="stop_rules[1].id", line=line_with(text, "id: s,", 2), message="duplicate stop rule id"
    )


def test_mcp_upstream_needs_a_declared_server() -> None:
    text = BASE.replace(
        "    verb: read\n", "    verb: read\n    upstream: {kind: mcp, server: git, tool: log}\n"
    )
    expect_error(
        text,
        field="tools[1].upstream.server",
        line=line_with(text, "kind: mcp"),
        message="unknown MCP server 'git'",
    )
    load(text + "mcp_servers:\n  - {name: git, command: [mcp-server-git]}\n")


def test_policy_files_must_exist(tmp_path: Path) -> None:
    text = BASE + "policies: [extra.cedar, missing.cedar]\n"
    (tmp_path / "extra.cedar").write_text("forbid(principal, action, resource);\n")
    expect_error(
        text,
        field="policies[1]",
        line=line_with(text, "policies"),
        message="policy file 'missing.cedar' not found",
        base_dir=tmp_path,
    )
    (tmp_path / "missing.cedar").write_text("")
    assert load(text, base_dir=tmp_path).manifest.policies == ["extra.cedar", "missing.cedar"]


def test_policies_resolve_from_the_manifest_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "wf"
    folder.mkdir()
    (folder / "p.cedar").write_text("")
    (folder / "workflow.yaml").write_text(BASE + "policies: [p.cedar]\n")
    monkeypatch.chdir(tmp_path)
    loaded = load_manifest("wf/workflow.yaml")
    assert loaded.base_dir == folder.resolve()


def test_golden_set_stays_relative() -> None:
    text = BASE + "evaluation: {golden_set: /etc/golden.yaml}\n"
    expect_error(text, field="evaluation.golden_set", line=line_with(text, "evaluation"), message="relative")
    assert load(BASE + "evaluation: {golden_set: golden.yaml}\n").manifest.evaluation is not None


def test_confidence_thresholds_in_order() -> None:
    text = BASE + "confidence: {auto: 0.5, review: 0.8}\n"
    expect_error(
        text, field="confidence.review", line=line_with(text, "confidence"), message="above the auto"
    )


# --- files -----------------------------------------------------------------------------------------


def test_missing_file() -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest("does/not/exist.yaml")
    assert info.value.code == "manifest_not_found"
    assert str(info.value) == "does/not/exist.yaml: file not found"


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path)
    assert info.value.code == "manifest_unreadable"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_bytes(BASE.encode() + b"# \xff\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.line == BASE.count("\n") + 1
    assert "not valid UTF-8" in str(info.value)


# --- schema normalisation --------------------------------------------------------------------------


def test_close_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "string"}}},
            "open": {"type": "object", "additionalProperties": True},
            "list": {"type": "array", "items": {"type": "object", "properties": {"c": {}}}},
            "untyped": {"properties": {"d": {}}},
            "composed": {"type": "object", "allOf": [{"properties": {"e": {}}}], "properties": {"f": {}}},
            "either": {"anyOf": [{"type": "object", "properties": {"g": {}}}, {"properties": {"h": {}}}]},
        },
    }
    original = copy.deepcopy(schema)
    closed = close_schema(schema)
    assert schema == original  # the input is not modified
    props = closed["properties"]
    assert closed["additionalProperties"] is False
    assert props["a"]["additionalProperties"] is False
    assert props["open"]["additionalProperties"] is True
    assert props["list"]["items"]["additionalProperties"] is False
    assert props["untyped"]["additionalProperties"] is False
    assert props["composed"]["unevaluatedProperties"] is False
    assert "additionalProperties" not in props["composed"]
    assert props["either"]["anyOf"][0]["additionalProperties"] is False
    assert "additionalProperties" not in props["either"]["anyOf"][1]
    validator = jsonschema.Draft202012Validator(closed)
    assert validator.is_valid({"composed": {"e": 1, "f": 2}})
    assert not validator.is_valid({"composed": {"z": 1}})


def test_tool_without_input_schema_takes_no_arguments() -> None:
    look = load(BASE).manifest.tool("look")
    assert look is not None
    assert look.input_schema == {"type": "object", "properties": {}, "additionalProperties": False}


def test_dotted() -> None:
    assert dotted(("tools", 3, "verb")) == "tools[3].verb"
    assert dotted(("roles", "a b", "tools", 0)) == 'roles["a b"].tools[0]'
    assert dotted(()) == ""


# --- properties ------------------------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _assert_only_manifest_errors(text: str) -> None:
    try:
        load(text)
    except ManifestError as err:
        error = err
    else:
        return
    assert error.file == "wf.yaml"
    assert error.line is None or error.line >= 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_JSON)
def test_random_documents_raise_only_manifest_errors(value: Any) -> None:
    _assert_only_manifest_errors(yaml.safe_dump(value, allow_unicode=True))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_random_text_raises_only_manifest_errors(text: str) -> None:
    _assert_only_manifest_errors(text)


_YAMLISH = st.sampled_from(
    [
        ":",
        " ",
        "\n",
        "-",
        "[",
        "]",
        "{",
        "}",
        ",",
        "&a",
        "*a",
        "<<",
        "'",
        '"',
        "#",
        "!!",
        "---",
        "\t",
        "x",
        "1",
    ]
)
REFERENCE = (
    Path(__file__).resolve().parents[2] / "examples" / "support-triage" / "workflow.yaml"
).read_text()
REFERENCE_DATA = yaml.safe_load(REFERENCE)


@settings(max_examples=120, deadline=None)
@given(st.integers(0, len(REFERENCE)), st.integers(0, 20), st.lists(_YAMLISH, max_size=5).map("".join))
def test_text_mutations_of_the_reference_raise_only_manifest_errors(at: int, cut: int, insert: str) -> None:
    _assert_only_manifest_errors(REFERENCE[:at] + insert + REFERENCE[at + cut :])


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += _paths(child, (*path, index))
    return out


REFERENCE_PATHS = _paths(REFERENCE_DATA)[1:]


@st.composite
def _mutated_reference(draw: st.DrawFn) -> Any:
    data = copy.deepcopy(REFERENCE_DATA)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(REFERENCE_PATHS))
        parent = data
        try:
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed it
        action = draw(st.sampled_from(["delete", "replace", "rename", "duplicate"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = draw(_JSON)
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = parent.pop(path[-1])
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[path[-1]]))
    return data


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated_reference())
def test_structural_mutations_of_the_reference_raise_only_manifest_errors(data: Any) -> None:
    _assert_only_manifest_errors(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
