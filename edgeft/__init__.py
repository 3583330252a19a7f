"""edgeft: from a folder of labelled photos to a fast, accurate on-device classifier.

Importing this package is cheap: TensorFlow and the converters are imported inside
the functions that need them, so the CLI's ``--help`` and the on-device runtime stay light.
"""

__version__ = "0.1.0"
