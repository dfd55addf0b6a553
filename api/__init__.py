"""The HTTP API: a Flask app factory (``api.app.create_app``) served by gunicorn (``api.server``)."""
