"""The storefront: a small shop served by streamrec whose recommendation rows react to what the shopper does.

Pages are rendered here from the catalog; the rows ("recommended for you", "customers also viewed /
bought") and every action (search, view, add to cart, remove, buy) go from the browser through the
public JSON API (``/v1/...``) in ``static/shop.js``, exactly as a real shop frontend would: its events are
sent by the browser tracker every shop can use, ``static/streamrec.js``, which this module serves at
``/static/streamrec.js`` (docs/tracker.md). The page loads nothing from outside this server: the content
security policy below forbids it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, render_template, request, send_from_directory
from redis.exceptions import RedisError

from streamrec.api.catalog_search import CatalogSearch
from streamrec.api.extensions import Services, placements_of, services

bp = Blueprint(
    "storefront",
    __name__,
    url_prefix="/shop",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

PAGE_SIZE = 24
# the placement whose answer the front page shows as a shelf (for example "Under $20"), refreshed every
# few seconds, so a merchandiser's change shows while the page is open (README, "Placements")
SHELF = "shop-shelf"
SHOPPERS = ["alice", "bob", "carol"]
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
STATIC = Path(__file__).with_name("static")
TRACKER = "streamrec.js"
# A shop's pages load the tracker on every page view: browsers and CDNs keep it this long before they ask
# again (with If-None-Match / If-Modified-Since: a 304 while it is unchanged).
TRACKER_MAX_AGE_S = 300


def init_app(app: Flask) -> None:
    """Register the storefront and its catalog search (no I/O until the first page asks)."""
    svc: Services = services(app)
    app.extensions["storefront"] = CatalogSearch(svc.redis, svc.recommender.reader.keys, svc.recommender)
    app.register_blueprint(bp)
    # at the root, not under /shop: it is for every shop's pages, not only this one's (an endpoint named
    # "static..." is not part of the OpenAPI document)
    app.add_url_rule(f"/static/{TRACKER}", "static_tracker", tracker_script)


def tracker_script() -> Response:
    """The browser tracker, an ES module any page may import, from any origin (docs/tracker.md)."""
    resp = send_from_directory(
        STATIC, TRACKER, mimetype="text/javascript", max_age=TRACKER_MAX_AGE_S, conditional=True
    )
    # a module script is fetched in CORS mode: the file is public and carries no credentials, so every
    # origin may load it (the events it sends still need an origin in STREAMREC_CORS_ORIGINS, and a key)
    resp.headers["Access-Control-Allow-Origin"] = "*"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


def catalog() -> CatalogSearch:
    """This process's catalog index."""
    search: CatalogSearch = current_app.extensions["storefront"]
    return search


@bp.after_request
def _security_headers(resp: Any) -> Any:
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    return resp


@bp.errorhandler(RedisError)
def _redis_down(exc: RedisError):  # type: ignore[no-untyped-def]
    return render_template("storefront/error.html", message="The shop's state (Redis) is unavailable."), 503


def _page_number() -> int:
    try:
        return max(1, min(int(request.args.get("page", "1")), 10_000))
    except ValueError:
        return 1


@bp.get("/")
def index():  # type: ignore[no-untyped-def]
    """The shop's front page: the catalog grid (or search results) and the live "recommended for you" row."""
    query = (request.args.get("q") or "").strip()[:200]
    page = _page_number()
    if query:
        products, total = catalog().search(query, PAGE_SIZE), None
    else:
        products, total = catalog().listing((page - 1) * PAGE_SIZE, PAGE_SIZE)
    return render_template(
        "storefront/index.html",
        query=query,
        products=products,
        page=page,
        has_more=total is not None and page * PAGE_SIZE < total,
        total=total,
        shoppers=SHOPPERS,
        # the shelf shows when its placement exists (a page opened before it does asks nothing of it)
        shelf=SHELF if placements_of().get(SHELF) is not None else None,
    )


@bp.get("/p/<path:item_id>")
def product(item_id: str):  # type: ignore[no-untyped-def]
    """One product with "customers also viewed / bought" and "recommended for you"; opening it is a view."""
    found = catalog().product(item_id)
    if found is None:
        return render_template(
            "storefront/error.html", message=f"No product {item_id!r} in the catalog.", shoppers=SHOPPERS
        ), 404
    return render_template("storefront/product.html", product=found, shoppers=SHOPPERS)
