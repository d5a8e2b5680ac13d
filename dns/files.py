"""Files written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` beside `path`, then rename it onto `path`: a reader, or a crash, never sees half a file, and
    a failed write leaves neither a half file nor its temporary behind (the OSError goes on to the caller)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        open(tmp, "wb").close()  # an unwritable place fails here, with an OSError, whatever `write` would raise
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_file():
            tmp.unlink()
        raise
