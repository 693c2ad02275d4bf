"""Where dataset files live and how missing ones arrive: the data directory
(``resolve_data_dir``), downloads from the official sources (``URLS``) streamed into a
temporary file and moved into place only when complete, archives unpacked safely, and the
one-line ``NotAvailableError`` saying which files to put where when that is impossible
(no network, or ``SWEEPER_OFFLINE=1``)."""

from __future__ import annotations

import os
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Sequence

from sweeper import cache_dir
from sweeper.errors import NotAvailableError

# Official sources. A module-level dict so tests can point them at a dead or local address.
URLS: dict[str, str] = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "svhn": "http://ufldl.stanford.edu/housenumbers/",  # + train_32x32.mat, test_32x32.mat
    "gsc": "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
}
# Short, so that a machine without network fails in seconds instead of hanging.
DOWNLOAD_TIMEOUT_S = 15.0


def resolve_data_dir(configured: str | os.PathLike | None) -> Path:
    """The data directory: the grid's ``data_dir``, else ``$SWEEPER_DATA_DIR``, else the
    per-user cache (``$XDG_CACHE_HOME/sweeper/data`` or ``~/.cache/sweeper/data``)."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("SWEEPER_DATA_DIR"):
        return Path(os.environ["SWEEPER_DATA_DIR"]).expanduser()
    return cache_dir() / "data"


def _offline() -> bool:
    return os.environ.get("SWEEPER_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def ensure(dataset: str, folder: Path, required: Sequence[str], expected: str,
            fetch: Callable[[], None], source: str, what: str) -> None:
    """Make sure ``folder/<each required>`` exists, downloading with ``fetch`` if not;
    otherwise raise one line naming the dataset, the files and where to put them."""
    if all((folder / name).exists() for name in required):
        return
    missing = f"dataset {dataset!r}: files not found in {folder} (expected {expected})"
    if _offline():
        raise NotAvailableError(f"{missing} and downloads are off (SWEEPER_OFFLINE=1); "
                                f"download {source} and put {what} there")
    try:
        fetch()
    # URLError, refused connections and timeouts are OSErrors; the rest is a broken archive.
    except (OSError, EOFError, tarfile.TarError, zlib.error) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise NotAvailableError(f"{missing} and download from {source} failed ({reason}; "
                                f"no network?); put {what} there") from None
    if not all((folder / name).exists() for name in required):
        raise NotAvailableError(f"{missing}, not even after downloading {source}; put {what} there")


def download(url: str, target: Path) -> None:
    """Stream ``url`` into a temporary file next to ``target``, renamed when complete."""
    import shutil
    import urllib.request

    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, \
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            shutil.copyfileobj(response, out, 1 << 20)
            size, announced = out.tell(), response.headers.get("Content-Length")
        # http.client ends a cut-off body silently: a short file must not pass as complete.
        if announced is not None and size != int(announced):
            raise OSError(f"incomplete download: {size} of {announced} bytes")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def fetch_archive(url: str, data_dir: Path, into: str = "") -> None:
    """Download a .tar.gz and unpack it into ``data_dir/into``, adding only what is missing."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # Scratch space inside the data dir, so the final renames stay on one filesystem.
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".sweeper-download-") as scratch:
        archive, unpacked = Path(scratch) / "archive.tar.gz", Path(scratch) / "unpacked"
        download(url, archive)
        with tarfile.open(archive) as tar:
            # The "data" filter refuses absolute paths and links out of the folder.
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(unpacked, **safe)
        _merge(unpacked, data_dir / into)


def _merge(source: Path, dest: Path) -> None:
    # Whole folders move with one rename, so a half-unpacked folder never appears in place.
    if not dest.exists():
        os.replace(source, dest)
    elif source.is_dir() and dest.is_dir():
        for child in source.iterdir():
            _merge(child, dest / child.name)
