"""streamrec: real-time, event-driven recommendations for online shops.

This package holds what every program shares: the event contract, settings, the Redis state layout and
scripts, the scoring maths and the ranking. The programs (producers, stream_processor, api) sit beside it.
"""

__version__ = "0.1.0"
