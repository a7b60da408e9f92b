"""Where the IDX files of a data set are found, and the cache of decompressed copies.

Where the files are found (first match wins) is spelled out in :func:`find_data_files`;
:func:`read_idx` reads one, through the cache described in :func:`data_cache_dir`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Optional, Sequence, Tuple, Union

from torch import Tensor

from .idx import GZIP_MAGIC, gunzip, idx_header, parse_idx

__all__ = [
    "read_idx",
    "idx_shape",
    "data_cache_dir",
    "cache_idx",
    "resized_cache_path",
    "find_data_files",
    "DATASET_NAMES",
    "IDX_FILES",
    "PathLike",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Canonical data set names accepted by :func:`find_data_files` and :func:`load_data`.
DATASET_NAMES: Tuple[str, ...] = ("fashion-mnist", "mnist")

#: Key -> standard file stem of the four IDX files (each may also carry ``.gz``).
IDX_FILES: Mapping[str, str] = MappingProxyType(
    {
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }
)

_ALIASES = {
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "mnist": "mnist",
}
# Directory names torchvision uses: root/<class name>/raw/<file>.
_TORCHVISION_DIRS = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
# Where Debian's dataset packages put the files.
_SYSTEM_DIRS = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
}
_APT_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}


# --------------------------------------------------------------------------- IDX files


def read_idx(path: PathLike) -> Tensor:
    """Reads an IDX file (raw or gzip-compressed) into a ``uint8`` tensor.

    An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
    dimensions ``ndim``), ``ndim`` big-endian ``uint32`` sizes, then the data in C order.
    Compression is recognised by the gzip magic bytes, not by the file name.

    Args:
        path: the file to read.

    Returns:
        A ``uint8`` tensor whose shape is the sizes in the header, e.g. ``[N, H, W]`` for
        an images file and ``[N]`` for a labels file.

    Raises:
        ValueError: if the gzip stream is corrupt, the magic number is wrong, the type
            code is not ``0x08`` (unsigned byte, the only one the MNIST family uses), or
            the data is shorter or longer than the header promises. The message names
            the file.

    Example:
        >>> labels = read_idx("data/train-labels-idx1-ubyte.gz")  # doctest: +SKIP
        >>> labels.shape, labels.dtype  # doctest: +SKIP
        (torch.Size([60000]), torch.uint8)
    """
    path = Path(path)
    cached = _cache_path(path)
    if cached is not None and cached.exists():
        raw = cached.read_bytes()
    else:
        raw = path.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        raw = gunzip(raw, path)
        _write_cache(cached, raw)
    return parse_idx(raw, path)


def idx_shape(path: PathLike) -> Tuple[int, ...]:
    """The shape of the tensor an IDX file holds, read from its header alone (from the
    decompressed copy in the cache when there is one): what :func:`read_idx` would return the
    shape of, without reading or decompressing the data.

    Raises:
        ValueError: as :func:`read_idx` does for a bad header.
    """
    path = Path(path)
    cached = _cache_path(path)
    source = cached if cached is not None and cached.exists() else path
    with open(source, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == GZIP_MAGIC else open
    with opener(source, "rb") as f:
        return tuple(idx_header(f.read(4 + 4 * 255), path))


def data_cache_dir() -> Path:
    """Where decompressed copies of gzipped IDX files are kept: ``$DPM_DATA_CACHE``, else
    ``$XDG_CACHE_HOME/dpm_core`` or ``~/.cache/dpm_core``.

    Decompressing the training images takes a few tenths of a second idle and seconds on a
    busy machine, in every notebook and every graded kernel; the raw copy reads in well
    under a tenth. It is written on the first read (atomically; nothing is written where
    the folder is read-only) and keyed by the file's path, size and modification time.
    """
    if os.environ.get("DPM_DATA_CACHE"):
        return Path(os.environ["DPM_DATA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dpm_core"


def cache_idx(path: PathLike) -> Optional[Path]:
    """Decompress a gzipped IDX file into the cache unless it is there already.

    Returns:
        The cache file, or None for a file that is not gzipped (it is read as it is).
    """
    path = Path(path)
    cached = _cache_path(path)
    if cached is not None and not cached.exists():
        read_idx(path)
    return cached


def _cache_path(path: Path) -> Optional[Path]:
    """The cache file of a gzipped IDX file, or None for an uncompressed or missing one."""
    if path.suffix != ".gz":
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    return data_cache_dir() / f"{path.stem}-{where}-{stat.st_size}-{stat.st_mtime_ns}"


def resized_cache_path(path: PathLike, size: Tuple[int, int]) -> Optional[Path]:
    """Where the images of a gzipped IDX file, resized to ``size = (H, W)`` as ``uint8``, are
    kept (raw bytes ``[N, 1, H, W]``; None for an uncompressed or missing file).

    :func:`load_data` reads such a copy when it is there and never writes one (70 000 images
    at 64 x 64 are 287 MB): the grader does (:func:`cache_resized`), so that every graded
    kernel of a 64 x 64 notebook reads its images instead of resizing them for seconds.
    """
    cached = _cache_path(Path(path))
    return None if cached is None else cached.with_name(f"{cached.name}-{size[0]}x{size[1]}")


def _write_cache(cached: Optional[Path], raw: bytes) -> None:
    if cached is None:
        return
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
        partial.write_bytes(raw)
        os.replace(partial, cached)
    except OSError:  # a read-only or full cache only costs speed
        pass


# ------------------------------------------------------------------- finding the files


def _canonical_name(name: str) -> str:
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in _ALIASES:
        raise ValueError(
            f"name must be one of {list(DATASET_NAMES)} (aliases: 'FashionMNIST', "
            f"'fashion_mnist', 'MNIST'; case-insensitive), got {name!r}"
        )
    return _ALIASES[key]


def _files_in(directory: Path) -> Optional[dict[str, Path]]:
    """The four files in ``directory`` (uncompressed preferred), or None if any is missing."""
    found = {}
    for key, stem in IDX_FILES.items():
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _files_under(root: Path, name: str) -> Optional[dict[str, Path]]:
    """Looks in the layouts ``root/``, ``root/<name>/`` and torchvision's ``root/<Cls>/raw/``."""
    for directory in (root, root / name, root / _TORCHVISION_DIRS[name] / "raw"):
        files = _files_in(directory)
        if files is not None:
            return files
    return None


def _torchvision_download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd  # deferred: slow to import, and only needed here

    cls = tvd.FashionMNIST if name == "fashion-mnist" else tvd.MNIST
    # One call fetches all four resources (train and test) into root/<Cls>/raw/.
    cls(str(root), train=True, download=True)


def find_data_files(
    name: str,
    root: Optional[PathLike] = None,
    *,
    download: bool = True,
    system_dirs: Optional[Sequence[PathLike]] = None,
) -> dict[str, Path]:
    """Finds the four IDX files of a data set, downloading them as a last resort.

    Candidate roots, in order (the first that holds all four files wins):

    1. ``root`` if given, else ``$DPM_DATA`` if set;
    2. ``./data`` (relative to the current working directory);
    3. ``system_dirs`` (default: where Debian's package puts the data,
       ``/usr/share/datasets/fashion-mnist`` or ``/usr/share/datasets/mnist``);
    4. if ``download``, torchvision's download into ``./data``.

    Within a root the files may sit in ``root/``, in ``root/<name>/`` (e.g.
    ``root/fashion-mnist/``) or in torchvision's ``root/FashionMNIST/raw/``
    (``root/MNIST/raw/``); each may be gzipped (``<stem>.gz``).

    Args:
        name: ``"fashion-mnist"`` or ``"mnist"`` (also ``"FashionMNIST"``,
            ``"fashion_mnist"``, ``"MNIST"``; case-insensitive).
        root: a directory to search first, instead of ``$DPM_DATA``.
        download: whether to try torchvision's download when nothing is found.
        system_dirs: system directories to search; ``None`` means the Debian default,
            ``[]`` none.

    Returns:
        A dict with keys ``train_images``, ``train_labels``, ``test_images``,
        ``test_labels`` mapping to the files found.

    Raises:
        ValueError: if ``name`` is not a known data set.
        RuntimeError: if no candidate holds the files; the message lists the places
            searched and each way of getting the data.
    """
    name = _canonical_name(name)
    searched: list[str] = []

    candidates: list[Tuple[Path, str]] = []
    if root is not None:
        candidates.append((Path(root), "root argument"))
    elif os.environ.get("DPM_DATA"):
        candidates.append((Path(os.environ["DPM_DATA"]), "$DPM_DATA"))
    local = Path.cwd() / "data"
    candidates.append((local, "./data"))
    if system_dirs is None:
        system_dirs = [_SYSTEM_DIRS[name]]
    candidates.extend((Path(d), "system directory") for d in system_dirs)

    for directory, why in candidates:
        files = _files_under(directory, name)
        if files is not None:
            return files
        missing = "" if directory.is_dir() else ", does not exist"
        searched.append(f"{directory} ({why}{missing})")

    if download:
        try:
            _torchvision_download(name, local)
        except Exception as exc:  # noqa: BLE001 -- any failure means "fall through"
            reason = " ".join(str(exc).split())  # one line in the list below
            searched.append(
                f"torchvision download into {local} (failed: {type(exc).__name__}: {reason})"
            )
        else:
            files = _files_under(local, name)
            if files is not None:
                return files
            searched.append(f"torchvision download into {local} (files not found after it)")
    else:
        searched.append("torchvision download (switched off: download=False)")

    stems = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())
    ways = [
        f"set DPM_DATA to a folder holding the four files (export DPM_DATA=/path/to/{name})",
        f"put the four files in ./data (here: {local})",
    ]
    if name in _APT_PACKAGES:
        ways.append(
            f"apt-get install {_APT_PACKAGES[name]} "
            f"(puts them in {_SYSTEM_DIRS[name]})"
        )
    ways.append(
        "run once with internet access and download=True, so that torchvision "
        "downloads them into ./data"
    )
    raise RuntimeError(
        f"could not find the {name} data set ({stems}).\n"
        "Searched (in each folder also <folder>/"
        f"{name}/ and <folder>/{_TORCHVISION_DIRS[name]}/raw/):\n"
        + "".join(f"  - {place}\n" for place in searched)
        + "Any one of these gets the data:\n"
        + "".join(f"  - {way}\n" for way in ways)
    )
