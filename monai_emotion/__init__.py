"""monai-emotion: naturalistic emotion decoding from whole-brain 7T fMRI with MONAI.

Importing the package has no side effects: the clean one-or-two-line error printing is
installed by the command line and by the bundle configs
(:func:`monai_emotion.runtime.install_clean_errors`), never by ``import monai_emotion``.
"""

from monai_emotion._lazy import lazy_getattr

__version__ = "0.2.0"

#: ``checkpoints``, ``handlers`` and ``writers`` moved into ``engine/`` in 0.2.0; configs
#: written for 0.1.0 still reach them here
__getattr__ = lazy_getattr(__name__, {
    **{n: n for n in ("contract", "data", "engine", "errors", "experiment", "export", "fileio", "inference", "metrics",
                      "networks", "runtime", "study", "tracking", "transforms")},
    "checkpoints": "engine.checkpoints", "handlers": "engine.handlers", "writers": "engine.writers",
})
