"""Check definitions, one module per assignment: ``aNN_<name>.py`` for assignment ``NN-<name>``
(``a03_attention.py`` holds every ``03-attention/...`` check).

Rules for a check module: importing it is cheap and imports no reference module (the lmlib
modules listed in a check's ``reference``) at top level — only inside ``expected``; ``run``
never imports them. ``lmlib.grading.core.get_check`` imports the module lazily.
"""
