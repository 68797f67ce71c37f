"""Convert the Gemma 3 GGUF file into a bf16 safetensors folder that vLLM can serve.

This file runs as a script with the *engine* virtualenv's python (it imports torch and
transformers, which the project virtualenv must never import):

    <engine-venv>/bin/python _convert_gguf.py GGUF_FILE OUT_DIR

Why each step: vLLM 0.32 cannot serve GGUF, so transformers dequantizes it on load. The GGUF
tokenizer must add BOS (without it Gemma's output is garbage). The loaded model still carries the
GGUF quantizer config although its weights are already dequantized, so that config is cleared before
saving. The GGUF holds no chat template, so the Gemma 3 template is added, and a generation config
stops on both <eos> (1) and <end_of_turn> (106).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

EOS_TOKEN_IDS = [1, 106]  # <eos>, <end_of_turn>


def convert(gguf_file: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, add_bos_token=True)
    tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16)
    # Weights are dequantized on load; the leftover quantizer state would make vLLM try GGUF again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.torch_dtype = torch.bfloat16
    model.generation_config = GenerationConfig(
        bos_token_id=2, eos_token_id=EOS_TOKEN_IDS, pad_token_id=0
    )
    tmp = out_dir.with_name(out_dir.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    # Make sure the template and BOS behaviour are in the saved tokenizer config, whatever version.
    cfg_path = tmp / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["add_bos_token"] = True
    cfg["chat_template"] = GEMMA3_CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2))
    (tmp / "chat_template.jinja").write_text(GEMMA3_CHAT_TEMPLATE)
    tmp.rename(out_dir)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: _convert_gguf.py GGUF_FILE OUT_DIR")
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"converted {sys.argv[1]} -> {sys.argv[2]}")
