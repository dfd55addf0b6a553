"""HTTP endpoints: each view translates the request, calls the core, and shapes the JSON answer."""

from __future__ import annotations

import functools
import html
import socket
import uuid
import zlib
from typing import Any
from urllib.parse import quote

import orjson
from flask import Blueprint, Response, jsonify, request
from redis.exceptions import RedisError

from streamrec import metrics
from streamrec.api import observability
from streamrec.api.errors import (
    BATCH_TOO_LARGE,
    INVALID_EVENT,
    INVALID_ITEM,
    INVALID_JSON,
    INVALID_PARAMETER,
    NOT_FOUND,
    UNAVAILABLE,
    UNSUPPORTED_MEDIA,
    ApiError,
)
from streamrec.api.extensions import Services, experiments_of, exposures_of, placements_of, services
from streamrec.api.params import bool_param, check_id, id_param, int_param, list_param, str_param
from streamrec.contract import (
    CatalogItem,
    Event,
    ItemDeletion,
    Rejection,
    TimePolicy,
    UserErasure,
    decode_event,
    decode_item,
)
from streamrec.experiments import Experiment, Variant, assign, experiment_recommendation_id
from streamrec.placements import Filter, PlacementError, compile_filter
from streamrec.recommend import NO_RULES, Answer, Rules

bp = Blueprint("v1", __name__)


def ok(data: Any, status: int = 200) -> tuple[Response, int]:
    """The success envelope ``{"code": 0, "msg": "ok", "data": data}`` with ``status``."""
    return jsonify({"code": 0, "msg": "ok", "data": data}), status


def _json_body() -> Any:
    if not request.is_json:
        raise ApiError(415, UNSUPPORTED_MEDIA, "send the body as JSON with 'Content-Type: application/json'")
    try:
        return orjson.loads(request.get_data(cache=False))
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, INVALID_JSON, f"the body is not valid JSON: {exc}") from None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def placeholder_url(item_id: str) -> str:
    """The path of the item's generated placeholder image (``placeholder_image``)."""
    return f"/static/img/{quote(item_id, safe='')}.svg"


def _items_json(answer: Answer, explain: bool) -> orjson.Fragment:
    """The answer's items as encoded JSON (a list of objects: ids, scores and catalog fields, and with
    ``explain`` each one's reason and source), made once per answer and ``explain`` and kept in
    ``answer.rendered``: a cached answer served again is not shaped or encoded again (``orjson.Fragment``
    is spliced into the envelope as it is).

    A field the catalog record lacks (or leaves empty) is null, but for ``image_url``, which is then the
    item's placeholder image.
    """
    fragment = answer.rendered.get(("items", explain))
    if fragment is not None:
        return fragment  # type: ignore[no-any-return]
    items = []
    for r in answer.items:
        record = answer.catalog.get(r.item_id, {})
        row: dict[str, Any] = {
            "item_id": r.item_id,
            "score": round(r.score, 6),
            "title": record.get("title") or None,
            "price": _float(record.get("price")),
            "image_url": record.get("image_url") or placeholder_url(r.item_id),
            "category": record.get("category") or None,
            "in_stock": record.get("in_stock", "1") != "0",
        }
        if explain:
            row["reason"] = r.reason
            row["source"] = r.source
            if r.rules:
                row["rules"] = list(r.rules)
        items.append(row)
    # orjson's bytes keep the whole buffer it encoded into (about 8 KiB for these 1.5 KiB under
    # tracemalloc): a copy of exactly their length is kept with the answer. Two threads of one gthread
    # worker may both make it: the same bytes, and either is kept.
    encoded = bytes(memoryview(orjson.dumps(items)))
    fragment = answer.rendered[("items", explain)] = orjson.Fragment(encoded)
    return fragment


Arm = tuple[Experiment, Variant, str]  # an experiment, the variant a request is in, and its shopper


def _shape(answer: Answer, explain: bool, arm: Arm | None = None, **extra: Any) -> dict[str, Any]:
    """The answer as JSON: its items (``_items_json``), with a fresh recommendation_id and ``extra``;
    counted as one impression of its strategy and, inside an experiment (``arm``), as one answer of the
    variant shown to its shopper (``Exposures``), with an id that names the variant."""
    observability.count_answer(answer.strategy, len(answer.items))
    token = uuid.uuid4().hex
    if arm is None:
        # the id names its strategy, so a later event that cites it can be credited to that strategy
        rec_id = metrics.recommendation_id(answer.strategy, token)
    else:
        experiment, variant, shopper = arm
        rec_id = experiment_recommendation_id(answer.strategy, token, experiment, variant)
        exposures_of().record(experiment, variant, shopper)
    return {
        "recommendation_id": rec_id,
        "strategy": answer.strategy,
        "model_version": answer.model_version,
        **extra,
        "items": _items_json(answer, explain),
    }


def _redis_guard(fn):  # type: ignore[no-untyped-def]
    """Answer 503 with a message, not 500, while Redis is unreachable."""
    from functools import wraps

    @wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return fn(*args, **kwargs)
        except RedisError as exc:
            raise ApiError(
                503, UNAVAILABLE, "recommendation state (Redis) is unavailable; retry shortly", str(exc)
            ) from None

    return wrapper


def _k(svc: Services) -> int:
    return int_param(request, "k", svc.settings.default_k, 1, svc.settings.max_k)


MAX_FILTER_CHARS = 8192  # a request's filter= document, URL-decoded


@functools.lru_cache(maxsize=1024)
def _filter(text: str) -> Filter:
    """A request's ``filter=`` compiled (kept per text: a page sends the same one again and again)."""
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, INVALID_PARAMETER, f"filter: not a JSON document ({exc})") from None
    try:
        return compile_filter(document)
    except PlacementError as exc:
        raise ApiError(
            400, INVALID_PARAMETER, f"filter: {exc}", {"path": exc.path, "problem": exc.problem}
        ) from None


def _rules(shopper: str | None = None) -> tuple[Rules, str | None, dict[str, Any], Arm | None]:
    """The request's ``placement=`` (404 when unknown) and ``filter=`` (400 naming the JSON path of the
    wrong part), as ``Rules``; the placement's strategy (None: the endpoint's own); what the answer
    says of them (``{"placement": name}``, and ``{"experiment": {name, variant}}`` inside one).

    A placement with a running experiment is split when the request names a ``shopper``: the shopper's
    variant (``experiments.assign``) is served with the placement its ``use`` names, and is the ``Arm``
    returned. Without a shopper, or while the experiment is stopped, the placement itself serves."""
    name = str_param(request, "placement")
    text = request.args.get("filter")
    if text is not None and len(text) > MAX_FILTER_CHARS:
        raise ApiError(400, INVALID_PARAMETER, f"filter: longer than {MAX_FILTER_CHARS} characters")
    if name is None and not text:
        return NO_RULES, None, {}, None
    placement, version, served, arm = None, None, name, None
    said: dict[str, Any] = {}
    if name is not None:
        cache = placements_of()
        placement = cache.get(name)
        if placement is None:
            raise ApiError(404, NOT_FOUND, f"no placement {name!r} (GET /v1/admin/placements lists them)")
        said["placement"] = name
        experiment = experiments_of().for_placement(name) if shopper is not None else None
        if experiment is not None and experiment.running and shopper is not None:
            variant = assign(experiment, shopper)
            used = cache.get(variant.use)
            if used is not None:  # a variant whose placement was deleted since: the placement serves
                placement, served, arm = used, variant.use, (experiment, variant, shopper)
                said["experiment"] = {"name": experiment.name, "variant": variant.name}
        version = cache.version
    extra = _filter(text) if text else None
    rules = Rules(placement, extra, (served, version, text or None))
    return rules, placement.strategy if placement else None, said, arm


def _answer(
    svc: Services,
    strategy: str,
    k: int,
    rules: Rules,
    *,
    user_id: str | None = None,
    item_id: str | None = None,
    category: str | None = None,
    exclude: list[str] | None = None,
) -> Answer:
    """The answer of ``strategy`` (a placement's, or the endpoint's own): personal needs a shopper (the
    path's, or ``user_id=``; without one, popular items answer, as for a shopper the state does not
    know), similar an item (the path's: a 400 on an endpoint without one)."""
    rec = svc.recommender
    if strategy == "personal" and user_id is not None:
        return rec.for_user(user_id, k, category=category, exclude=exclude or (), rules=rules)
    if strategy == "similar":
        if item_id is None:
            raise ApiError(
                400, INVALID_PARAMETER, "item_id: this placement shows similar items; name the item"
            )
        return rec.similar(item_id, k, user_id=user_id, rules=rules)
    if strategy == "trending":
        return rec.trending(k, category, rules=rules)
    return rec.popular(k, category, rules=rules)


@bp.get("/v1/users/<user_id>/recommendations")
@_redis_guard
def recommendations(user_id: str):  # type: ignore[no-untyped-def]
    """Personalised recommendations, with fallbacks for users the state does not know."""
    check_id("user_id", user_id)
    svc = services()
    k = _k(svc)
    category = str_param(request, "category")
    exclude = list_param(request, "exclude")
    explain = bool_param(request, "explain")
    rules, strategy, said, arm = _rules(user_id)
    answer = _answer(
        svc,
        strategy or "personal",
        k,
        rules,
        user_id=user_id,
        category=category,
        exclude=exclude,
    )
    return ok(_shape(answer, explain, arm, user_id=user_id, **said))


@bp.get("/v1/items/<item_id>/similar")
@_redis_guard
def similar(item_id: str):  # type: ignore[no-untyped-def]
    """Items shoppers acted on together with this one ("also viewed / bought together")."""
    check_id("item_id", item_id)
    svc = services()
    k = _k(svc)
    user_id = id_param(request, "user_id")
    explain = bool_param(request, "explain")
    rules, strategy, said, arm = _rules(user_id)
    answer = _answer(svc, strategy or "similar", k, rules, user_id=user_id, item_id=item_id)
    return ok(_shape(answer, explain, arm, item_id=item_id, **said))


def _listing(own: str):  # type: ignore[no-untyped-def]
    """Popular or trending (``own``), or what a placement's strategy shows instead."""
    svc = services()
    k = _k(svc)
    category = str_param(request, "category")
    user_id = id_param(request, "user_id") if request.args.get("user_id") else None  # empty: none
    rules, strategy, said, arm = _rules(user_id)
    answer = _answer(svc, strategy or own, k, rules, user_id=user_id, category=category)
    return ok(_shape(answer, bool_param(request, "explain"), arm, category=category, **said))


@bp.get("/v1/popular")
@_redis_guard
def popular():  # type: ignore[no-untyped-def]
    """The most popular items, time-decayed, overall or in a category."""
    return _listing("popular")


@bp.get("/v1/trending")
@_redis_guard
def trending():  # type: ignore[no-untyped-def]
    """The items whose interest is growing fastest right now."""
    return _listing("trending")


def _decode_all(rows: list[Any], decode, code: int, what: str) -> list:  # type: ignore[no-untyped-def]
    good, bad = [], []
    for index, row in enumerate(rows):
        result = (
            decode(row)
            if isinstance(row, dict)
            else Rejection(f"expected a JSON object, got {type(row).__name__}", [])
        )
        if isinstance(result, Rejection):
            bad.append({"index": index, "reason": result.reason, "errors": result.errors})
        else:
            good.append(result)
    if bad:
        first = bad[0]
        msg = f"{len(bad)} of {len(rows)} {what} invalid; #{first['index']}: {first['reason']}"
        raise ApiError(400, code, msg, bad)
    return good


# A field that makes a record an erasure or a deletion, refused where only events or catalog records
# are taken: each of those has its own endpoint (and, for erasure, its own meaning to the worker).
NOT_HERE = {
    "erase_user": "a user is erased with DELETE /v1/users/{user_id}",
    "deleted": "an item is deleted with DELETE /v1/items/{item_id}",
}


def receive_time_for_future_ts(row: dict[str, Any], policy: TimePolicy) -> bool:
    """Set ``row["ts"]`` to the receive time when it is a valid event time (at most 2100) but further
    ahead of this server's clock than ``policy`` allows; True when it did.

    A browser's or a device's clock is often wrong, and an action sent now happened now: its receive time
    is the best event time there is, while refusing it would lose a real shopper's action. The state's
    clock still never runs ahead of the wall clock (DESIGN.md "Time"), and every ts the document allows
    is accepted, so the document's bounds (1995 to 2100) are exactly the server's. A value past 2100, or
    one that looks like seconds, microseconds or nanoseconds, is still refused by the contract, naming
    the unit. The answer lists the rows whose ts was replaced (``ts_set_to_receive_time``).
    """
    ts = row.get("ts")
    skew = policy.max_future_skew_ms
    if skew is None or isinstance(ts, bool) or not isinstance(ts, int | float):
        return False
    if isinstance(ts, float) and not ts.is_integer():
        return False  # the contract refuses a fraction
    now = policy.clock()
    if not now + skew < ts <= policy.max_ts_ms:
        return False
    row["ts"] = now
    return True


def _future_ts_to_receive_time(rows: list[Any], policy: TimePolicy) -> list[int]:
    """``receive_time_for_future_ts`` on every object of a batch; the indexes of the rows it changed."""
    return [
        index
        for index, row in enumerate(rows)
        if isinstance(row, dict) and receive_time_for_future_ts(row, policy)
    ]


def _decoder(decode, policy: TimePolicy, refused: str):  # type: ignore[no-untyped-def]
    """``decode`` under the API's time policy, with rows holding the ``refused`` field turned down."""

    def only(row: dict[str, Any]) -> Event | CatalogItem | Rejection:
        if refused in row:
            problem = f"is not a field of this record ({NOT_HERE[refused]})"
            return Rejection(f"{refused}: {problem}", [{"field": refused, "problem": problem}])
        result = decode(row, policy)
        assert not isinstance(result, UserErasure | ItemDeletion)
        return result  # type: ignore[no-any-return]

    return only


def _with_replaced(data: dict[str, Any], replaced: list[int]) -> dict[str, Any]:
    """``data``, plus the indexes of the rows whose ts became the receive time, when there are any."""
    return {**data, "ts_set_to_receive_time": replaced} if replaced else data


Record = Event | CatalogItem | ItemDeletion | UserErasure


def _send(publisher: Any, record: Record) -> Any:
    if isinstance(record, Event):
        return publisher.publish_event(record)
    if isinstance(record, CatalogItem):
        return publisher.publish_item(record)
    if isinstance(record, ItemDeletion):
        return publisher.publish_deletion(record)
    return publisher.publish_erasure(record)


def _publish(records: list[Event] | list[CatalogItem] | list[ItemDeletion] | list[UserErasure]) -> None:
    """Publish records and wait until Kafka acknowledged all of them."""
    svc = services()
    publisher = None
    try:
        publisher = svc.publisher
        futures = [_send(publisher, r) for r in records]
        publisher.flush(timeout=10)
        for future in futures:
            future.get(timeout=10)  # flush() does not raise for a delivery that failed; get() does
    except Exception as exc:  # kafka-python raises many types; the caller needs one answer
        if publisher is not None:
            svc.discard_publisher(publisher)  # a fresh producer for the next write (see Services)
        raise ApiError(
            503, UNAVAILABLE, "the event stream (Kafka) did not accept the data; retry", str(exc)
        ) from None


def _batch(code: int, what: str) -> list[Any]:
    """The request body as a non-empty list of at most ``max_batch`` rows."""
    body = _json_body()
    rows = body if isinstance(body, list) else [body]
    limit = services().settings.max_batch
    if len(rows) > limit:
        # a 400, not a 413: the count is a rule of the request (the document's maxItems), not its size in bytes
        raise ApiError(400, BATCH_TOO_LARGE, f"a batch holds at most {limit} {what}, got {len(rows)}")
    if not rows:
        raise ApiError(400, code, "the batch is empty")
    return rows


@bp.post("/v1/events")
def post_events():  # type: ignore[no-untyped-def]
    """Validate one event or a batch, publish them to Kafka, answer 202 once the broker acknowledged."""
    policy = services().time_policy
    rows = _batch(INVALID_EVENT, "events")
    replaced = _future_ts_to_receive_time(rows, policy)
    events: list[Event] = _decode_all(
        rows, _decoder(decode_event, policy, "erase_user"), INVALID_EVENT, "events"
    )
    _publish(events)
    accepted = {"accepted": len(events), "event_ids": [e.event_id for e in events]}
    return ok(_with_replaced(accepted, replaced), 202)


@bp.get("/v1/items/<item_id>")
@_redis_guard
def get_item(item_id: str):  # type: ignore[no-untyped-def]
    """The catalog record of one item, as stored (404 when unknown or deleted)."""
    check_id("item_id", item_id)
    record = services().recommender.reader.catalog([item_id]).get(item_id)
    if not record or record.get("deleted", "") not in ("", "0") or "item_id" not in record:
        raise ApiError(404, NOT_FOUND, f"no item {item_id!r} in the catalog (unknown, or deleted)")
    return ok(_stored_item(record))


def _stored_item(record: dict[str, str]) -> dict[str, Any]:
    """A catalog hash as stored by the worker (``state.catalog_fields``), back in the contract's shape."""
    try:
        attributes = orjson.loads(record.get("attributes") or "{}")
    except orjson.JSONDecodeError:
        attributes = {}
    ts = record.get("ts", "")
    return {
        "item_id": record["item_id"],
        "title": record.get("title", ""),
        "description": record.get("description", ""),
        "category": record.get("category", ""),
        "price": _float(record.get("price")),
        "image_url": record.get("image_url", ""),
        "in_stock": record.get("in_stock", "1") != "0",
        "attributes": attributes if isinstance(attributes, dict) else {},
        "ts": int(ts) if ts.isdigit() else None,
    }


@bp.put("/v1/items/<item_id>")
def put_item(item_id: str):  # type: ignore[no-untyped-def]
    """Create or replace one catalog record."""
    check_id("item_id", item_id)
    body = _json_body()
    if not isinstance(body, dict):
        raise ApiError(400, INVALID_ITEM, "expected a JSON object describing the item")
    if body.setdefault("item_id", item_id) != item_id:
        raise ApiError(
            400, INVALID_ITEM, f"item_id in the body ({body['item_id']!r}) differs from the URL ({item_id!r})"
        )
    policy = services().time_policy
    replaced = _future_ts_to_receive_time([body], policy)
    items: list[CatalogItem] = _decode_all(
        [body], _decoder(decode_item, policy, "deleted"), INVALID_ITEM, "items"
    )
    _publish(items)
    return ok(_with_replaced({"accepted": 1}, replaced), 202)


@bp.delete("/v1/items/<item_id>")
def delete_item(item_id: str):  # type: ignore[no-untyped-def]
    """Delete a discontinued item from the catalog and from every answer (asynchronously, through Kafka)."""
    check_id("item_id", item_id)
    _publish([ItemDeletion(item_id=item_id, deleted=True)])
    return ok({"accepted": 1, "item_id": item_id}, 202)


@bp.delete("/v1/users/<user_id>")
def delete_user(user_id: str):  # type: ignore[no-untyped-def]
    """Erase every trace of a user's state (the right to erasure), asynchronously, through Kafka."""
    check_id("user_id", user_id)
    erasure = UserErasure(erase_user=user_id, erasure_id=uuid.uuid4().hex)
    _publish([erasure])
    return ok({"accepted": 1, "user_id": user_id, "erasure_id": erasure.erasure_id}, 202)


@bp.post("/v1/items")
def post_items():  # type: ignore[no-untyped-def]
    """Create or replace catalog records in bulk."""
    policy = services().time_policy
    rows = _batch(INVALID_ITEM, "items")
    replaced = _future_ts_to_receive_time(rows, policy)
    items: list[CatalogItem] = _decode_all(
        rows, _decoder(decode_item, policy, "deleted"), INVALID_ITEM, "items"
    )
    _publish(items)
    return ok(_with_replaced({"accepted": len(items)}, replaced), 202)


@bp.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    """Liveness: the process answers."""
    return ok({"status": "alive"})


def _kafka_reachable(bootstrap: str) -> bool:
    for hp in bootstrap.split(","):
        host, _, port = hp.strip().rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=0.5):
                return True
        except (OSError, ValueError):
            continue
    return False


@bp.get("/readyz")
def readyz():  # type: ignore[no-untyped-def]
    """Readiness: Redis answers and a Kafka bootstrap server accepts connections."""
    svc = services()
    checks: dict[str, str] = {}
    try:
        svc.redis.ping()
        checks["redis"] = "ok"
    except RedisError as exc:
        checks["redis"] = f"unavailable: {exc}"
    checks["kafka"] = "ok" if _kafka_reachable(svc.settings.kafka_bootstrap) else "unavailable"
    if all(v == "ok" for v in checks.values()):
        return ok({"status": "ready", "checks": checks})
    raise ApiError(
        503,
        UNAVAILABLE,
        "not ready: " + ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"),
        checks,
    )


_PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"]


@bp.get("/static/img/<item_id>.svg")
def placeholder_image(item_id: str):  # type: ignore[no-untyped-def]
    """A product image placeholder drawn from the item's category and title, so nothing loads from outside."""
    try:
        record = services().recommender.reader.catalog([item_id]).get(item_id, {})
    except RedisError:
        record = {}  # an image without the title beats a broken image
    category = record.get("category") or "item"
    title = record.get("title") or item_id
    colour = _PALETTE[zlib.crc32(category.encode()) % len(_PALETTE)]
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="240" height="240" viewBox="0 0 240 240">'
        f'<rect width="240" height="240" fill="{colour}"/>'
        f'<text x="120" y="110" font-family="sans-serif" font-size="18" fill="#fff" text-anchor="middle">{html.escape(category[:24])}</text>'
        f'<text x="120" y="140" font-family="sans-serif" font-size="12" fill="#fff" text-anchor="middle">{html.escape(title[:34])}</text>'
        "</svg>"
    )
    return Response(svg, mimetype="image/svg+xml", headers={"Cache-Control": "public, max-age=3600"})
