"""The Serve app answered over real HTTP, good requests and bad ones."""

import dataclasses
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import ray

from actors.retrieval import start_retrieval
from retrieval_service.serve_app import serve_retrieval

pytestmark = pytest.mark.slow
TEXT = "a red circle moves left on a navy background"


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768+) and above Ray's worker ports: an
    ephemeral one was once taken by one of Ray's own processes before Serve's proxy bound it."""
    for port in np.random.default_rng().permutation(np.arange(20000, 32000)).tolist():
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-31999")


@pytest.fixture(scope="module")
def service(ray_cluster, actor_cfg, synth_index):
    from ray import serve

    router = start_retrieval(actor_cfg, synth_index)
    rcfg = dataclasses.replace(actor_cfg.retrieval, serve_port=free_port())
    url = serve_retrieval(router, rcfg)
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client, router
    serve.shutdown()


@pytest.fixture(scope="module")
def soft(embedder):
    n, d = embedder.soft_shape
    return np.random.default_rng(0).standard_normal((n, d)).round(4).tolist()


def test_binds_loopback_by_default(service):
    assert str(service[0].base_url).startswith("http://127.0.0.1:")


def test_healthz(service, synth_embeddings):
    r = service[0].get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "videos": len(synth_embeddings[0])}


def test_search_matches_the_router(service, soft):
    client, router = service
    r = client.post("/search", json={"queries": [{"text": TEXT}, {"text": TEXT, "soft_tokens": soft}],
                                     "topk": 3})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    _, scores, ids = ray.get(router.search_text.remote([TEXT], np.array([soft], np.float32), 3))
    assert [x["video_id"] for x in results[1]] == list(ids[0])
    np.testing.assert_allclose([x["score"] for x in results[1]], scores[0], atol=1e-5)
    # the untrained heads' append projector is zero: the refined search is the text's, up to
    # float error (Embedder.encode_queries' residual read-out), on every host
    assert len(results[0]) == 3
    assert [x["video_id"] for x in results[0]] == [x["video_id"] for x in results[1]]
    np.testing.assert_allclose([x["score"] for x in results[0]],
                               [x["score"] for x in results[1]], atol=1e-5)


def test_concurrent_requests_are_batched_and_each_gets_its_own_topk(service):
    client = service[0]
    bodies = [{"queries": [{"text": f"{TEXT} {i}"}] * (1 + i % 2), "topk": 1 + i % 4} for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda b: client.post("/search", json=b), bodies))
    for body, r in zip(bodies, responses, strict=True):
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == len(body["queries"]) and all(len(x) == body["topk"] for x in results)
        alone = client.post("/search", json=body).json()["results"]
        assert [x["video_id"] for x in alone[0]] == [x["video_id"] for x in results[0]]


def test_score(service, soft):
    client, _ = service
    top = client.post("/search", json={"queries": [{"text": TEXT}], "topk": 2}).json()["results"][0]
    ids = [x["video_id"] for x in top]
    r = client.post("/score", json={"queries": [{"text": TEXT}, {"text": TEXT, "soft_tokens": soft}],
                                    "video_ids": ids})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["scores"][0], [x["score"] for x in top], atol=1e-5)
    assert len(r.json()["scores"][1]) == 2


def bad_soft(soft, value):
    out = [row[:] for row in soft]
    out[0][0] = value
    return out


@pytest.mark.parametrize("path,body,status,message", [
    ("/search", b"{not json", 400, "malformed JSON"),
    ("/search", b'{"queries": [{"text": "a", "soft_tokens": [[NaN]]}]}', 400, "non-finite"),
    ("/search", b"[1, 2]", 400, "JSON object"),
    ("/search", {"topk": 3}, 422, "'queries'"),
    ("/search", {"queries": []}, 422, "'queries'"),
    ("/search", {"queries": [{"txt": "a"}]}, 422, "'text'"),
    ("/search", {"queries": [{"text": 5}]}, 422, "'text'"),
    ("/search", {"queries": [{"text": "a <|sqr_slot|>"}]}, 422, "may not contain"),
    ("/search", {"queries": [{"text": "a"}], "topk": 0}, 422, "'topk'"),
    ("/search", {"queries": [{"text": "a"}], "topk": 10_000}, 422, "'topk'"),
    ("/search", {"queries": [{"text": "a"}], "topk": "3"}, 422, "'topk'"),
    ("/search", {"queries": [{"text": "a"}], "topk": True}, 422, "'topk'"),
    ("/search", {"queries": [{"text": "a", "soft_tokens": [[0.0] * 256] * 7}]}, 422, "8 lists of 256"),
    ("/search", {"queries": [{"text": "a", "soft_tokens": [[0.0] * 255] * 8}]}, 422, "8 lists of 256"),
    ("/search", {"queries": [{"text": "a", "soft_tokens": "nope"}]}, 422, "soft_tokens"),
    ("/score", {"queries": [{"text": "a"}]}, 422, "'video_ids'"),
    ("/score", {"queries": [{"text": "a"}], "video_ids": ["no_such_video"]}, 404, "no_such_video"),
])
def test_bad_requests_get_4xx_and_the_service_keeps_serving(service, path, body, status, message):
    client = service[0]
    r = client.post(path, content=body) if isinstance(body, bytes) else client.post(path, json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert client.post("/search", json={"queries": [{"text": TEXT}], "topk": 1}).status_code == 200


@pytest.mark.parametrize("value,status", [(1e39, 422), ("x", 422), (True, 422)])
def test_bad_soft_token_values(service, soft, value, status):
    r = service[0].post("/search", json={"queries": [{"text": "a", "soft_tokens": bad_soft(soft, value)}]})
    assert r.status_code == status and "soft_tokens" in r.json()["error"]


def test_wrong_route_and_method(service):
    client = service[0]
    assert client.get("/search").status_code == 405
    assert client.post("/healthz").status_code == 405
    assert client.get("/nope").status_code == 404
