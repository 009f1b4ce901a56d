"""``medden serve``: a DICOM node that denoises the CT and MR series a PACS sends it and forwards derived series.

Use :class:`NodeConfig` and :class:`DicomNode`; :func:`parse_destination` reads ``HOST:PORT:AET``.
"""
from medden.serve.forward import Destination, parse_destination
from medden.serve.node import DicomNode, NodeConfig, derive_series

__all__ = ["DicomNode", "NodeConfig", "Destination", "parse_destination", "derive_series"]
