"""The FID InceptionV3, built from pytorch-fid's definition with weights found offline.

pytorch-fid is the reference PyTorch port of the TensorFlow FID network
(``pt_inception-2015-12-05``); its numbers match the literature's. Its
``fid_inception_v3`` fetches the weights from GitHub, which ganseg must never
do: the network is built here with pytorch-fid's own loader replaced by one
that returns the verified local file, so no code path can reach the network.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
#: torch.hub convention: the file name ends in the first hex digits of the file's SHA-256.
SHA256_PREFIX = "6726825d"
WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILE
)


class InceptionWeightsError(FileNotFoundError):
    """The FID Inception weights are missing or are not the expected file."""


def default_weights_path() -> Path:
    """Where torch looks for hub checkpoints: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_weights(configured: str | os.PathLike | None = None) -> Path:
    """The verified weights file: the configured path, else the torch hub cache.

    Raises:
        InceptionWeightsError: missing file (the message says which file to
            put where) or a file whose hash is not the FID network's.
    """
    help_text = (
        f"features='inception' needs the FID InceptionV3 weights {WEIGHTS_FILE} "
        f"(about 91 MiB; pytorch-fid's release file {WEIGHTS_URL}). ganseg never downloads weights: "
        f"copy that file to {default_weights_path()} (the torch hub cache; set TORCH_HOME to move it) "
        f"or set evaluators.<name>.inception_weights to its path. Without it, use features: seg or random."
    )
    path = Path(configured).expanduser() if configured else default_weights_path()
    if not path.is_file():
        where = "the configured inception_weights path" if configured else "the torch hub cache"
        raise InceptionWeightsError(f"no file at {path} ({where}). {help_text}")
    digest = sha256_of(path)
    if not digest.startswith(SHA256_PREFIX):
        raise InceptionWeightsError(
            f"{path} is not the FID Inception weights: its SHA-256 starts {digest[:8]}, "
            f"expected {SHA256_PREFIX}. {help_text}"
        )
    return path


@contextlib.contextmanager
def _local_weights(state_dict: dict[str, torch.Tensor]) -> Iterator[None]:
    """Make pytorch-fid's weight loader return ``state_dict`` instead of fetching a URL."""
    from pytorch_fid import inception as fid_inception

    original = fid_inception.load_state_dict_from_url

    def load_local(url: str, *args, **kwargs) -> dict[str, torch.Tensor]:
        return state_dict

    fid_inception.load_state_dict_from_url = load_local
    try:
        yield
    finally:
        fid_inception.load_state_dict_from_url = original


def build_fid_inception(weights: Path) -> torch.nn.Module:
    """pytorch-fid's InceptionV3 up to the 2048-d pool, with the local weights.

    It takes [N, 3, H, W] in [-1, 1] (``normalize_input=False``) and resizes
    to 299 x 299 bilinearly inside the network, so real and synthetic slices
    go through exactly the same resize.
    """
    try:
        from pytorch_fid.inception import InceptionV3
    except ImportError as exc:
        raise ImportError(
            "features='inception' needs pytorch-fid: pip install 'ganseg[fid]' (or pip install pytorch-fid)"
        ) from exc
    state_dict = torch.load(weights, map_location="cpu", weights_only=True)
    with _local_weights(state_dict):
        net = InceptionV3(output_blocks=(InceptionV3.BLOCK_INDEX_BY_DIM[2048],),
                          resize_input=True, normalize_input=False, use_fid_inception=True)
    return net.eval()
