"""Code shared by the unit and integration tests (not tests themselves).

- `paths`: where the repository, the real photos and the default model are; the real classes.
- `photos`: synthetic photos and broken files, as images, bytes or files.
- `bundles`: tiny model bundles, plain, exported (ONNX, int8) or with a drift reference.
- `server`: a real `fisheye serve` process on a free local port.

The fixtures built on these live in tests/conftest.py (both kinds of tests),
tests/unit/conftest.py and tests/integration/conftest.py.
"""
