"""The miniature: a tiny synthetic world, its three Llama checkpoints and its eval sets.

It reproduces, in about a minute on two CPU cores, the situation the project is about: an instruction-tuned
model that only speaks language A ("xa"), a model continually pre-trained on a new language B ("xb"), and the
common base both were trained from. Merging them should make the instruct model answer in B.

- `world`: the fact table and the two languages (pure Python; the single source of every text).
- `tokenizer`: a word-level Hugging Face tokenizer with a chat template over the world's vocabulary.
- `train`: a plain-torch causal-LM training loop.
- `build`: `build_miniature(out_dir)` trains and writes base, instruct and lang-xb model directories.
- `evalsets`: `write_eval_sets(root)` writes the log-probability sets `mini_xb_facts` and `mini_xa_chat`;
  `write_tradeoff_sets(root)` the generation-scored trade-off sets the quickstart optimizes (instructions in A,
  fidelity to B, correct answers in B) and `mini_xb_text` (bits per byte in B).

Nothing is imported here on purpose: torch and transformers load only when a submodule is used.
"""
