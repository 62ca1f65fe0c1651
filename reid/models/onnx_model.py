"""A retrieval model as ONNX: export from a training checkpoint, and run it with ONNX Runtime.

The exported graph is the retrieval network only (backbone, GDFL head, BNNeck; no ID classifier, no
adversary), in eval mode, float32, with a dynamic batch axis: input ``images`` N x 3 x H x W, normalised like
the checkpoint's test transform; output ``features`` N x D, the raw (not L2-normalised) retrieval feature the
checkpoint's ``test.feat`` selects. Everything a user of the file needs besides the graph (input size, mean
and std, model name, the video gates, the sha256 of the source weights) is stored as JSON in the model's
metadata under :data:`METADATA_KEY`, so an ``.onnx`` file works wherever a checkpoint does.

The model name is the checkpoint's: both files compute the same features (to about 1e-5), so a gallery built
with one accepts the other.

Export uses PyTorch's TorchScript-based exporter (needs the ``onnx`` package, extra ``[onnx]``); the newer
``torch.export`` path does not trace the model's stage loop here.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reid.evaluation.distance import l2_normalize
from reid.models.checkpoint import CheckpointError, load_retrieval_model
from reid.utils.io import atomic_open

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
METADATA_KEY = "reid"
INPUT_NAME, OUTPUT_NAME = "images", "features"
# What the metadata carries from load_retrieval_model's info.
_INFO_KEYS = ("input_size", "mean", "std", "feature_dim", "model_name", "appearance_thresholds")


def missing_extra(package: str, extra: str = "onnx") -> ImportError:
    """The error for an optional dependency that is not installed, naming the extra that brings it."""
    return ImportError(f"{package} is not installed: pip install -e '.[{extra}]' (or pip install {package})")


def export_onnx(
    checkpoint: str | os.PathLike, out: str | os.PathLike, *, opset: int = ONNX_OPSET
) -> dict[str, Any]:
    """Write the retrieval graph of ``checkpoint`` to ``out`` (atomically); return the metadata stored."""
    try:
        import onnx
    except ImportError:
        raise missing_extra("onnx") from None
    model, info = load_retrieval_model(checkpoint)
    model = model.float().eval()
    height, width = info["input_size"]
    example = torch.zeros(2, 3, height, width)
    metadata = {key: info[key] for key in _INFO_KEYS}
    metadata["input_size"] = list(metadata["input_size"])
    metadata["source_weights_sha256"] = info["weights_sha256"]
    metadata["opset"] = int(opset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices; the result is checked below
        buffer = io.BytesIO()
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=int(opset),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True)
    proto.producer_name = "reid-gdfl"
    onnx.checker.check_model(proto)
    with atomic_open(out, "wb") as handle:
        handle.write(proto.SerializeToString())
    logger.info("exported %s (%s, opset %d) to %s", checkpoint, info["model_name"], opset, out)
    return metadata


class OnnxRetrievalModel:
    """An exported retrieval model in an ONNX Runtime session: ``model(images)`` -> N x D float32 features.

    ``info`` has the keys of :func:`reid.models.load_retrieval_model`'s info that preprocessing and galleries
    need (``input_size``, ``mean``, ``std``, ``feature_dim``, ``model_name``, ``appearance_thresholds``).
    """

    def __init__(
        self, path: str | os.PathLike, *, device: str = "cpu", num_threads: int | None = None
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_extra("onnxruntime") from None
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = int(num_threads)
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError(
                    f"device {device!r}: this onnxruntime has no CUDA provider (install onnxruntime-gpu), "
                    "or use the .pt checkpoint"
                )
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for unreadable files
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"ONNX model {path} cannot be loaded by ONNX Runtime: {reason}") from err
        stored = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if stored is None:
            raise CheckpointError(
                f"ONNX model {path} has no '{METADATA_KEY}' metadata (input size, normalisation, model "
                "name): export it with tools/export_onnx.py"
            )
        try:
            metadata = json.loads(stored)
            self.info = {key: metadata[key] for key in _INFO_KEYS}
        except (ValueError, KeyError) as err:
            raise CheckpointError(
                f"ONNX model {path}: its '{METADATA_KEY}' metadata is damaged ({err})"
            ) from err
        self.info["input_size"] = tuple(int(v) for v in self.info["input_size"])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(images, dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0].astype(np.float32, copy=False)


def parity_report(
    checkpoint: str | os.PathLike, onnx_path: str | os.PathLike, *, num_images: int = 16, seed: int = 0
) -> dict[str, float | int]:
    """PyTorch vs ONNX Runtime on the same random inputs (batches of 1 and ``num_images``): the largest
    absolute difference of the L2-normalised features and of the raw ones."""
    model, info = load_retrieval_model(checkpoint)
    onnx_model = OnnxRetrievalModel(onnx_path)
    height, width = info["input_size"]
    images = np.random.default_rng(seed).standard_normal((num_images, 3, height, width)).astype(np.float32)
    with torch.inference_mode():
        reference = model.float()(torch.from_numpy(images)).numpy()
    exported = np.concatenate([onnx_model(images[:1]), onnx_model(images[1:])])
    return {
        "max_abs_diff_normalised": float(np.abs(l2_normalize(exported) - l2_normalize(reference)).max()),
        "max_abs_diff_raw": float(np.abs(exported - reference).max()),
        "num_images": int(num_images),
    }
