"""A camera_id belongs to the identity that first used it, per model: another identity naming it is
refused PERMISSION_DENIED (the message names the camera, never the owner), and a full table
refuses new cameras rather than evicting an owner."""

from __future__ import annotations

import pytest
import tritonclient.grpc as triton

from guard.protocol.errors import NotGranted
from guard.serving.camera_owners import CameraOwners, CamerasFull
from tests.conftest import copy_demo, running_gateway
from tests.security.clients import bearer, infer, refused
from tests.security.conftest import ALICE, BOB
from tests.security.test_bearer_tokens import stream_answers
from tests.serving.helpers import edit_config, requests_total


def test_the_first_identity_owns_a_camera_on_each_model():
    owners = CameraOwners()
    owners.claim("digits", "gate-1", "alice", 10)
    owners.claim("digits", "gate-1", "alice", 10)
    with pytest.raises(NotGranted, match="camera_id 'gate-1' of model 'digits' belongs to another client") as info:
        owners.claim("digits", "gate-1", "bob", 10)
    assert "alice" not in info.value.message and info.value.status == "PERMISSION_DENIED"
    owners.claim("other", "gate-1", "bob", 10)  # another model keeps its own owners
    assert owners.bound("digits") == 1 and owners.bound("other") == 1


def test_a_full_table_refuses_new_cameras_and_keeps_every_owner():
    owners = CameraOwners()
    owners.claim("digits", "a", "alice", 2)
    owners.claim("digits", "b", "bob", 2)
    with pytest.raises(CamerasFull, match="max_cameras 2.*camera_id 'c' is new") as info:
        owners.claim("digits", "c", "mallory", 2)
    assert info.value.status == "RESOURCE_EXHAUSTED"
    owners.claim("digits", "a", "alice", 2)  # bound cameras are still served...
    with pytest.raises(NotGranted):
        owners.claim("digits", "b", "mallory", 2)  # ...and still their owners' alone
    assert owners.bound("digits") == 2


def test_a_camera_used_by_one_client_is_refused_to_another_on_a_live_gateway(tmp_path, tokens_file, held_out):
    repository = edit_config(copy_demo(tmp_path), lambda table: table.__setitem__("clients", {"max_cameras": 2}))
    x = held_out[0][:1]
    with (
        running_gateway(repository, auth_tokens=tokens_file) as srv,
        triton.InferenceServerClient(srv.grpc_url) as client,
    ):
        infer(client, x, headers=bearer(ALICE), parameters={"camera_id": "gate-1"})
        error = refused(infer, client, x, headers=bearer(BOB), parameters={"camera_id": "gate-1"})
        assert error.status() == "StatusCode.PERMISSION_DENIED", error
        assert "camera_id 'gate-1'" in error.message() and "alice" not in error.message()
        # On a stream too: the stream's identity is the one that must own the camera.
        ((result, denied),) = stream_answers(client, x, bearer(BOB), parameters={"camera_id": "gate-1"})
        assert result is None and "belongs to another client" in denied.message(), denied
        infer(client, x, headers=bearer(BOB), parameters={"camera_id": "gate-2"})
        # The table (2) is full: a new camera is refused, the bound ones are served.
        full = refused(infer, client, x, headers=bearer(ALICE), parameters={"camera_id": "gate-3"})
        assert full.status() == "StatusCode.RESOURCE_EXHAUSTED" and "max_cameras 2" in full.message(), full
        infer(client, x, headers=bearer(ALICE), parameters={"camera_id": "gate-1"})
        infer(client, x, headers=bearer(ALICE))  # no camera: nothing to own
        assert requests_total(srv, "PERMISSION_DENIED") == 2 and requests_total(srv, "OK") == 4
