"""What a site pays to fine-tune a text model with LoRA: peak memory and time per step.

Each model trains in a fresh process (so its peak resident memory is its own) at batch 16 ×
128 tokens for a few steps, with the settings an agent uses: MiniLM in float32, SmolLM2
with bf16 autocast and gradient checkpointing. Prints one line per model, then a JSON line.

    python bench/llm_costs.py                # both models, 4 steps each
    python bench/llm_costs.py --only minilm --steps 8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: The issue's ceilings for a site on this machine.
CEILINGS_GB = {"minilm": 2.5, "smollm2": 5.0}


def measure(name: str, steps: int, batch: int, tokens: int) -> dict[str, object]:
    """Train ``name`` for ``steps`` steps in this process; its figures."""
    import numpy as np

    from federation.data.clinical_notes import clinical_notes_federation
    from federation.models.base import TrainConfig
    from federation.models.lora import LoraSettings, TextModelConfig
    from federation.models.pins import builtin_pin
    from federation.models.text_models import LoraTextAdapter

    silos, _ = clinical_notes_federation(num_sites=1, notes_per_site=batch * steps, test_notes_per_site=1)
    notes = silos[0]
    # Notes are short: three joined make every text fill the token limit.
    texts = [" ".join(notes.texts[i : i + 3]) * 2 for i in range(len(notes))]
    causal = name == "smollm2"
    config = TextModelConfig(
        kind="lora_causal_lm" if causal else "lora_encoder",
        task="multiclass",
        num_classes=notes.num_classes,
        class_names=("cardiology", "pulmonology", "gastroenterology", "neurology"),
        base_model=builtin_pin("SmolLM2-135M-Instruct" if causal else "all-MiniLM-L6-v2"),
        lora=LoraSettings(
            target_modules=("q_proj", "k_proj", "v_proj", "o_proj") if causal else ("query", "key", "value")
        ),
        max_tokens=tokens,
    )
    started = time.perf_counter()
    adapter = LoraTextAdapter(config, seed=0, device="cpu")
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    again = LoraTextAdapter(config, seed=0, device="cpu")
    reuse_seconds = time.perf_counter() - started
    train = TrainConfig(epochs=1, batch_size=batch, learning_rate=1e-3, max_steps=steps)
    started = time.perf_counter()
    result = again.fit(np.asarray(texts, dtype=object), notes.labels, train)
    step_seconds = (time.perf_counter() - started) / result.metrics["steps"]
    assert adapter is not None
    return {
        "model": name,
        "batch": f"{batch} x {tokens} tokens",
        "steps": int(result.metrics["steps"]),
        "seconds_per_step": round(step_seconds, 2),
        "first_load_seconds": round(load_seconds, 1),
        "reuse_seconds": round(reuse_seconds, 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "adapter_bytes": config.model_spec().nbytes,
        "ceiling_gb": CEILINGS_GB[name],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CEILINGS_GB))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.batch, args.tokens)))
        return 0
    figures = []
    for name in [args.only] if args.only else sorted(CEILINGS_GB):
        command = [
            sys.executable,
            __file__,
            "--child",
            name,
            "--steps",
            str(args.steps),
            "--batch",
            str(args.batch),
        ]
        command += ["--tokens", str(args.tokens)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        figure = json.loads(result.stdout.strip().splitlines()[-1])
        figures.append(figure)
        print(
            f"{name:8} {figure['batch']}: {figure['seconds_per_step']} s a step, "
            f"peak {figure['peak_rss_gb']} GB (ceiling {figure['ceiling_gb']} GB), "
            f"first load {figure['first_load_seconds']} s, "
            f"reused in {figure['reuse_seconds']} s"
        )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
