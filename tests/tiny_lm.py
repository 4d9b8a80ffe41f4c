"""A tiny tokenizer-backed Llama for scoring tests: a byte-level tokenizer (every UTF-8 byte is a token, so any
language tokenizes), a chat template, and random seeded weights (head_dim 64)."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<s>", "</s>", "<pad>", "<|end|>"]


def make_tokenizer(bos: bool = False):
    """Byte-level BPE with no merges: 256 byte tokens plus specials. `bos`: the tokenizer prepends `<s>` to every
    text encoded with special tokens (as Llama-3, Mistral and Gemma tokenizers do)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for s in SPECIALS:
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                           special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   additional_special_tokens=["<|end|>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_byte_llama(path: Path, seed: int = 0, layers: int = 2, hidden: int = 128, bos: bool = False) -> Path:
    """Save a random tiny Llama with the byte tokenizer under `path`; `<|end|>` ends generation. `bos`: its
    tokenizer prepends `<s>` (the chat template writes `<s>` itself either way)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(bos)
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, num_attention_heads=hidden // 64, num_key_value_heads=1,
                      intermediate_size=2 * hidden, num_hidden_layers=layers, vocab_size=len(tok),
                      max_position_embeddings=1024, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger logits than the default init, so choices differ clearly
        model.lm_head.weight.mul_(20)
    model.generation_config = GenerationConfig(eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")],
                                               bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
