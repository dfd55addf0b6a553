"""The stream processor: a faust-streaming worker that folds events into Redis state.

``app.create_app`` builds the Faust app from settings; ``agents`` holds the agents; ``fold`` holds the
decoding and dead-letter logic they call, which is tested without Kafka.
"""
