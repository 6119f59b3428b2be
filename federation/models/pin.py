"""Pin a base model: ``python -m federation.models.pin FOLDER --name NAME --family encoder``.

Prints the pin (JSON) that a study's model configuration carries as ``base_model``: the
SHA-256 of every weight file and the shapes of the linear layers. Run it where the model's
folder is; ``--builtin NAME`` pins a model that ships in a package.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from federation.errors import FederationError
from federation.models.lora import BaseModelFamily
from federation.models.pins import BUILTIN_MODELS, locate_builtin

#: How the built-in models are pinned.
_BUILTIN_OPTIONS = {
    "all-MiniLM-L6-v2": (BaseModelFamily.ENCODER, None),
    "SmolLM2-135M-Instruct": (BaseModelFamily.CAUSAL_LM, "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m federation.models.pin", description=__doc__.splitlines()[0]
    )
    parser.add_argument("folder", nargs="?", type=Path, help="the model's folder")
    parser.add_argument("--name", help="the name studies use for the model")
    parser.add_argument("--family", choices=[f.value for f in BaseModelFamily], default="encoder")
    parser.add_argument("--gguf", help="the GGUF file in the folder, if the weights are GGUF")
    parser.add_argument(
        "--builtin", choices=sorted(BUILTIN_MODELS), help="pin a model that ships in a package"
    )
    parser.add_argument("--out", type=Path, help="write the pin here instead of printing it")
    args = parser.parse_args(argv)
    from federation.models.text_models import pin_base_model  # torch and transformers: only here

    try:
        if args.builtin:
            family, gguf = _BUILTIN_OPTIONS[args.builtin]
            pin = pin_base_model(args.builtin, locate_builtin(args.builtin), family, gguf_file=gguf)
        elif args.folder and args.name:
            pin = pin_base_model(args.name, args.folder, BaseModelFamily(args.family), gguf_file=args.gguf)
        else:
            parser.error("give FOLDER and --name, or --builtin NAME")
    except (FederationError, OSError, ValueError) as error:
        print(f"cannot pin the model: {error}", file=sys.stderr)
        return 2
    text = json.dumps(pin.to_json(), indent=1) + "\n"
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
