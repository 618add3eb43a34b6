"""The study: every model of the seed poster, trained through the bundle, with leak-free splits.

Entry points: :func:`monai_emotion.study.runner.run_study` and the command
``python -m monai_emotion study --config STUDY.json`` (``tools/run_study.py`` is the same).
Modules: ``config`` and ``settings`` (the study file, typed), ``context`` (the prepared study
every stage reads), ``plan`` (models and splits), ``bundle`` (running the bundle's configs),
``features``/``baseline`` (the linear decoder), ``scoring``/``permutation`` (metrics and chance
levels), ``results``, ``history`` (TensorBoard curves), ``embedding``,
``figures``/``figures_data``, ``outputs`` and ``report``.
"""
