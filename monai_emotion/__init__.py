"""monai-emotion: naturalistic emotion decoding from whole-brain 7T fMRI with MONAI."""

__version__ = "0.1.0"
