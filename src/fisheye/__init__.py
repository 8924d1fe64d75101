import os

__version__ = "0.1.0"

# ONNX Runtime's Linux wheels (1.32 on) upload usage events to Microsoft and keep a device ID
# under ~/.cache unless this is set before the runtime starts. FishEye reaches no network at
# run time, so it is off unless the user sets the variable themselves.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
