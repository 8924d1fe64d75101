"""The HTTP service: FastAPI app factory, micro-batcher, metrics and the web page."""

from fisheye.serving.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str):
    # `create_app` pulls in FastAPI and torch; import it lazily so settings stay cheap.
    if name == "create_app":
        from fisheye.serving.app import create_app

        return create_app
    raise AttributeError(name)
