"""The model card (README.md) of a saved adapter, filled from its run: it replaces PEFT's blank template.

    write_model_card(out, state.config, scores, command)    # common/train/finish.py, after the adapter is saved

The card says what someone who finds the directory needs to use or reproduce it: the base model (its public
id, as adapter_config.json names it), the data and its split, the LoRA configuration, the training budget,
the final validation loss and the exact command that made it. The YAML header is what the Hugging Face Hub
reads (base_model, library_name, tags).
"""
from pathlib import Path
from typing import Any

from common.model.resolve import public_model_id


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _rows(pairs: list[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {name} | {_value(value)} |" for name, value in pairs)]


def _variants(config: dict[str, Any]) -> str:
    """The LoRA variants in force, or "plain LoRA"."""
    on = [name for name, active in (("rsLoRA", config.get("rslora")), ("DoRA", config.get("dora")),
                                    (f"{config.get('init')} init", config.get("init") not in (None, "gaussian")),
                                    (f"LoRA+ ratio {config.get('lora_plus_ratio')}", config.get("lora_plus_ratio")))
          if active]
    return ", ".join(on) or "plain LoRA"


def model_card(config: dict[str, Any], scores: dict[str, Any], command: str) -> str:
    """The card's markdown. config: the run's recorded config (common/train/build.py); scores: its final scores."""
    base = public_model_id(config.get("model") or "")
    data = [("dataset", config.get("dataset_source") or config.get("dataset")),
            ("examples", f"{config.get('train_examples')} train / {config.get('val_examples')} validation"
                         + (f" (--train-limit {config['train_limit']})" if config.get("train_limit") else "")),
            ("split", f"by group (--split-seed {config.get('split_seed')}, group key "
                      f"{config.get('group_key') or 'default'}); the test split is evaluate.py's heldout benchmark"),
            ("format / template", f"{config.get('format')} / {config.get('template')}"),
            ("longest example", f"{config.get('max_seq_len')} tokens")]
    lora = [("rank / alpha / dropout", f"{config.get('rank')} / {_value(config.get('alpha'))} / "
                                       f"{_value(config.get('dropout'))}"),
            ("modules", config.get("target_modules") or config.get("modules")), ("variants", _variants(config)),
            ("base weights", f"{config.get('quant')} (compute {config.get('dtype')})")]
    training = [("optimizer steps", scores.get("steps")),
                ("final adapter", f"step {scores.get('final_step')} ({scores.get('stop_reason', 'all steps')})"),
                ("learning rate", f"{_value(config.get('lr'))}, {config.get('scheduler')}, warm-up "
                                  f"{_value(config.get('warmup'))}"),
                ("batch", f"{config.get('batch_size')} x grad-accum {config.get('grad_accum')} x "
                          f"{config.get('world_size', 1)} process(es)"),
                ("seed", config.get("seed")),
                ("final validation loss", _loss(scores.get("final_val_loss"))),
                ("best validation loss", f"{_loss(scores.get('best_val_loss'))} at step {scores.get('best_step')}")]
    return "\n".join([
        "---", f"base_model: {base}", "library_name: peft", "tags:", "- lora", "- code", "---", "",
        f"# LoRA adapter for {base}", "",
        f"A PEFT LoRA adapter for Python code generation, trained on `{base}`"
        + (f" (the toolkit's embedded copy `{config.get('model')}`)" if base != config.get("model") else "") + ".",
        "", "```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM", "",
        f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "<this directory>")',
        "```", "", "## Data", "", *_rows(data), "", "## LoRA", "", *_rows(lora), "", "## Training", "",
        *_rows(training), "", "## The command that made it", "", "```bash", command, "```", ""])


def write_model_card(adapter_dir: Path, config: dict[str, Any], scores: dict[str, Any], command: str) -> None:
    (Path(adapter_dir) / "README.md").write_text(model_card(config, scores, command))
