"""The HTTP API on a real socket: uvicorn on 127.0.0.1, two API keys for two principals, the in-process kernel on
the hashing embedder. Who may read what, how errors map to statuses, the size limit, the HTTP client transport,
TLS, and a schemathesis run against the OpenAPI spec that must find no 500s."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from live_server import in_process_transport, live_server
from schemathesis import GenerationMode

from memos.client import Memos
from memos.errors import AlreadyExists, InvalidSyscall, NotFound, PermissionDenied, VersionConflict
from memos.server.http import create_app, server_config
from memos.server.keys import KeyRing
from memos.transports.http import HttpTransport

pytestmark = pytest.mark.integration

ALICE_KEY, BOB_KEY, FUZZ_KEY = "memos_test-alice-key", "memos_test-bob-key", "memos_test-fuzz-key"
LIMIT = 256 * 1024


class Api:
    """The live server's URL and one HTTP connection pool for the calls a test makes by hand."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url)

    def post(self, path: str, body: object, key: str | None = ALICE_KEY, **headers: str) -> httpx.Response:
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.http.post(path, json=body, headers=headers)

    def raw(self, method: str, path: str, key: str | None = ALICE_KEY, **kwargs) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.http.request(method, path, headers=headers, **kwargs)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    transport = in_process_transport(tmp_path_factory.mktemp("memos-http"))
    keys = KeyRing.of_keys({ALICE_KEY: "agent:alice", BOB_KEY: "agent:bob", FUZZ_KEY: "user:fuzz"})
    with live_server(create_app(transport, keys, max_body_bytes=LIMIT)) as url:
        client = Api(url)
        yield client
        client.http.close()
    transport.close()


def error_of(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


@pytest.fixture(scope="module")
def private_memory(api):
    """alice's private cube with one memory in it; bob has no right on it."""
    assert api.post("/v1/syscalls/create_cube", {"name": "agent/alice/private"}).status_code == 200
    written = api.post("/v1/syscalls/write", {"cube": "agent/alice/private", "content": "alice's PIN hint is blue"})
    assert written.status_code == 200
    return written.json()


# ---------------------------------------------------------------------------------------------------- authentication


def test_calls_without_a_valid_key_get_401(api):
    for headers in ({}, {"Authorization": "Bearer memos_not-a-key"}, {"Authorization": f"Basic {ALICE_KEY}"}):
        response = api.raw("POST", "/v1/syscalls/list_cubes", key=None, json={}, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"] == {
            "code": "denied",
            "message": "a valid API key is required: 'Authorization: Bearer <key>'",
            "details": {"reason": "unauthenticated"},
        }
    assert api.raw("GET", "/v1/whoami", key=None).status_code == 401
    assert api.raw("GET", "/healthz", key=None).json() == {"ok": True}
    assert api.raw("GET", "/openapi.json", key=None).status_code == 200


def test_the_key_decides_the_principal(api):
    assert api.raw("GET", "/v1/whoami", key=BOB_KEY).json() == {"principal": "agent:bob"}


def test_a_principal_in_the_body_is_rejected_not_trusted(api):
    api.post("/v1/syscalls/create_cube", {"name": "team/open", "exist_ok": True})
    api.post("/v1/syscalls/grant", {"cube": "team/open", "principal": "agent:bob", "right": "write"})
    smuggled = {"cube": "team/open", "content": "written as alice?", "principal": "agent:alice"}
    response = api.post("/v1/syscalls/write", smuggled, key=BOB_KEY)
    assert response.status_code == 422 and error_of(response) == "invalid"
    assert "principal" in response.json()["error"]["message"]
    assert api.post("/v1/execute", {"op": "write", **smuggled}, key=BOB_KEY).status_code == 422
    batch = api.post("/v1/batch", {"principal": "agent:alice", "syscalls": [{"op": "write", **smuggled}]}, key=BOB_KEY)
    assert batch.status_code == 422
    listed = api.post("/v1/syscalls/list", {"cube": "team/open"}).json()["memories"]
    assert listed == []

    written = api.post("/v1/syscalls/write", {"cube": "team/open", "content": "bob wrote this"}, key=BOB_KEY).json()
    assert written["provenance"]["author"] == "agent:bob"


def test_asserting_another_principal_is_refused(api):
    response = api.raw("GET", "/v1/whoami", key=BOB_KEY, headers={"X-Memos-Principal": "agent:alice"})
    assert response.status_code == 403 and error_of(response) == "denied"


def test_a_trace_id_is_passed_through_or_made(api):
    given = api.post("/v1/syscalls/stats", {}, **{"X-Trace-Id": "req-42.a_b"})
    assert given.headers["x-trace-id"] == "req-42.a_b"
    assert len(api.post("/v1/syscalls/stats", {}).headers["x-trace-id"]) == 16
    bad = api.post("/v1/syscalls/stats", {}, **{"X-Trace-Id": "no spaces allowed"})
    assert bad.status_code == 422 and error_of(bad) == "invalid"


def test_websockets_are_refused(tmp_path):
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    transport = in_process_transport(tmp_path)
    app = create_app(transport, KeyRing.of_keys({ALICE_KEY: "agent:alice"}))
    with (
        TestClient(app) as client,
        pytest.raises(WebSocketDisconnect) as closed,
        client.websocket_connect("/v1/execute", headers={"Authorization": f"Bearer {ALICE_KEY}"}),
    ):
        pass
    assert closed.value.code == 1008
    transport.close()


# ---------------------------------------------------------------------------------------------------- access control


def test_one_principal_cannot_read_anothers_private_cube(api, private_memory):
    for op, body in [
        ("cube_info", {"name": "agent/alice/private"}),
        ("list", {"cube": "agent/alice/private"}),
        ("search", {"query": "PIN hint", "cubes": ["agent/alice/private"]}),
        ("write", {"cube": "agent/alice/private", "content": "bob was here"}),
    ]:
        response = api.post(f"/v1/syscalls/{op}", body, key=BOB_KEY)
        assert response.status_code == 403, op
        assert response.json()["error"]["details"] == {"cube": "agent/alice/private", "right": "write" if op == "write" else "read"}
    assert [c["name"] for c in api.post("/v1/syscalls/list_cubes", {}, key=BOB_KEY).json()["cubes"]] == ["team/open"]


def test_a_memory_in_an_unreadable_cube_is_not_found(api, private_memory):
    """The kernel conceals existence: addressed by id, bob's answer is the one for an id that does not exist."""
    for op in ("read", "history", "update", "delete"):
        body = {"id": private_memory["id"]} | ({"content": "changed"} if op == "update" else {})
        response = api.post(f"/v1/syscalls/{op}", body, key=BOB_KEY)
        assert response.status_code == 404 and error_of(response) == "not_found", op
        assert "PIN" not in response.text
    assert api.post("/v1/syscalls/read", {"id": private_memory["id"]}).json()["content"] == "alice's PIN hint is blue"


# ---------------------------------------------------------------------------------------------------- errors and limits


def test_errors_map_to_http_statuses(api):
    cube = {"name": "team/statuses"}
    assert api.post("/v1/syscalls/create_cube", cube).status_code == 200
    again = api.post("/v1/syscalls/create_cube", cube)
    assert again.status_code == 409 and error_of(again) == "exists"

    memory = api.post("/v1/syscalls/write", {"cube": "team/statuses", "content": "v1"}).json()
    assert api.post("/v1/syscalls/update", {"id": memory["id"], "content": "v2", "expected_version": 1}).status_code == 200
    stale = api.post("/v1/syscalls/update", {"id": memory["id"], "content": "v3", "expected_version": 1})
    assert stale.status_code == 409 and error_of(stale) == "conflict"
    assert stale.json()["error"]["details"]["current"] == 2

    assert api.post("/v1/syscalls/delete", {"id": memory["id"]}).status_code == 200
    deleted = api.post("/v1/syscalls/update", {"id": memory["id"], "content": "v4"})
    assert deleted.status_code == 400 and error_of(deleted) == "invalid_state"

    out_of_range = api.post("/v1/syscalls/search", {"query": "x", "cubes": ["team/statuses"], "k": 0})
    assert out_of_range.status_code == 422 and error_of(out_of_range) == "invalid"
    assert "k" in out_of_range.json()["error"]["message"]
    bad_json = api.raw("POST", "/v1/syscalls/write", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 422 and error_of(bad_json) == "invalid"
    unknown = api.post("/v1/syscalls/teleport", {})
    assert unknown.status_code == 404 and error_of(unknown) == "not_found"
    # No body: the syscall's defaults, which distill's own rule refuses (found by the schemathesis run below).
    no_body = api.raw("POST", "/v1/syscalls/distill", content=b"null", headers={"Content-Type": "application/json"})
    assert no_body.status_code == 422 and error_of(no_body) == "invalid"
    assert "replaces" in no_body.json()["error"]["message"]
    no_job = api.post("/v1/syscalls/cancel", {"job_id": "job_00000000deadbeef"})
    assert no_job.status_code == 404 and error_of(no_job) == "not_found"


def test_oversize_content_and_bodies_are_413(api):
    too_long = api.post("/v1/syscalls/write", {"cube": "team/statuses", "content": "x" * (32 * 1024 + 1)})
    assert too_long.status_code == 413 and error_of(too_long) == "too_large"
    assert too_long.json()["error"]["details"] == {"size": 32 * 1024 + 1, "limit": 32 * 1024}

    huge = json.dumps({"cube": "team/statuses", "content": "y" * LIMIT}).encode()
    declared = api.raw("POST", "/v1/syscalls/write", content=huge, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and declared.json()["error"]["details"] == {"limit": LIMIT}

    def chunks():  # no Content-Length: the guard counts what arrives and stops reading past the limit
        for _ in range(LIMIT // 4096 + 2):
            yield b" " * 4096

    streamed = api.raw("POST", "/v1/syscalls/write", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and error_of(streamed) == "too_large"


def test_batch_runs_each_syscall_alone(api):
    response = api.post("/v1/batch", {"syscalls": [
        {"op": "create_cube", "name": "team/batch"},
        {"op": "write", "cube": "team/batch", "content": "first"},
        {"op": "write", "cube": "team/nowhere", "content": "fails alone"},
        {"op": "teleport"},
        {"op": "list", "cube": "team/batch"},
    ]})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [next(iter(r)) for r in results] == ["ok", "ok", "error", "error", "ok"]
    assert [results[2]["error"]["code"], results[3]["error"]["code"]] == ["not_found", "invalid"]
    assert [m["content"] for m in results[4]["ok"]["memories"]] == ["first"]
    too_many = api.post("/v1/batch", {"syscalls": [{"op": "stats"}] * 257})
    assert too_many.status_code == 422



def test_write_many_writes_in_one_call_and_reports_each_item(api):
    api.post("/v1/syscalls/create_cube", {"name": "team/many"})
    response = api.post("/v1/syscalls/write_many", {"items": [
        {"cube": "team/many", "content": "first of many"},
        {"cube": "team/nowhere", "content": "fails alone"},
        {"cube": "team/many", "content": "second of many", "tags": ["bulk"]},
    ]})
    assert response.status_code == 200
    body = response.json()
    assert (body["written"], body["failed"]) == (2, 1)
    assert body["results"][1]["error"]["code"] == "not_found" and body["results"][1]["id"] is None
    listed = api.post("/v1/syscalls/list", {"cube": "team/many"}).json()["memories"]
    assert sorted(m["id"] for m in listed) == sorted([body["results"][0]["id"], body["results"][2]["id"]])

# ---------------------------------------------------------------------------------------------------- the client


def test_the_client_over_http_round_trips_write_search_history(api):
    alice = Memos(HttpTransport(api.url, ALICE_KEY), "agent:alice")
    try:
        alice.create_cube("agent/alice/notes")
        m = alice.write("agent/alice/notes", "The launch is on Friday", tags=["plan"], metadata={"p": 1})
        alice.update(m.id, content="The launch moved to Monday", expected_version=1)
        hits = alice.search("when is the launch", "agent/alice/notes", k=3)
        assert hits[0].memory.id == m.id and hits[0].memory.version == 2
        assert [(v.version, v.content) for v in alice.history(m.id)] == [
            (1, "The launch is on Friday"), (2, "The launch moved to Monday"),
        ]
        assert alice.read(m.id, 1).metadata == {"p": 1}
        with pytest.raises(VersionConflict):
            alice.update(m.id, content="late", expected_version=1)
        with pytest.raises(AlreadyExists):
            alice.create_cube("agent/alice/notes")
        bob = Memos(HttpTransport(api.url, BOB_KEY), "agent:bob")
        with pytest.raises(NotFound):
            bob.read(m.id)
        with pytest.raises(PermissionDenied):
            bob.search("launch", "agent/alice/notes")
        envelopes = alice.transport.call_batch("agent:alice", [{"op": "stats"}, {"op": "read", "id": m.id}])
        assert envelopes[1]["ok"]["version"] == 2
    finally:
        alice.close()


def test_a_client_for_one_principal_with_anothers_key_fails(api):
    impostor = Memos(HttpTransport(api.url, BOB_KEY), "agent:alice")
    with pytest.raises(PermissionDenied, match="acts as 'agent:bob'"):
        impostor.cubes()
    impostor.close()


def test_a_client_over_http_needs_no_principal_the_key_decides_it(api, tmp_path):
    bob = Memos(HttpTransport(api.url, BOB_KEY))
    try:
        assert bob.principal == "agent:bob"
        assert isinstance(bob.cubes(), tuple)
    finally:
        bob.close()
    unknown = HttpTransport(api.url, "not-a-key")
    with pytest.raises(PermissionDenied, match="valid API key"):
        Memos(unknown)
    unknown.close()
    with pytest.raises(InvalidSyscall, match="give principal="):
        Memos(in_process_transport(tmp_path))


def test_an_unreachable_server_is_a_backend_error(api):
    from memos.errors import BackendError

    dead = Memos(HttpTransport("http://127.0.0.1:9", ALICE_KEY, timeout=2), "agent:alice")
    with pytest.raises(BackendError):
        dead.cubes()
    dead.close()


# ---------------------------------------------------------------------------------------------------- TLS


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "memos-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_serves_the_same_api(tmp_path):
    cert, key = _self_signed(tmp_path)
    transport = in_process_transport(tmp_path)
    app = create_app(transport, KeyRing.of_keys({ALICE_KEY: "agent:alice"}))
    with live_server(app, tls_cert=cert, tls_key=key) as url:
        assert url.startswith("https://")
        alice = Memos(HttpTransport(url, ALICE_KEY, ca_file=cert), "agent:alice")
        assert alice.create_cube("agent/alice").owner == "agent:alice"
        alice.close()
        untrusted = Memos(HttpTransport(url, ALICE_KEY), "agent:alice")  # system CAs do not know this cert
        from memos.errors import BackendError

        with pytest.raises(BackendError):
            untrusted.cubes()
        untrusted.close()
    transport.close()


def test_serving_beyond_loopback_needs_tls_or_an_explicit_opt_out():
    with pytest.raises(ValueError, match="without TLS"):
        server_config(object(), host="0.0.0.0")
    with pytest.raises(ValueError, match="both"):
        server_config(object(), host="127.0.0.1", tls_cert="cert.pem")
    assert server_config(object(), host="0.0.0.0", allow_insecure=True).host == "0.0.0.0"


# ---------------------------------------------------------------------------------------------------- the spec


def not_a_500(ctx, response, case):
    """500 means a bug. Other 5xx are documented answers (503: no model host here for generate), so schemathesis'
    own not_a_server_error, which refuses every 5xx, is too strict; the spec check still vets their status."""
    assert response.status_code != 500, f"{case.operation.label} answered 500: {response.text[:300]}"


def test_the_openapi_spec_holds_and_nothing_is_a_500(api):
    """Every operation, with bodies generated from the spec (valid ones and invalid ones): the status is one the
    spec lists, the body matches the schema it gives for that status, and no status is a 500."""
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    spec = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = [result.ok() for result in spec.get_all_operations()]
    assert len(operations) >= 27
    checks = [not_a_500, status_code_conformance, content_type_conformance, response_schema_conformance]
    # The key's own principal, so that cases reach the kernel instead of stopping at the principal check.
    headers = {"Authorization": f"Bearer {FUZZ_KEY}", "X-Memos-Principal": "user:fuzz"}
    session = requests.Session()
    for operation in operations:
        # An operation without inputs (GET /healthz) has nothing to make invalid.
        invalid = (GenerationMode.NEGATIVE,) if len(operation.body) or len(operation.headers) else ()
        for mode in (GenerationMode.POSITIVE, *invalid):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=5, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def holds(case):
                case.call_and_validate(session=session, headers=headers, checks=checks)

            holds()
    session.close()
