"""What the peer servers share: photo decoding, preprocessing and the ONNX Runtime session.

Written by hand, as a user serving the bundle without FishEye would: it does not import
fisheye. The arithmetic copies FishEye's evaluation transform (src/fisheye/data/images.py
and preprocess.py) so the tensors are bit-identical; `benchmarks/peer_compare.py` checks
that with np.array_equal on real photos before it measures anything
(`python benchmarks/peers/common.py --dump out.npz PHOTO...` writes the tensors).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "models" / "default"
ONNX_FILE = "model.int8.onnx"
THREADS = 2  # as FishEye's default FISHEYE_THREADS=2


class Bundle:
    """The parts of a FishEye bundle folder a peer needs: classes, preprocessing, ONNX graph."""

    def __init__(self, model_dir: str | Path = DEFAULT_MODEL):
        self.dir = Path(model_dir)
        meta = json.loads((self.dir / "bundle.json").read_text())
        self.classes: list[str] = list(meta["classes"])
        pre = meta["preprocessing"]
        if pre["resize"] not in ("squash", "center_crop") or pre["interpolation"] != "bilinear":
            raise SystemExit(f"the peers implement squash or center_crop, bilinear; not {pre}")
        self.size = int(pre["input_size"])
        self.resize = pre["resize"]
        self.crop_fraction = float(pre["crop_fraction"])
        # (x - 255 mean) / (255 std), all in float32, shaped (3, 1, 1) to broadcast over CHW.
        self.mean = np.asarray(pre["mean"], np.float32).reshape(3, 1, 1) * np.float32(255.0)
        self.std = np.asarray(pre["std"], np.float32).reshape(3, 1, 1) * np.float32(255.0)

    def decode(self, data: bytes | Image.Image) -> Image.Image:
        """Photo bytes (or an opened image) to an upright RGB image."""
        img = Image.open(io.BytesIO(data)) if isinstance(data, bytes) else data
        img.load()
        img = ImageOps.exif_transpose(img)
        return img if img.mode == "RGB" else img.convert("RGB")

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """RGB image to the (3, H, W) float32 model input."""
        size = (self.size, self.size)
        if self.resize == "center_crop":
            # The shorter side to size / crop_fraction, then the centre size x size.
            w, h = img.size
            scale = round(self.size / self.crop_fraction) / min(w, h)
            nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
            img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0)
            left, top = (nw - self.size) // 2, (nh - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
        elif img.size != size:
            img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        chw = np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
        return (chw.astype(np.float32) - self.mean) / self.std

    def prepare(self, data: bytes | Image.Image) -> np.ndarray:
        """Decode + preprocess."""
        return self.preprocess(self.decode(data))

    def session(self, threads: int = THREADS) -> ort.InferenceSession:
        """An ONNX Runtime CPU session on the int8 export with `threads` intra-op threads."""
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        return ort.InferenceSession(
            str(self.dir / ONNX_FILE), sess_options=opts, providers=["CPUExecutionProvider"]
        )


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (for the reported confidence)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    """--dump: write the tensors this interpreter's peer code makes for the given photos.

    Both ways a peer gets a photo: raw bytes (the bare server) and an image Pillow opened
    from a file object (what BentoML's `PIL.Image.Image` input hands the service). Prints
    the library versions as JSON.
    """
    parser = argparse.ArgumentParser(description="Dump the peers' model inputs for photos.")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--dump", type=Path, required=True, help="Output .npz file.")
    parser.add_argument("photos", type=Path, nargs="+")
    args = parser.parse_args(argv)
    bundle = Bundle(args.model)
    from_bytes = np.stack([bundle.prepare(p.read_bytes()) for p in args.photos])
    from_image = []
    for p in args.photos:
        with p.open("rb") as fh:
            from_image.append(bundle.prepare(Image.open(fh)))
    np.savez(args.dump, from_bytes=from_bytes, from_image=np.stack(from_image))
    import PIL

    versions = {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "onnxruntime": ort.__version__,
    }
    print(json.dumps(versions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
