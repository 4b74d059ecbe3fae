"""Users as the metadata holds them: keys for any name, newer revisions win, what is applied."""

from __future__ import annotations

import pytest

from engram.cluster.users import (
    Users,
    UsersFileError,
    dump_rules,
    load_rules,
    parse_users,
    user_key,
    user_name,
)

NATS_KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=./")


@pytest.mark.parametrize("name", ["app", "default", "a.b*c", "über", "x" * 200, "with:colon/slash"])
def test_any_user_name_makes_a_valid_metadata_key_and_comes_back(name: str) -> None:
    key = user_key(name)
    assert set(key) <= NATS_KEY_CHARS and "=" not in key
    assert user_name(key) == name


def test_records_keep_rules_or_a_deletion() -> None:
    assert load_rules(dump_rules("on #ab ~* +@all")) == "on #ab ~* +@all"
    assert load_rules(dump_rules(None)) is None
    assert load_rules(b"") is None
    with pytest.raises(ValueError, match="must be a string"):
        load_rules(b'{"rules": 3}')


def test_an_older_revision_never_replaces_a_newer_one() -> None:
    users = Users()
    assert users.offer("app", 7, "on +get")
    version = users.version
    # The watch delivering the value the node's own store already replaced.
    assert not users.offer("app", 5, "on +set")
    assert users.records["app"] == (7, "on +get") and users.version == version
    assert users.offer("app", 9, None)
    assert users.version == version + 1


def test_apply_lists_existing_users_by_name_and_leaves_deleted_ones_out() -> None:
    users = Users()
    users.offer("zed", 1, "on +@all")
    users.offer("app", 2, "on +get")
    users.offer("gone", 3, None)
    assert users.apply_args() == ["app", "on +get", "zed", "on +@all"]


def test_a_users_file_is_valkeys_acl_format_and_bad_lines_are_named() -> None:
    text = "# operators\nuser ops on >pw ~* &* +@all\n\nuser default off\nuser reader on nopass %R~* +@read\n"
    assert parse_users(text, "users.acl") == {
        "ops": "on >pw ~* &* +@all", "default": "off", "reader": "on nopass %R~* +@read",
    }
    with pytest.raises(UsersFileError, match=r"users.acl line 2: expected 'user NAME RULES...'"):
        parse_users("user ops on\nops off\n", "users.acl")
    with pytest.raises(UsersFileError, match=r"users.acl line 3: user 'ops' is declared twice"):
        parse_users("user ops on\n\nuser ops off\n", "users.acl")


def test_declared_users_win_over_what_clients_stored() -> None:
    users = Users()
    users.offer("ops", 1, "off")
    users.offer("app", 2, "on +get")
    assert users.apply_args({"ops": "on >pw +@all"}) == ["app", "on +get", "ops", "on >pw +@all"]
