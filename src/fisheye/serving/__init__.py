"""The HTTP service: app factory (`app.create_app`), settings, routes, batcher, live monitoring."""
