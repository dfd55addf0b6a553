"""The shop-facing side of streamrec: the client library a shop backend publishes with, and two programs.

``EventPublisher`` is the client (it lives in ``streamrec.publisher`` because the API publishes too and
programs must not import each other; it is re-exported here for shop code). ``producers.replay`` replays a
public dataset and ``producers.simulate`` runs a synthetic shop, both through that same client.
"""

from streamrec.publisher import EventPublisher

__all__ = ["EventPublisher"]
