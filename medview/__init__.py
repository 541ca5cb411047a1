"""medview: a desktop viewer for medical images with local, explainable classifiers."""

__version__ = "0.1.0"
