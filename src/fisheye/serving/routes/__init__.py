"""The HTTP routes, one module per resource; each module has one `router`."""

from fisheye.serving.routes import admin, feedback, health, model, monitoring, predict

ROUTERS = (
    predict.router,
    model.router,
    monitoring.router,
    feedback.router,
    admin.router,
    health.router,
)

__all__ = ["ROUTERS"]
