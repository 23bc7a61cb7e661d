"""The book: everything that knows about profiles, run folders and chapters.

Sits on top of the library (:mod:`draftalign`, which never imports this package):
``profiles`` (every size, seed and model name of the ``ci``, ``cpu``, ``colab``, ``gpu`` book
and the ``reference`` run), ``stages`` (the one training-stage helper), ``pipeline`` (the
stages as artifacts in ``runs/<profile>/``), ``reference`` and ``reference_measure`` (the
reference drafter's run, the same pipeline at another profile), ``reference_card``,
``verdict`` (Chapter 4's prompts and answers), ``loss_study`` (the loss study at the
reference scale), ``recipe`` (one distillation recipe, measured), ``chapter5`` (Chapter 5's
drafts and the paper's numbers), ``runner`` (the chapter runner), ``student`` (the
chapters' student edition), ``notebook`` (each chapter's setup call), ``display``,
``figures`` and ``schematics`` (what the pages show).
"""
