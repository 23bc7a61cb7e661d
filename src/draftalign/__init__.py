"""draftalign: train draft models for speculative decoding, aligned to chat LLMs.

Modules, one concept each, in pipeline order:

- the target and drafts: ``models`` (loading the target, building a draft, the dtype
  policy), ``subvocab`` (a draft over the tokens its data uses), ``export`` (a standard
  folder over the target's vocabulary, GGUF, compatibility with transformers, vLLM and
  llama.cpp; ``compat``, ``gguf_export``);
- decoding: ``sampling`` (the accept/reject step), ``speculative`` (the engines),
  ``metrics`` (tau, speed-up), ``timing`` (honest wall clock), ``display`` (block
  views, the book's colours), ``schematics`` (the book's diagrams);
- data: ``chat`` (the chat template, loss masks), ``data`` (prompt sets), ``corpus``
  (pretraining text), ``prompt_pool`` (many prompts, decontaminated), ``generate`` (the
  target's answers), ``packed`` (answer sets shipped as compressed arrays);
- training: ``train`` (the loop), ``losses`` and ``cached_losses`` (KD losses, online and
  against a cached top-k), ``distill`` (KD fine-tuning);
- measuring: ``evaluate`` (tau per category, agreement), ``analysis`` (Chapter 5);
- running: ``profiles`` (every size of the ci / cpu / colab / gpu / reference book), ``pipeline``
  (the book's stages as artifacts), ``artifacts`` (manifests), ``reference`` and
  ``reference_measure`` (the reference drafter, ``make reference``), ``reference_card``,
  ``provenance``, ``book`` (the chapter runner), ``notebook`` (each chapter's one setup call), ``cli``
  (the ``draftalign`` command).
"""

__version__ = "0.1.0"

# the embedded target: the default of draftalign.models.load_target and of the book's profiles
DEFAULT_TARGET = "HuggingFaceTB/SmolLM2-135M-Instruct"
