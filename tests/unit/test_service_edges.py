"""Small service edges of issue 13: malformed JSON answers what docs/service.md says; every `X-Memos-Principal`
header is checked (and two `Authorization` headers are refused); `memos keys add system` warns; errors that may
reach a remote caller name files relative to the data dir, never the server's absolute paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from live_server import in_process_transport
from starlette.testclient import TestClient

from memos.cli import main
from memos.cubes.blobs import read_verified
from memos.errors import CorruptPayload
from memos.server.http import create_app
from memos.server.keys import KeyRing
from memos.storage.sqlite import SqliteStore
from memos.types import PayloadRef

ROOT = Path(__file__).resolve().parents[2]
ALICE = "memos_test-alice-key"
BOB = "memos_test-bob-key"


@pytest.fixture
def client(tmp_path):
    transport = in_process_transport(tmp_path)
    app = create_app(transport, KeyRing.of_keys({ALICE: "agent:alice", BOB: "agent:bob"}), mcp=True)
    with TestClient(app) as client:
        yield client
    transport.close()


def test_malformed_json_answers_what_the_service_docs_say(client):
    headers = {"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"}
    for path in ("/v1/execute", "/v1/syscalls/write", "/v1/batch"):
        response = client.post(path, content=b'{"op": "write", "cube": ', headers=headers)
        assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid"), path
    mcp = client.post("/mcp", content=b"{not json", headers={**headers, "Accept": "application/json, text/event-stream"})
    assert mcp.status_code == 400 and mcp.json()["error"]["code"] == -32700  # JSON-RPC's parse error
    docs = (ROOT / "docs" / "service.md").read_text()
    assert "| 422 | `invalid`, `policy` | malformed JSON" in docs
    assert "malformed JSON sent to `/mcp` is a 400 with JSON-RPC's parse error (-32700)" in docs


def test_every_x_memos_principal_header_is_checked(client):
    for order in (["agent:alice", "agent:bob"], ["agent:bob", "agent:alice"]):
        headers = [("Authorization", f"Bearer {ALICE}"), *(("X-Memos-Principal", p) for p in order)]
        response = client.post("/v1/syscalls/list_cubes", json={}, headers=headers)
        assert response.status_code == 403, order
        assert response.json()["error"]["details"]["asserted"] == "agent:bob"
    same = [("Authorization", f"Bearer {ALICE}"), ("X-Memos-Principal", "agent:alice"),
            ("X-Memos-Principal", "agent:alice")]
    assert client.post("/v1/syscalls/list_cubes", json={}, headers=same).status_code == 200


def test_two_authorization_headers_are_refused(client):
    for keys in ([ALICE, BOB], [ALICE, ALICE]):
        headers = [("Authorization", f"Bearer {k}") for k in keys]
        assert client.post("/v1/syscalls/list_cubes", json={}, headers=headers).status_code == 401


def test_adding_a_key_for_a_superuser_warns(tmp_path, capsys):
    assert main(["--home", str(tmp_path), "keys", "add", "system"]) == 0
    err = capsys.readouterr().err
    assert "warning: 'system' is a superuser" in err and "every cube" in err
    assert main(["--home", str(tmp_path), "keys", "add", "agent:writer"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_storage_errors_name_files_relative_to_the_data_dir(tmp_path):
    home = tmp_path / "home"
    (home / "blobs" / "ab").mkdir(parents=True)
    ref = PayloadRef(path=str(home / "blobs" / "ab" / "m_0123.safetensors"), sha256="0" * 64, size_bytes=1)
    with pytest.raises(CorruptPayload) as missing:
        read_verified(ref, what="activation payload")
    assert "blobs/ab/m_0123.safetensors is missing" in str(missing.value)
    (home / "memos.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptPayload) as corrupt:
        SqliteStore(home / "memos.sqlite3")
    for error in (missing.value, corrupt.value):
        assert str(tmp_path) not in str(error) and str(tmp_path) not in str(error.details), error
    assert "memos.sqlite3" in str(corrupt.value)


def test_payload_refs_over_http_name_their_file_from_the_data_dir(tmp_path):
    from fakes import FakeModelPort, HashingEmbedder

    from memos.kernel import Kernel
    from memos.service import KernelService
    from memos.storage.vector import InMemoryVectorIndex
    from memos.transports import InProcessTransport

    kernel = Kernel(SqliteStore(tmp_path / "memos.sqlite3", synchronous="NORMAL"), InMemoryVectorIndex(),
                    HashingEmbedder(), model=FakeModelPort())
    transport = InProcessTransport(KernelService(kernel))
    headers = {"Authorization": f"Bearer {ALICE}"}
    with TestClient(create_app(transport, KeyRing.of_keys({ALICE: "agent:alice"}))) as client:
        client.post("/v1/syscalls/create_cube", json={"name": "team/x"}, headers=headers)
        memory = client.post("/v1/syscalls/write", json={"cube": "team/x", "content": "a fact"}, headers=headers).json()
        migrated = client.post("/v1/syscalls/migrate", json={"ids": [memory["id"]], "to": "activation"}, headers=headers)
        assert migrated.status_code == 200, migrated.text
        read = client.post("/v1/syscalls/read", json={"id": memory["id"]}, headers=headers).json()
        batch = client.post("/v1/batch", json={"syscalls": [{"op": "read", "id": memory["id"]}]}, headers=headers).json()
    for answer in (migrated.text, read, batch):
        assert str(tmp_path) not in json.dumps(answer)
    assert read["payload"]["path"].startswith("blobs/") and read["payload"]["path"].endswith(".safetensors")
    assert batch["results"][0]["ok"]["payload"]["path"] == read["payload"]["path"]
    assert Path(kernel.store.get_version(memory["id"]).payload["path"]).is_absolute()  # the host loads this one
    transport.close()
