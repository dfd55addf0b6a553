"""``GET /openapi.json`` (an OpenAPI 3.1 document of this API) and ``GET /docs`` (it, as one local page).

The request bodies' schemas are generated from the contract's pydantic models, and each operation's
summary is its view's docstring, so neither can drift from the code; a test checks that the documented
paths and methods are exactly the app's URL rules (``documented_rules``). The docs page is rendered
here, with no script and nothing loaded from outside this server.
"""

from __future__ import annotations

import html
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from streamrec.api.params import MAX_LIST_ITEMS
from streamrec.contract import HAS_TEXT_PATTERN, ID_PATTERN, CatalogItem, Event
from streamrec.event_types import TYPES, EventType
from streamrec.experiments import (
    EXPERIMENT_NAME_PATTERN,
    MAX_VARIANTS,
    MAX_WEIGHT,
    STATES,
    VARIANT_NAME_PATTERN,
)
from streamrec.placements import NAME_PATTERN, placement_json_schemas
from streamrec.settings import Settings

bp = Blueprint("docs", __name__)

# endpoints that are not part of the JSON API: the storefront's HTML pages and its static files
UNDOCUMENTED_PREFIXES = ("storefront.", "static")
REF = "#/components/schemas/{model}"


ID_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": ID_PATTERN}
# at most MAX_LIST_ITEMS comma-separated parts, as ``params.list_param`` counts them
EXCLUDE_PATTERN = rf"^[^,]*(?:,[^,]*){{0,{MAX_LIST_ITEMS - 1}}}$"


# What the HTTP API does with ts (``views.receive_time_for_future_ts``): every value from 1995 to 2100 is
# accepted, so the schema's static bounds are exactly the server's, and none moves with the clock.
HTTP_TS = (
    "event time, epoch milliseconds UTC, from 1995 to 2100; the receive time when left out. A ts more "
    "than STREAMREC_MAX_FUTURE_SKEW_MS (default 5 minutes) ahead of the server's clock (a wrong device "
    "clock) is replaced by the receive time, and the answer lists those rows in ts_set_to_receive_time; "
    "a value that looks like epoch seconds, microseconds or nanoseconds is outside the bounds and refused."
)


def _http_ts(properties: dict[str, Any]) -> dict[str, Any]:
    """``properties`` with the HTTP API's description of ``ts`` (the bounds are the contract's)."""
    return {**properties, "ts": {**properties["ts"], "description": HTTP_TS}}


def _variant_name(kind: EventType) -> str:
    return "".join(word.capitalize() for word in kind.value.split("_")) + "Event"


def _event_schemas() -> dict[str, Any]:
    """``Event`` as a union by ``type`` (a ``oneOf`` with a discriminator), one variant per event type:
    each variant says which field its type needs (``query`` for a search, ``item_id`` for the others),
    so that a client generated from the document sends only events the contract accepts."""
    base = Event.model_json_schema(by_alias=True, ref_template=REF)
    base.pop("$defs", None)
    out: dict[str, Any] = {}
    for kind in EventType:
        needs = "item_id" if TYPES[kind].needs_item else "query"
        properties = _http_ts(base["properties"])
        properties["type"] = {"const": kind.value, "type": "string"}
        properties[needs] = next(s for s in properties[needs]["anyOf"] if s.get("type") != "null")
        out[_variant_name(kind)] = {
            **base,
            "title": _variant_name(kind),
            "description": f"A {kind.value} event: it needs '{needs}'.",
            "properties": properties,
            "required": [*base["required"], needs],
        }
    out["Event"] = {
        "description": base["description"],
        "oneOf": [{"$ref": REF.format(model=_variant_name(kind))} for kind in EventType],
        "discriminator": {
            "propertyName": "type",
            "mapping": {kind.value: REF.format(model=_variant_name(kind)) for kind in EventType},
        },
    }
    return out


def _schemas() -> dict[str, Any]:
    out: dict[str, Any] = _event_schemas()
    item = CatalogItem.model_json_schema(by_alias=True, ref_template=REF)
    item["properties"] = _http_ts(item["properties"])
    out["CatalogItem"] = item
    out["CatalogItemUpdate"] = {
        **item,
        "title": "CatalogItemUpdate",
        "description": "A catalog record without its item_id, which the path gives (the body may repeat "
        "it; a different one is a 400).",
        "properties": {k: v for k, v in item["properties"].items() if k != "item_id"},
        "required": [r for r in item.get("required", []) if r != "item_id"],
    }
    nullable_str = {"type": ["string", "null"]}
    out.update(
        {
            "Error": {
                "type": "object",
                "required": ["code", "msg"],
                "properties": {
                    "code": {
                        "type": "integer",
                        "description": "stable error number (docs/reference/http.md, Error codes)",
                    },
                    "msg": {"type": "string", "description": "what is wrong, for a person"},
                    "details": {"description": "per-record or per-check details, or null"},
                },
            },
            "RecommendedItem": {
                "type": "object",
                "required": ["item_id", "score", "in_stock"],
                "properties": {
                    "item_id": {"type": "string"},
                    "score": {"type": "number"},
                    "title": nullable_str,
                    "price": {"type": ["number", "null"]},
                    "image_url": nullable_str,
                    "category": nullable_str,
                    "in_stock": {"type": "boolean"},
                    "reason": nullable_str,
                    "source": nullable_str,
                    "rules": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "with explain and a placement or filter: the rules that placed or "
                        "moved the item, most decisive first ('pinned', 'promoted', 'boosted ×1.5', "
                        "'filtered in by placement X')",
                    },
                },
            },
            "Answer": {
                "type": "object",
                "required": ["recommendation_id", "strategy", "model_version", "items"],
                "properties": {
                    "recommendation_id": {"type": "string"},
                    "strategy": {"type": "string"},
                    "model_version": nullable_str,
                    "user_id": {"type": "string"},
                    "item_id": {"type": "string"},
                    "category": nullable_str,
                    "placement": {"type": "string", "description": "the placement the answer was made for"},
                    "experiment": {
                        "type": "object",
                        "required": ["name", "variant"],
                        "properties": {"name": {"type": "string"}, "variant": {"type": "string"}},
                        "description": "inside a running experiment on the placement, for a request that "
                        "names a shopper: the experiment and the shopper's variant",
                    },
                    "items": {"type": "array", "items": {"$ref": REF.format(model="RecommendedItem")}},
                },
            },
            "Accepted": {
                "type": "object",
                "required": ["accepted"],
                "properties": {
                    "accepted": {"type": "integer", "minimum": 1},
                    "event_ids": {"type": "array", "items": {"type": "string"}},
                    "ts_set_to_receive_time": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 0},
                        "description": "indexes (in the batch; 0 for one record) of the rows whose ts "
                        "was further ahead of the server's clock than allowed and became the receive time",
                    },
                },
            },
            "Deletion": {
                "type": "object",
                "required": ["accepted", "item_id"],
                "properties": {"accepted": {"const": 1}, "item_id": {"type": "string"}},
            },
            "Erasure": {
                "type": "object",
                "required": ["accepted", "user_id", "erasure_id"],
                "properties": {
                    "accepted": {"const": 1},
                    "user_id": {"type": "string"},
                    "erasure_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                },
            },
            "Status": {
                "type": "object",
                "required": ["status"],
                "properties": {"status": {"type": "string"}},
            },
            "PlacementEntry": {
                "type": "object",
                "required": ["name", "placement"],
                "properties": {
                    "name": {"type": "string"},
                    "placement": {"$ref": REF.format(model="Placement")},
                },
            },
            "PlacementSaved": {
                "type": "object",
                "required": ["name", "placement", "version"],
                "properties": {
                    "name": {"type": "string"},
                    "placement": {"$ref": REF.format(model="Placement")},
                    "version": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "the placements' version after this change",
                    },
                },
            },
            "PlacementDeleted": {
                "type": "object",
                "required": ["name", "deleted"],
                "properties": {"name": {"type": "string"}, "deleted": {"const": True}},
            },
            "Placements": {
                "type": "object",
                "required": ["placements"],
                "properties": {
                    "placements": {"type": "array", "items": {"$ref": REF.format(model="PlacementEntry")}}
                },
            },
            **_experiment_schemas(),
        }
    )
    out.update(placement_json_schemas(REF))
    return out


def _experiment_schemas() -> dict[str, Any]:
    """The experiment document (``streamrec.experiments``) and what the experiment endpoints answer."""
    name = {"type": "string", "pattern": EXPERIMENT_NAME_PATTERN}
    number_or_null = {"type": ["number", "null"]}
    interval = {"type": ["array", "null"], "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
    entry = {
        "name": name,
        "run": {"type": "integer", "minimum": 1, "description": "given when the name is created"},
        "experiment": {"$ref": REF.format(model="Experiment")},
    }
    return {
        "Experiment": {
            "type": "object",
            "required": ["placement", "variants"],
            "additionalProperties": False,
            "properties": {
                "placement": {"type": "string", "pattern": NAME_PATTERN},
                "variants": {
                    "type": "array",
                    "minItems": 2,
                    "maxItems": MAX_VARIANTS,
                    "items": {
                        "type": "object",
                        "required": ["name", "use"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "pattern": VARIANT_NAME_PATTERN},
                            "weight": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_WEIGHT},
                            "use": {"type": "string", "pattern": NAME_PATTERN},
                        },
                    },
                },
                "state": {"enum": list(STATES)},
                "description": {"type": "string", "maxLength": 500},
            },
        },
        "ExperimentEntry": {"type": "object", "required": ["name", "run", "experiment"], "properties": entry},
        "ExperimentSaved": {
            "type": "object",
            "required": ["name", "run", "experiment", "version"],
            "properties": {**entry, "version": {"type": "integer", "minimum": 1}},
        },
        "ExperimentDeleted": {
            "type": "object",
            "required": ["name", "deleted"],
            "properties": {"name": name, "deleted": {"const": True}},
        },
        "Experiments": {
            "type": "object",
            "required": ["experiments"],
            "properties": {
                "experiments": {"type": "array", "items": {"$ref": REF.format(model="ExperimentEntry")}}
            },
        },
        "ExperimentReport": {
            "type": "object",
            "required": ["name", "run", "experiment", "report"],
            "properties": {
                **entry,
                "report": {
                    "type": "object",
                    "required": ["variants", "srm_p_value", "srm", "method"],
                    "properties": {
                        "variants": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "exposed", "answers", "converted", "conversion"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "weight": {"type": "number"},
                                    **{
                                        f: {"type": "integer", "minimum": 0}
                                        for f in (
                                            "exposed",
                                            "answers",
                                            "views",
                                            "carts",
                                            "purchases",
                                            "converted",
                                        )
                                    },
                                    "revenue": {"type": "number"},
                                    "conversion": number_or_null,
                                    "conversion_ci": interval,
                                    "revenue_per_shopper": number_or_null,
                                    "revenue_per_shopper_ci": interval,
                                    "lift": number_or_null,
                                    "lift_ci": interval,
                                    "relative_lift": number_or_null,
                                    "relative_lift_ci": interval,
                                    "p_value": number_or_null,
                                    "always_valid_p": number_or_null,
                                },
                            },
                        },
                        "srm_p_value": number_or_null,
                        "srm": {
                            "type": "boolean",
                            "description": "sample-ratio mismatch: srm_p_value < 0.001",
                        },
                        "method": {"type": "string"},
                    },
                },
            },
        },
    }


def _ok(schema: str, status: str = "200", what: str = "OK") -> dict[str, Any]:
    body = {
        "type": "object",
        "required": ["code", "msg", "data"],
        "properties": {
            "code": {"const": 0},
            "msg": {"const": "ok"},
            "data": {"$ref": REF.format(model=schema)},
        },
    }
    return {status: {"description": what, "content": {"application/json": {"schema": body}}}}


ERRORS = {
    "400": "bad JSON, wrong types, unknown fields, a batch over the limit, a bad id in the path, a bad "
    "query parameter, or a body that is not valid in its Content-Encoding (code 1006)",
    "401": "no API key, or not a valid one (when keys are configured)",
    "403": "the key's role may not do this",
    "404": "no such path, or no such item",
    "409": "the request conflicts with the current state (nothing to roll back to; the most placements "
    "a deployment keeps, 1,000, exist already; an experiment names a placement that does not exist, or "
    "another experiment runs on its placement; 100 experiments exist already)",
    "413": "the body is larger than 4 MiB, as sent or once decoded from its Content-Encoding (a placement "
    "document: larger than 64 KiB as compact JSON)",
    "415": "the body is not application/json, or its Content-Encoding is not one of gzip, deflate, zstd "
    "(or identity); the answer's Accept-Encoding lists them",
    "429": "too many writes for this key; see Retry-After",
    "503": "Redis or Kafka is unavailable; retry",
}


# gunicorn refuses a request line over 4094 bytes itself, with an HTML page, before the app sees it
TOO_LONG = {
    "414": {
        "description": "the request line is longer than 4094 bytes (answered by gunicorn, as HTML)",
        "content": {"text/html": {"schema": {"type": "string"}}},
    }
}


def _errors(*statuses: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in statuses:
        out[status] = {
            "description": ERRORS[status],
            "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
        }
        if status == "429":
            out[status]["headers"] = {
                "Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}
            }
        if status == "415":
            out[status]["headers"] = {
                "Accept-Encoding": {
                    "description": "the content codings a body may be sent in (RFC 7694), when the "
                    "coding was the problem",
                    "schema": {"type": "string"},
                }
            }
    return out


def _query(name: str, schema: dict[str, Any], what: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": what}


def _path(name: str, what: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A path parameter; an id by default (the contract's id rule; send '/' as %2F, '%' as %25)."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": ID_SCHEMA if schema is None else schema,
        "description": f"{what}, percent-encoded (a '/' in it as %2F)",
    }


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "description": "JSON, as it is or compressed: Content-Encoding gzip, deflate (zlib or raw) or "
        "zstd, stacked up to 3, decoded size at most 4 MiB",
        "content": {"application/json": {"schema": schema}},
    }


def _write_security() -> list[dict[str, list[str]]]:
    # keys are optional while none is configured (the local stack), hence the empty alternative
    return [{"bearer": []}, {"apiKey": []}, {}]


def _operations(settings: Settings) -> dict[tuple[str, str], dict[str, Any]]:
    """(Flask endpoint, method) -> the operation; the path comes from the app's own URL map."""
    k = _query("k", {"type": "integer", "minimum": 1, "maximum": settings.max_k}, "how many items")
    category = _query("category", {"type": "string", "maxLength": 128}, "only items of this category")
    explain = _query(
        "explain",
        {"type": "boolean"},
        "add each item's reason and source: exactly true or false (anything else, empty included, is a 400)",
    )
    reads = {**_errors("400", "503")}
    event = {"$ref": REF.format(model="Event")}
    item = {"$ref": REF.format(model="CatalogItem")}
    item_update = {"$ref": REF.format(model="CatalogItemUpdate")}
    events_body = {
        "oneOf": [event, {"type": "array", "items": event, "minItems": 1, "maxItems": settings.max_batch}]
    }
    items_body = {"type": "array", "items": item, "minItems": 1, "maxItems": settings.max_batch}
    write_errors = _errors("400", "401", "403", "413", "415", "429", "503")
    admin_errors = _errors("400", "401", "403", "503")
    admin_body_errors = _errors("413", "415")
    version_body = {
        "type": "object",
        "required": ["version"],
        "properties": {
            "version": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": HAS_TEXT_PATTERN}
        },
        "additionalProperties": False,
    }
    placement_name = _path(
        "name",
        "the placement (a page slot's rule set): 1-64 of A-Z a-z 0-9 _ . : -, a letter or digit first",
        {"type": "string", "pattern": NAME_PATTERN},
    )
    experiment_name = _path(
        "name",
        "the experiment: 1-40 of A-Z a-z 0-9 _ -, a letter or digit first",
        {"type": "string", "pattern": EXPERIMENT_NAME_PATTERN},
    )
    placement = _query(
        "placement",
        {"anyOf": [{"type": "string", "pattern": NAME_PATTERN}, {"type": "string", "maxLength": 0}]},
        "a placement (PUT /v1/admin/placements/{name}): its rules, and its strategy, make the answer; an "
        "unknown one is a 404 (empty: none)",
    )
    filter_ = {
        "name": "filter",
        "in": "query",
        "required": False,
        "content": {"application/json": {"schema": {"$ref": REF.format(model="PlacementFilter")}}},
        "description": "a filter document (MongoDB query operators, the placements' filter language), "
        "URL-encoded JSON, ANDed with the placement's filter; a bad one is a 400 naming the JSON path",
    }
    by_user = _query(
        "user_id",
        {"anyOf": [ID_SCHEMA, {"type": "string", "maxLength": 0}]},
        "the shopper a placement whose strategy is personal answers for (empty: none)",
    )
    # filter= last: schemathesis (4.32) sends the parameter after a JSON-content one empty
    ops: dict[tuple[str, str], dict[str, Any]] = {
        ("v1.recommendations", "get"): {
            "parameters": [
                _path("user_id", "the shopper"),
                k,
                category,
                _query(
                    "exclude",
                    {"type": "string", "pattern": EXCLUDE_PATTERN},
                    f"item ids to leave out, comma-separated, at most {MAX_LIST_ITEMS}",
                ),
                explain,
                placement,
                filter_,
            ],
            "responses": {**_ok("Answer"), **reads, **_errors("404")},
        },
        ("v1.similar", "get"): {
            "parameters": [
                _path("item_id", "the item"),
                k,
                _query("user_id", ID_SCHEMA, "leave out what this user bought"),
                explain,
                placement,
                filter_,
            ],
            "responses": {**_ok("Answer"), **reads, **_errors("404")},
        },
        ("v1.popular", "get"): {
            "parameters": [k, category, explain, placement, by_user, filter_],
            "responses": {**_ok("Answer"), **reads, **_errors("404")},
        },
        ("v1.trending", "get"): {
            "parameters": [k, category, explain, placement, by_user, filter_],
            "responses": {**_ok("Answer"), **reads, **_errors("404")},
        },
        ("v1.post_events", "post"): {
            "requestBody": _body(events_body),
            "security": _write_security(),
            "responses": {**_ok("Accepted", "202", "Kafka acknowledged every event"), **write_errors},
        },
        ("v1.get_item", "get"): {
            "parameters": [_path("item_id", "the item")],
            "responses": {
                **_ok("CatalogItem", "200", "the stored catalog record"),
                **reads,
                **_errors("404"),
            },
        },
        ("v1.delete_item", "delete"): {
            "parameters": [_path("item_id", "the item")],
            "security": _write_security(),
            "responses": {
                **_ok("Deletion", "202", "Kafka acknowledged the deletion; the worker applies it"),
                **_errors("400", "401", "403", "404", "429", "503"),
            },
        },
        ("v1.delete_user", "delete"): {
            "parameters": [_path("user_id", "the shopper")],
            "security": _write_security(),
            "responses": {
                **_ok("Erasure", "202", "Kafka acknowledged the erasure; the worker applies it"),
                **_errors("400", "401", "403", "404", "429", "503"),
            },
        },
        ("v1.put_item", "put"): {
            "parameters": [_path("item_id", "the item")],
            "requestBody": _body(item_update),
            "security": _write_security(),
            "responses": {
                **_ok("Accepted", "202", "Kafka acknowledged the record"),
                **write_errors,
                **_errors("404"),
            },
        },
        ("v1.post_items", "post"): {
            "requestBody": _body(items_body),
            "security": _write_security(),
            "responses": {**_ok("Accepted", "202", "Kafka acknowledged every record"), **write_errors},
        },
        ("v1.healthz", "get"): {"responses": _ok("Status")},
        ("v1.readyz", "get"): {"responses": {**_ok("Status"), **_errors("503")}},
        ("v1.placeholder_image", "get"): {
            "parameters": [_path("item_id", "the item", {"type": "string"})],
            "responses": {
                "200": {
                    "description": "an SVG drawing",
                    "content": {"image/svg+xml": {"schema": {"type": "string"}}},
                },
                **_errors("404"),
            },
        },
        ("observability.metrics_endpoint", "get"): {
            "responses": {
                "200": {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            }
        },
        ("docs.openapi_json", "get"): {
            "responses": {
                "200": {
                    "description": "this document",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            }
        },
        ("docs.docs_page", "get"): {
            "responses": {
                "200": {
                    "description": "this document as a page",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            }
        },
        ("admin.activate_model", "post"): {
            "requestBody": _body(version_body),
            "security": [{"bearer": []}, {"apiKey": []}],
            "responses": {**_ok("Status"), **admin_errors, **admin_body_errors, **_errors("404")},
        },
        ("admin.rollback_model", "post"): {
            "security": [{"bearer": []}, {"apiKey": []}],
            "responses": {**_ok("Status"), **admin_errors, **_errors("404", "409")},
        },
        ("admin_placements.put_placement", "put"): {
            "parameters": [placement_name],
            "requestBody": _body({"$ref": REF.format(model="Placement")}),
            "security": [{"bearer": []}, {"apiKey": []}],
            "responses": {
                **_ok("PlacementSaved", "200", "replaced"),
                **_ok("PlacementSaved", "201", "created"),
                **admin_errors,
                **admin_body_errors,
                **_errors("409"),
            },
        },
        ("admin_placements.get_placement", "get"): {
            "parameters": [placement_name],
            "security": [{"bearer": []}, {"apiKey": []}],
            "responses": {**_ok("PlacementEntry"), **admin_errors, **_errors("404")},
        },
        ("admin_placements.delete_placement", "delete"): {
            "parameters": [placement_name],
            "security": [{"bearer": []}, {"apiKey": []}],
            "responses": {**_ok("PlacementDeleted"), **admin_errors, **_errors("404")},
        },
        ("admin_placements.list_placements", "get"): {
            "security": [{"bearer": []}, {"apiKey": []}],
            "responses": {**_ok("Placements"), **_errors("401", "403", "503")},
        },
        ("admin_experiments.put_experiment", "put"): {
            "parameters": [experiment_name],
            "requestBody": _body({"$ref": REF.format(model="Experiment")}),
            "security": [{"bearer": []}, {"apiKey": []}],
            "responses": {
                **_ok("ExperimentSaved", "200", "replaced"),
                **_ok("ExperimentSaved", "201", "created"),
                **admin_errors,
                **admin_body_errors,
                **_errors("409"),
            },
        },
        ("admin_experiments.get_experiment", "get"): {
            "parameters": [experiment_name],
            "security": [{"bearer": []}, {"apiKey": []}],
            "responses": {**_ok("ExperimentEntry"), **admin_errors, **_errors("404")},
        },
        ("admin_experiments.delete_experiment", "delete"): {
            "parameters": [experiment_name],
            "security": [{"bearer": []}, {"apiKey": []}],
            "responses": {**_ok("ExperimentDeleted"), **admin_errors, **_errors("404")},
        },
        ("admin_experiments.list_experiments", "get"): {
            "security": [{"bearer": []}, {"apiKey": []}],
            "responses": {**_ok("Experiments"), **_errors("401", "403", "503")},
        },
        ("admin_experiments.report", "get"): {
            "parameters": [experiment_name],
            "security": [{"bearer": []}, {"apiKey": []}],
            "responses": {**_ok("ExperimentReport"), **admin_errors, **_errors("404")},
        },
    }
    return ops


def documented_rules(app: Flask) -> list[tuple[str, str, str]]:
    """(OpenAPI path, method, endpoint) of every URL rule this document must describe."""
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(UNDOCUMENTED_PREFIXES):
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((path, method.lower(), rule.endpoint))
    return out


def document(app: Flask, settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of ``app``: every documented rule, with its view's docstring as summary."""
    ops = _operations(settings)
    paths: dict[str, dict[str, Any]] = {}
    for path, method, endpoint in documented_rules(app):
        op = ops.get((endpoint, method))
        if op is None:
            continue  # the drift test names it
        doc = (app.view_functions[endpoint].__doc__ or "").strip()
        op = {**op, "responses": {**op["responses"], **TOO_LONG}}
        paths.setdefault(path, {})[method] = {
            "operationId": endpoint.replace(".", "_"),
            "summary": doc.splitlines()[0] if doc else endpoint,
            "tags": [endpoint.split(".")[0]],
            **({"security": []} if "security" not in op else {}),
            **op,
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "streamrec",
            "version": "1",
            "description": "Real-time recommendations for online shops. Every answer is "
            '{"code": 0, "msg": "ok", "data": ...}; every error {"code", "msg", "details"}.',
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


@bp.get("/openapi.json")
def openapi_json():  # type: ignore[no-untyped-def]
    """The OpenAPI 3.1 document of this API."""
    return jsonify(current_app.extensions["streamrec.openapi"])


@bp.get("/docs")
def docs_page():  # type: ignore[no-untyped-def]
    """The API documentation as one page, rendered here from the OpenAPI document."""
    return Response(render(current_app.extensions["streamrec.openapi"]), mimetype="text/html")


def _schema_text(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    for alternatives in ("oneOf", "anyOf"):
        if alternatives in schema:
            return " or ".join(_schema_text(s) for s in schema[alternatives])
    if schema.get("type") == "array":
        return f"array of {_schema_text(schema.get('items', {}))}"
    kind = schema.get("type", "any")
    return " | ".join(kind) if isinstance(kind, list) else str(kind)


def _param_schema(param: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema: its own, or that of its JSON content (``filter=``, a JSON document)."""
    if "schema" in param:
        return param["schema"]  # type: ignore[no-any-return]
    return param["content"]["application/json"]["schema"]  # type: ignore[no-any-return]


def render(doc: dict[str, Any]) -> str:
    """A plain HTML page of the document: each operation with its parameters, body and answers."""
    e = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>streamrec API</title>",
        "<style>body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "code{background:#f3f3f3;padding:0 .2rem}section{border-top:1px solid #ddd;padding:.5rem 0}"
        "table{border-collapse:collapse}td,th{padding:.1rem .6rem;text-align:left;vertical-align:top}</style>",
        "</head><body>",
        f"<h1>{e(doc['info']['title'])} API</h1><p>{e(doc['info']['description'])}</p>",
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p>",
    ]
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            parts.append(
                f"<section id='{e(op['operationId'])}'><h2><code>{method.upper()} {e(path)}</code></h2>"
            )
            parts.append(f"<p>{e(op['summary'])}</p>")
            if op.get("security"):
                parts.append(
                    "<p>Needs an API key (<code>Authorization: Bearer …</code> or <code>X-API-Key</code>).</p>"
                )
            params = op.get("parameters", [])
            if params:
                parts.append("<table><tr><th>parameter</th><th>in</th><th>type</th><th>meaning</th></tr>")
                for p in params:
                    parts.append(
                        f"<tr><td><code>{e(p['name'])}</code></td><td>{e(p['in'])}</td>"
                        f"<td>{e(_schema_text(_param_schema(p)))}</td><td>{e(p.get('description', ''))}</td></tr>"
                    )
                parts.append("</table>")
            if "requestBody" in op:
                schema = next(iter(op["requestBody"]["content"].values()))["schema"]
                parts.append(f"<p>Body: <code>{e(_schema_text(schema))}</code> (JSON)</p>")
            answers = ", ".join(f"{s} {e(r['description'])}" for s, r in op["responses"].items())
            parts.append(f"<p>Answers: {answers}</p></section>")
    parts.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        props = schema.get("properties", {})
        if not props:
            continue
        required = set(schema.get("required", []))
        rows = "".join(
            f"<tr><td><code>{e(field)}</code>{' *' if field in required else ''}</td>"
            f"<td>{e(_schema_text(s))}</td><td>{e(str(s.get('description', '')))}</td></tr>"
            for field, s in props.items()
        )
        parts.append(f"<section id='schema-{e(name)}'><h3>{e(name)}</h3><table>{rows}</table></section>")
    parts.append("</body></html>")
    return "".join(parts)


def init_app(app: Flask, settings: Settings) -> None:
    """Register the two routes; the document is built once, after every other blueprint is in."""
    app.register_blueprint(bp)
    app.extensions["streamrec.openapi"] = document(app, settings)
