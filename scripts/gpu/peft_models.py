"""The model + PEFT adapters loader shared by hf_reference.py and hf_bench.py.

Pins (the project's reference environment): torch==2.15.0 transformers==5.24.0 peft==0.21.2
(see hf_reference.py for how to get them; the GPU machine's own python runs it there).
"""
import os


def adapter_names(adapters_dir):
    """The PEFT adapter directories under adapters_dir (those with an adapter_config.json), sorted."""
    return sorted(d for d in os.listdir(adapters_dir)
                  if os.path.isfile(os.path.join(adapters_dir, d, "adapter_config.json")))


def load_peft(model_dir, adapters_dir, count, device, dtype):
    """The HF model in model_dir with the first `count` adapters of adapters_dir loaded into one
    PeftModel (adapter name = directory name), on `device` in `dtype`, in eval mode.
    Returns (peft model, adapter names); raises ValueError when fewer adapters exist."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    names = adapter_names(adapters_dir)[:count]
    if len(names) < count:
        raise ValueError(f"only {len(names)} adapters under {adapters_dir}, {count} needed")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model = model.to(device=device, dtype=dtype).eval()
    pm = PeftModel.from_pretrained(model, os.path.join(adapters_dir, names[0]),
                                   adapter_name=names[0])
    for n in names[1:]:
        pm.load_adapter(os.path.join(adapters_dir, n), adapter_name=n)
    return pm.to(device=device, dtype=dtype).eval(), names
