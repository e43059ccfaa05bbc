"""``rerank serve`` publishes its OpenAPI document and a /docs page from packaged assets; real answers,
good and bad, validate against that document."""

from __future__ import annotations

import re

import httpx
import pytest
from _serving_support import BEE_DOCS, LiveServer

from rerank import Reranker, RerankerConfig
from rerank.serving import ServerConfig, create_app

jsonschema = pytest.importorskip("jsonschema", reason="the dev extra's JSON Schema validator")


@pytest.fixture(scope="module")
def server(tiny_model, tokenizer):
    rr = Reranker(tiny_model, tokenizer, RerankerConfig(scoring="single_pass", batch_size=8))
    app = create_app(rr, ServerConfig(model_name="tiny", api_key="sekret", max_documents=8, max_wait_ms=1))
    with LiveServer(app) as live:
        yield live


AUTH = {"Authorization": "Bearer sekret"}


def _validator(document: dict, schema: dict):
    # '#/components/...' references resolve against a root that holds the document's components
    return jsonschema.Draft7Validator({**schema, "components": document["components"]})


def _check(document: dict, path: str, method: str, resp: httpx.Response) -> None:
    """The answer's status is documented for this route and its body matches the documented schema."""
    responses = document["paths"][path][method]["responses"]
    assert str(resp.status_code) in responses, (path, resp.status_code, resp.text)
    schema = responses[str(resp.status_code)]["content"]["application/json"]["schema"]
    _validator(document, schema).validate(resp.json())


def test_openapi_document_describes_the_routes(server):
    resp = httpx.get(server.url + "/openapi.json")  # public, like /health
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["openapi"] == "3.0.3"
    assert set(doc["paths"]) == {"/v1/rerank", "/v2/rerank", "/rerank", "/health", "/info", "/metrics"}
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        op = doc["paths"][path]["post"]
        assert op["security"] == [{"bearer": []}]
        assert {"200", "400", "401", "408", "413", "422", "429", "500", "503"} <= set(op["responses"])
    request = doc["components"]["schemas"]["CohereRerankRequest"]
    assert request["properties"]["documents"]["maxItems"] == 8  # the server's own limit
    assert "512 tokens" in request["properties"]["query"]["description"]
    # every schema is itself a valid JSON Schema
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft7Validator.check_schema(schema)


def test_real_answers_validate_against_the_document(server):
    doc = httpx.get(server.url + "/openapi.json").json()
    url = server.url
    cases = [
        ("/v1/rerank", {"query": "bees", "documents": BEE_DOCS[:4], "top_n": 2, "return_documents": True}),
        (
            "/v1/rerank",
            {"query": "bees", "documents": [{"text": BEE_DOCS[0], "id": 7}, BEE_DOCS[1]], "return_documents": True},
        ),
        ("/v2/rerank", {"model": "m", "query": "bees", "documents": BEE_DOCS[:3]}),
        ("/rerank", {"query": "bees", "documents": BEE_DOCS[:3]}),
        ("/rerank", {"query": "bees", "texts": BEE_DOCS[:3], "return_text": True}),
        ("/rerank", {"query": "bees", "texts": BEE_DOCS[:3], "raw_scores": True}),
    ]
    for path, body in cases:
        resp = httpx.post(url + path, json=body, headers=AUTH)
        assert resp.status_code == 200, resp.text
        _check(doc, path, "post", resp)
    errors = [
        (422, {"query": "", "documents": ["a"]}, AUTH),
        (422, {"query": "q", "documents": ["a"] * 9}, AUTH),
        (400, {"query": "q", "documents": []}, AUTH),
        (401, {"query": "q", "documents": ["a"]}, {}),
    ]
    for status, body, headers in errors:
        resp = httpx.post(url + "/v1/rerank", json=body, headers=headers)
        assert resp.status_code == status
        _check(doc, "/v1/rerank", "post", resp)
    resp = httpx.post(url + "/v2/rerank", content=b"{", headers={**AUTH, "content-type": "application/json"})
    assert resp.status_code == 400
    _check(doc, "/v2/rerank", "post", resp)
    _check(doc, "/health", "get", httpx.get(url + "/health"))
    _check(doc, "/info", "get", httpx.get(url + "/info", headers=AUTH))


def test_the_schemas_reject_wrong_answers(server):
    """The response schemas are strict enough to catch a broken answer."""
    doc = httpx.get(server.url + "/openapi.json").json()
    ok = httpx.post(server.url + "/v1/rerank", json={"query": "bees", "documents": BEE_DOCS[:3]}, headers=AUTH).json()
    validator = _validator(doc, {"$ref": "#/components/schemas/CohereRerankResponse"})
    validator.validate(ok)
    broken = {**ok, "results": [{"index": 0, "score": 0.5}]}  # TEI's field name in a Cohere answer
    assert not validator.is_valid(broken)
    assert not validator.is_valid({**ok, "results": [{"index": 0, "relevance_score": 1.5}]})
    error = _validator(doc, {"$ref": "#/components/schemas/Error"})
    assert not error.is_valid({"error": "x", "error_type": "made_up", "detail": "x"})


def test_docs_page_uses_packaged_assets_only(server):
    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert links and all(link.startswith("/docs/assets/") for link in links)  # nothing from a CDN
    assert '"/openapi.json"' in page.text
    for link in links:
        asset = httpx.get(server.url + link)
        assert asset.status_code == 200 and len(asset.content) > 10_000
    assert b"SwaggerUIBundle" in httpx.get(server.url + "/docs/assets/swagger-ui-bundle.js").content
    assert httpx.get(server.url + "/docs/assets/index.html").status_code == 404  # only the two files /docs loads
