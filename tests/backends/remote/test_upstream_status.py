"""An upstream that answers with an error of its own: the client gets the upstream's status, with a
message that says the upstream answered it (UpstreamError), and the front keeps serving."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.backends.remote.conftest import drop_detectors, infer, passthrough_repository, remote_repository
from tests.conftest import running_gateway
from tests.serving.helpers import edit_config


def test_the_upstreams_own_status_reaches_the_client(tmp_path, held_out):
    # The upstream accepts values up to 0.5 only; the front accepts the full [0, 1].
    upstream_repository = edit_config(
        passthrough_repository(tmp_path), lambda t: t["inputs"][0].update(range=[0.0, 0.5])
    )
    with running_gateway(upstream_repository) as upstream:
        repository = remote_repository(tmp_path, upstream.grpc_url, edit=drop_detectors)
        with running_gateway(repository) as front, triton.InferenceServerClient(front.grpc_url) as client:
            with pytest.raises(InferenceServerException) as info:
                infer(client, np.full((1, 1, 16, 16), 0.9, np.float32))
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
            message = info.value.message()
            assert "upstream model 'digits'" in message and "answered INVALID_ARGUMENT" in message
            assert "expected values in [0, 0.5]" in message
            dim = np.minimum(held_out[0][:1], 0.4)  # its 2-bit squeezed copy stays under 0.5 as well
            assert infer(client, dim).as_numpy("logits").shape == (1, 10)
