"""Reading a checkpoint a user names without running code it carries.

A PyTorch checkpoint is a pickle, and unpickling may call any function the file names, so a
``.ckpt`` from elsewhere could run code on the machine that loads it. Every checkpoint file
Sprout reads (``--ckpt_path``, ``model.init_from``, ``model.reference``, ``growth.source``, the
tools) goes through ``load_file``: ``torch.load(weights_only=True)``, which rebuilds only
tensors, plain Python data (dict, list, str, numbers) and torch's own allow-listed types
(dtypes, ``torch.Size``, ``OrderedDict``). That is everything Sprout stores: the model and
optimizer tensors, and plain data for the run's state (random generator states are stored as
tensors and lists on purpose, ``sprout.callbacks.rng``), so Sprout adds no types of its own to
that list. A distributed checkpoint's ``.metadata`` is a plain pickle that torch's reader loads
with ``pickle.load``; ``check_distributed`` reads it first with an unpickler that accepts only
the classes torch's distributed-checkpoint metadata is made of (``DISTRIBUTED_METADATA``).
Anything else in a file is refused with one paragraph naming it; nothing in it runs.
Hugging Face folders are read from safetensors only (``sprout.hf``), which hold no code.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from sprout.compat.torch import DISTRIBUTED_CHECKPOINT_CLASSES
from sprout.errors import SproutError

# (module, name) pairs a distributed checkpoint's .metadata may name: torch's metadata classes,
# tensor shapes, dtypes and layouts, and the path of the folder it was written to.
DISTRIBUTED_MODULES = ("torch.distributed.checkpoint.metadata",)
DISTRIBUTED_METADATA = {
    *DISTRIBUTED_CHECKPOINT_CLASSES,
    ("torch", "Size"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
}


def refusal(path: str | os.PathLike, detail: str) -> SproutError:
    return SproutError(
        f"{path} holds objects a checkpoint should not ({detail}): loading it could run code that it carries, so Sprout refused it "
        "and nothing in it ran. Sprout's checkpoints hold only tensors and plain data. Use a checkpoint written by `sprout fit` or "
        "sprout import; if you made this file yourself and trust it, re-save its tensors and plain data, e.g. "
        "torch.save(torch.load(path, weights_only=False)['state_dict'], new_path)."
    )


def _unsupported(error: BaseException) -> str:
    """What torch's weights-only unpickler refused, e.g. ``builtins.exec``."""
    found = re.search(r"(?:Unsupported global: GLOBAL|Unsupported class) ([\w.]+)", str(error))
    return f"it names {found.group(1)}" if found else "it holds Python objects other than tensors and plain data"


def load_file(path: str | os.PathLike, map_location: Any = None, mmap: bool = False) -> Any:
    """``torch.load`` of a checkpoint file with ``weights_only=True``; refused with one paragraph
    when it holds anything else. Other read errors (truncated, not a checkpoint) pass through."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise refusal(path, _unsupported(error)) from None


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in DISTRIBUTED_MODULES or (module, name) in DISTRIBUTED_METADATA:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}")


def check_distributed(folder: str | os.PathLike) -> None:
    """Refuse a distributed-checkpoint folder whose ``.metadata`` or ``meta.pt`` names anything but
    torch's checkpoint metadata, before torch's reader (``pickle.load``) or Lightning opens it."""
    folder = Path(folder)
    metadata = folder / ".metadata"
    if metadata.is_file():
        try:
            with open(metadata, "rb") as f:
                _MetadataUnpickler(f).load()
        except pickle.UnpicklingError as error:
            raise refusal(metadata, str(error)) from None
        except (EOFError, ValueError, AttributeError, ImportError, IndexError, TypeError) as error:
            raise SproutError(
                f"{metadata} cannot be read ({type(error).__name__}: {error}); a shard file is truncated or missing. Use an earlier checkpoint."
            ) from None
    if (folder / "meta.pt").is_file():
        load_file(folder / "meta.pt", map_location="cpu")
