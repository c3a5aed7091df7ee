"""API keys: only hashes are stored, keys map to principals, bad files are refused, revocation needs no restart."""

from __future__ import annotations

import os

import pytest

from memos.server.keys import KEY_PREFIX, KeyFile, KeyRing, add_key, hash_key, load_keys, revoke_keys


def test_a_new_key_is_stored_only_as_its_hash(tmp_path):
    path = tmp_path / "keys.yaml"
    key = add_key(path, "agent:writer")
    assert key.startswith(KEY_PREFIX) and len(key) > 40
    text = path.read_text()
    assert key not in text and hash_key(key) in text
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_keys(path).principal_for(key) == "agent:writer"


def test_keys_map_to_their_principals_and_nothing_else_does(tmp_path):
    path = tmp_path / "keys.yaml"
    alice, bob = add_key(path, "agent:alice"), add_key(path, "agent:bob")
    ring = load_keys(path)
    assert (ring.principal_for(alice), ring.principal_for(bob)) == ("agent:alice", "agent:bob")
    for wrong in (None, "", alice[:-1], alice + "x", hash_key(alice), "x" * 100_000):
        assert ring.principal_for(wrong) is None


def test_json_keys_files_are_read_too(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(f'{{"{hash_key("k1")}": "user:alice"}}')
    path.chmod(0o600)
    assert load_keys(path).principal_for("k1") == "user:alice"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("- not a mapping\n", "expected a mapping"),
        ("abc: agent:alice\n", "not the hex sha256"),
        (f"{'a' * 64}: '*'\n", "invalid principal"),
        (f"{'a' * 64}: 'agent alice'\n", "invalid principal"),
        (f"{'0' * 64}: agent:alice\n", "quote hashes"),
        ("# no keys yet\n", "holds no keys"),
        ("{unclosed: [\n", "not YAML or JSON"),
    ],
)
def test_a_bad_keys_file_is_refused_naming_the_problem(tmp_path, content, message):
    path = tmp_path / "keys.yaml"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ValueError, match=message):
        load_keys(path)


def test_a_keys_file_others_may_write_is_refused(tmp_path):
    path = tmp_path / "keys.yaml"
    add_key(path, "agent:alice")
    path.chmod(0o664)
    with pytest.raises(ValueError, match="writable by group or others"):
        load_keys(path)
    with pytest.raises(ValueError, match="writable by group or others"):
        add_key(path, "agent:bob")


def test_revoking_takes_effect_without_a_restart(tmp_path):
    path = tmp_path / "keys.yaml"
    alice, bob = add_key(path, "agent:alice"), add_key(path, "agent:bob")
    keys = KeyFile(path)
    assert keys.principal_for(bob) == "agent:bob"
    assert revoke_keys(path, "agent:bob") == 1
    assert keys.principal_for(bob) is None
    assert keys.principal_for(alice) == "agent:alice"
    carol = add_key(path, "agent:carol")
    assert keys.principal_for(carol) == "agent:carol"
    assert revoke_keys(path, "agent:nobody") == 0


def test_a_keys_file_broken_while_serving_fails_closed(tmp_path):
    path = tmp_path / "keys.yaml"
    alice = add_key(path, "agent:alice")
    keys = KeyFile(path)
    path.write_text("this: [is not: valid\n")
    assert keys.principal_for(alice) is None
    path.unlink()
    assert keys.principal_for(alice) is None
    again = add_key(path, "agent:alice")
    assert keys.principal_for(again) == "agent:alice"


def test_a_ring_from_plain_keys_hashes_them():
    ring = KeyRing.of_keys({"secret-1": "agent:a"})
    assert ring.principal_for("secret-1") == "agent:a" and len(ring) == 1
