"""The search engine over HTTP (Ray Serve), in front of a RetrievalRouter.

POST /search {"queries": [{"text": str, "soft_tokens": [[float]*D]*N (optional)}], "topk": k}
  -> {"results": [[{"video_id": str, "score": float}, ...], ...]}
POST /score  {"queries": [...as above], "video_ids": [str, ...]} -> {"scores": [[float]]}
GET  /healthz -> {"status": "ok", "videos": n}

Every request is validated before it reaches the router; a bad one gets a 4xx with a
message and costs nothing else. Concurrent /search requests are batched (serve.batch) so
the encoder and the shards see one batch.
"""

from __future__ import annotations

import json

import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from config.schema import RetrievalConfig
from models.tokens import SQR_SLOT_TOKEN

MAX_QUERIES = 256
MAX_TOPK = 1000
MAX_VIDEO_IDS = 1000
MAX_TEXT_CHARS = 4096


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def _reject_constant(name: str):
    raise BadRequest(f"malformed JSON: non-finite number {name} is not allowed", 400)


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"malformed JSON: {e}", 400) from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", 400)
    return body


def _soft_tokens(value, where: str, shape: tuple[int, int] | None) -> np.ndarray:
    if shape is None:
        raise BadRequest(f"{where}: this service has no SQR heads, soft_tokens are not accepted")
    n, d = shape
    ok = isinstance(value, list) and len(value) == n and all(
        isinstance(row, list) and len(row) == d for row in value)
    if not ok:
        raise BadRequest(f"{where}: soft_tokens must be a list of {n} lists of {d} numbers")
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for row in value for x in row):
        raise BadRequest(f"{where}: soft_tokens must contain only numbers")
    try:
        arr = np.array(value, np.float64).astype(np.float32)
    except OverflowError:
        arr = np.array([np.inf], np.float32)
    if not np.isfinite(arr).all():
        raise BadRequest(f"{where}: soft_tokens must be finite float32 numbers")
    return arr


def parse_queries(body: dict, shape: tuple[int, int] | None) -> list[tuple[str, np.ndarray | None]]:
    queries = body.get("queries")
    if not isinstance(queries, list) or not queries:
        raise BadRequest("'queries' must be a non-empty list")
    if len(queries) > MAX_QUERIES:
        raise BadRequest(f"at most {MAX_QUERIES} queries per request, got {len(queries)}")
    out = []
    for i, q in enumerate(queries):
        where = f"queries[{i}]"
        if not isinstance(q, dict):
            raise BadRequest(f"{where} must be an object")
        text = q.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_CHARS:
            raise BadRequest(f"{where}: 'text' must be a non-empty string of at most "
                             f"{MAX_TEXT_CHARS} characters")
        if SQR_SLOT_TOKEN in text:
            raise BadRequest(f"{where}: 'text' may not contain {SQR_SLOT_TOKEN}")
        soft = q.get("soft_tokens")
        out.append((text, None if soft is None else _soft_tokens(soft, where, shape)))
    return out


def parse_topk(body: dict, default: int, limit: int) -> int:
    k = body.get("topk", default)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= limit:
        raise BadRequest(f"'topk' must be an integer in [1, {limit}], got {k!r}")
    return k


def parse_video_ids(body: dict) -> list[str]:
    ids = body.get("video_ids")
    if (not isinstance(ids, list) or not ids or len(ids) > MAX_VIDEO_IDS
            or not all(isinstance(v, str) and v for v in ids)):
        raise BadRequest(f"'video_ids' must be a list of 1..{MAX_VIDEO_IDS} non-empty strings")
    return ids


def _groups(queries: list[tuple[str, np.ndarray | None]]) -> list[list[int]]:
    """Query positions split by whether they carry soft tokens (one encoder call each)."""
    plain = [i for i, (_, s) in enumerate(queries) if s is None]
    soft = [i for i, (_, s) in enumerate(queries) if s is not None]
    return [g for g in (plain, soft) if g]


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
class RetrievalAPI:
    def __init__(self, router, default_topk: int):
        self.router = router
        info = ray.get(router.ready.remote())
        self.videos = info["count"]
        self.soft_shape = ray.get(router.soft_shape.remote())
        self.max_topk = min(MAX_TOPK, max(1, self.videos))
        self.default_topk = min(default_topk, self.max_topk)

    async def _encode(self, queries: list[tuple[str, np.ndarray | None]]) -> np.ndarray:
        vecs = np.zeros((len(queries), 0), np.float32)
        for group in _groups(queries):
            texts = [queries[i][0] for i in group]
            soft = None if queries[group[0]][1] is None else np.stack([queries[i][1] for i in group])
            got = await self.router.encode.remote(texts, soft)
            if vecs.shape[1] == 0:
                vecs = np.zeros((len(queries), got.shape[1]), np.float32)
            vecs[group] = got
        return vecs

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _search(self, requests: list[tuple[list, int]]) -> list[list[list[dict]]]:
        """All queries of the batched requests: one encode per group, one fan-out."""
        queries = [q for qs, _ in requests for q in qs]
        k = max(k for _, k in requests)
        scores, ids = await self.router.search.remote(await self._encode(queries), k)
        out, row = [], 0
        for qs, k_req in requests:
            out.append([[{"video_id": v, "score": float(s)}
                         for v, s in zip(ids[r, :k_req], scores[r, :k_req], strict=True) if v]
                        for r in range(row, row + len(qs))])
            row += len(qs)
        return out

    async def _score(self, body: dict) -> dict:
        queries = parse_queries(body, self.soft_shape)
        video_ids = parse_video_ids(body)
        vecs = await self._encode(queries)
        try:
            scores = await self.router.score.remote(vecs, [video_ids] * len(queries))
        except KeyError as e:
            raise BadRequest(str(e.args[0]) if e.args else "unknown video ids", 404) from None
        return {"scores": scores.tolist()}

    async def __call__(self, request: Request) -> JSONResponse:
        path, method = request.url.path.rstrip("/") or "/", request.method
        routes = {"/healthz": "GET", "/search": "POST", "/score": "POST"}
        if path not in routes:
            return JSONResponse({"error": f"no route {path}"}, status_code=404)
        if method != routes[path]:
            return JSONResponse({"error": f"{path} takes {routes[path]}"}, status_code=405)
        if path == "/healthz":
            return JSONResponse({"status": "ok", "videos": self.videos})
        try:
            body = parse_json(await request.body())
            if path == "/score":
                return JSONResponse(await self._score(body))
            queries = parse_queries(body, self.soft_shape)
            k = parse_topk(body, self.default_topk, self.max_topk)
            return JSONResponse({"results": await self._search((queries, k))})
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)


def serve_retrieval(router, rcfg: RetrievalConfig, name: str = "retrieval") -> str:
    """Deploys the app on rcfg.serve_host:serve_port (127.0.0.1 by default); returns its URL."""
    serve.start(http_options={"host": rcfg.serve_host, "port": rcfg.serve_port})
    serve.run(RetrievalAPI.bind(router, rcfg.topk), name=name, route_prefix="/")
    return f"http://{rcfg.serve_host}:{rcfg.serve_port}"
