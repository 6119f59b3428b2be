"""Merge a text study's global adapters into its base model and write a plain transformers model.

    python -m federation.models.export --model study-model.json --adapters version.safetensors --out DIR

``--model`` is the study's model configuration (``GET /api/v1/studies/{id}/``, its ``model``);
``--adapters`` a global model version (``GET /api/v1/models/{id}/download/``). The base model is
found as an agent finds it (built-in, or ``--folder``) and checked against the study's pin.
The result loads with ``from_pretrained``: for a causal model ``AutoModelForCausalLM``; for an
encoder ``AutoModel``, with the classification head in ``classifier.safetensors`` and the
pooling (the mean over non-padding tokens) described in ``fedhealth_head.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from federation.errors import FederationError
from federation.models.lora import SiteModelOptions, TextModelConfig, TextModelKind
from federation.wire import deserialize_weights


def export_merged(
    config: TextModelConfig, adapters: bytes, out: Path, *, folder: Path | None = None
) -> list[Path]:
    """Write the base model with ``adapters`` merged into its weights; the files written."""
    from safetensors.torch import save_file

    from federation.models.text_models import LoraTextAdapter, forget_loaded

    folders = {config.base_model.name: folder} if folder else {}
    site = SiteModelOptions(folders=folders, device="cpu")
    adapter = LoraTextAdapter(config, folders=site.folders, device=site.device, cache_dir=site.cache_dir)
    adapter.set_weights(deserialize_weights(adapters, spec=config.model_spec()))
    out.mkdir(parents=True, exist_ok=True)
    network = adapter.network
    try:
        if config.kind is TextModelKind.LORA_ENCODER:
            merged = network.encoder.merge_and_unload()  # type: ignore[union-attr, operator]
            classifier: Any = network.classifier
            head = {name: tensor.detach().contiguous() for name, tensor in classifier.state_dict().items()}
            save_file(head, str(out / "classifier.safetensors"))
            description = {
                "pooling": "mean of the last hidden states over tokens whose attention mask is 1",
                "head": "classifier.safetensors: logits = pooled @ weight.T + bias",
                "classes": list(config.class_names),
                "binary": config.num_outputs == 1,
                "max_tokens": config.max_tokens,
            }
            (out / "fedhealth_head.json").write_text(
                json.dumps(description, indent=1) + "\n", encoding="utf-8"
            )
        else:
            merged = network.merge_and_unload()  # type: ignore[operator]
            merged.config.use_cache = True
        merged.save_pretrained(out, safe_serialization=True)
        adapter.tokenizer.save_pretrained(out)
    finally:
        forget_loaded()  # merging changed the process's copy of the base model
    return sorted(out.iterdir())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m federation.models.export", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", type=Path, required=True, help="the study's model configuration (JSON)")
    parser.add_argument("--adapters", type=Path, required=True, help="a global model version (safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write")
    parser.add_argument("--folder", type=Path, help="the base model's folder (built-in models need none)")
    args = parser.parse_args(argv)
    try:
        config = TextModelConfig.from_json(json.loads(args.model.read_text(encoding="utf-8")))
        written = export_merged(config, args.adapters.read_bytes(), args.out, folder=args.folder)
    except (FederationError, OSError, ValueError) as error:
        print(f"cannot export: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
