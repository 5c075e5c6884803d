"""What /v1 answers when the request body itself is unusable: not JSON, empty, or not an object.

A client that sends ``{bad json`` used to be told ``Invalid value for '1': JSON decode error``
with ``param: "1"`` (the character offset taken for a parameter name); these tests drive a
one-route FastAPI app with the API's own error handlers, so they need no model or server.
"""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from studio.api.errors import install_handlers


class Body(BaseModel):
    model: str


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_handlers(app)

    @app.post("/v1/chat/completions")
    def chat(body: Body) -> dict:
        return {}

    return TestClient(app)


def post(client: TestClient, content: bytes, content_type: str = "application/json") -> dict:
    response = client.post("/v1/chat/completions", content=content, headers={"Content-Type": content_type})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def test_malformed_json_names_the_problem_and_its_position_not_a_parameter(client):
    error = post(client, b"{bad json")
    assert error["param"] is None
    assert error["message"].startswith("The request body is not valid JSON")
    assert "character 1" in error["message"] and "double quotes" in error["message"]


def test_an_empty_body_says_what_to_send(client):
    error = post(client, b"")
    assert error["param"] is None
    assert "empty" in error["message"] and "JSON object" in error["message"]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b"[1, 2]", "application/json"), (b'{"model": "m"}', "application/x-www-form-urlencoded")],
)
def test_a_body_that_is_not_a_json_object_says_so(client, content, content_type):
    error = post(client, content, content_type)
    assert error["param"] is None
    assert "must be a JSON object" in error["message"] and "Content-Type: application/json" in error["message"]


def test_a_bad_field_still_names_its_parameter(client):
    error = post(client, b'{"model": 3}')
    assert error["param"] == "model" and error["message"].startswith("Invalid value for 'model'")
